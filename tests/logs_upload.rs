//! `logs_upload` against a real local HTTP server: the gzip stream arrives whole with the
//! sha256 the reply names, an unreachable URL and a 500 are clear errors, a terminal without a
//! journal still uploads the agent's events, and the control loop answers while an upload runs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;

use common::*;
use serde_json::{Value, json};

/// One PUT as the server saw it.
struct Put {
    headers: Vec<String>,
    body: Vec<u8>,
}

/// Accepts PUTs on loopback, decodes chunked or sized bodies, answers `status` once `release`
/// says so (immediately when it is `None`).
fn put_server(status: u16, release: Option<mpsc::Receiver<()>>) -> (String, mpsc::Receiver<Put>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/upload/abc", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    break;
                }
                headers.push(line.to_ascii_lowercase());
            }
            let mut body = Vec::new();
            if headers.iter().any(|h| h == "transfer-encoding: chunked") {
                loop {
                    let mut size = String::new();
                    r.read_line(&mut size).unwrap();
                    let n = usize::from_str_radix(size.trim(), 16).unwrap();
                    let mut chunk = vec![0u8; n + 2];
                    r.read_exact(&mut chunk).unwrap();
                    body.extend_from_slice(&chunk[..n]);
                    if n == 0 {
                        break;
                    }
                }
            } else if let Some(len) = headers
                .iter()
                .find_map(|h| h.strip_prefix("content-length: "))
            {
                body.resize(len.parse().unwrap(), 0);
                r.read_exact(&mut body).unwrap();
            }
            if let Some(rel) = &release {
                let _ = rel.recv();
            }
            let _ = tx.send(Put { headers, body });
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, rx)
}

/// A stand-in journalctl: records its arguments and prints three journal entries.
fn fake_journalctl(dir: &Path) -> String {
    let script = dir.join("journalctl");
    write(
        &script,
        &format!(
            "#!/bin/sh\necho \"$@\" > {args}\nfor i in 1 2 3; do echo \"{{\\\"MESSAGE\\\":\\\"line $i\\\",\\\"_SYSTEMD_UNIT\\\":\\\"kiosk-ui.service\\\"}}\"; done\n",
            args = dir.join("journalctl.args").display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn now_plus(secs: i64) -> String {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

struct Rig {
    _broker: Broker,
    term: Terminal,
    p: Platform,
    _agent: Agent,
}

fn rig(id: &str, journalctl: &str) -> Rig {
    let broker = Broker::start();
    let term = Terminal::new(id);
    let mut p = Platform::connect(broker.port, "kiosk/v1/t/#");
    let agent = Agent::start(&term.config(
        &broker.url(),
        &format!("[commands]\njournalctl = [\"{journalctl}\"]\n"),
    ));
    p.event("agent.started");
    Rig {
        _broker: broker,
        term,
        p,
        _agent: agent,
    }
}

impl Rig {
    fn upload(&mut self, cmd_id: &str, args: Value) {
        let target = format!("t/{}", self.term.id);
        self.p.publish(
            &format!("kiosk/v1/t/{}/cmd", self.term.id),
            sign(
                "command",
                &command(cmd_id, "logs_upload", &target, args, "2099-01-01T00:00:00Z"),
                &[&self.term.admin],
            ),
            false,
        );
    }

    fn reply(&mut self, cmd_id: &str) -> Value {
        let id = cmd_id.to_string();
        self.p
            .wait_json("/replies", move |v| v["id"] == id.as_str())
    }
}

fn gunzip(b: &[u8]) -> Vec<Value> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

#[test]
fn upload_streams_gzip_with_the_sha256_it_reports() {
    let tools = tempfile::tempdir().unwrap();
    let mut r = rig("sz-ft-0301", &fake_journalctl(tools.path()));
    let (url, puts) = put_server(200, None);
    let (since, until) = (now_plus(-3600), now_plus(3600));
    r.upload(
        "logs-1",
        json!({"url": url, "since": since, "until": until, "units": ["kiosk-ui.service"], "priority": "warning"}),
    );
    let reply = r.reply("logs-1");
    assert_eq!(reply["status"], "ok", "{reply}");
    let put = puts.recv_timeout(DEADLINE).unwrap();
    assert!(
        put.headers
            .iter()
            .any(|h| h == "transfer-encoding: chunked"),
        "streamed, not sized up front: {:?}",
        put.headers
    );
    assert!(
        put.headers[0].starts_with("put /upload/abc "),
        "{:?}",
        put.headers
    );
    let res = &reply["result"];
    assert_eq!(res["bytes"], put.body.len());
    assert_eq!(res["sha256"], sha256_hex(&put.body));
    let lines = gunzip(&put.body);
    assert_eq!(res["entries"], lines.len());
    assert_eq!(res["journal_entries"], 3);
    assert_eq!(lines[0]["MESSAGE"], "line 1");
    assert!(
        lines[3..]
            .iter()
            .any(|l| l["kiosk_agent_event"]["code"] == "agent.started"),
        "{lines:?}"
    );
    let args = std::fs::read_to_string(tools.path().join("journalctl.args")).unwrap();
    let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_second();
    assert_eq!(
        args.trim(),
        format!(
            "-o json --no-pager --since @{} --until @{} -u kiosk-ui.service -p warning",
            at(&since),
            at(&until)
        )
    );
}

#[test]
fn no_journal_uploads_the_agents_events_and_says_so() {
    let mut r = rig("sz-ft-0302", "/nonexistent/journalctl");
    let (url, puts) = put_server(201, None);
    r.upload(
        "logs-2",
        json!({"url": url, "since": now_plus(-3600), "until": now_plus(3600)}),
    );
    let reply = r.reply("logs-2");
    assert_eq!(reply["status"], "ok", "{reply}");
    assert!(
        reply["result"]["journal"]
            .as_str()
            .unwrap()
            .starts_with("missing:"),
        "{reply}"
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("the agent's events only")
    );
    let put = puts.recv_timeout(DEADLINE).unwrap();
    let lines = gunzip(&put.body);
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["kiosk_agent_event"].is_object()));
    assert_eq!(reply["result"]["entries"], lines.len());
    assert_eq!(reply["result"]["sha256"], sha256_hex(&put.body));
}

#[test]
fn unreachable_url_and_server_error_are_error_replies() {
    let tools = tempfile::tempdir().unwrap();
    let mut r = rig("sz-ft-0303", &fake_journalctl(tools.path()));
    let window = |url: String| json!({"url": url, "since": now_plus(-60), "until": now_plus(60)});
    r.upload(
        "logs-3",
        window(format!("http://127.0.0.1:{}/x", free_port())),
    );
    let reply = r.reply("logs-3");
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["code"], "upload_failed", "{reply}");

    let (url, puts) = put_server(500, None);
    r.upload("logs-4", window(url));
    let reply = r.reply("logs-4");
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["code"], "upload_status", "{reply}");
    assert_eq!(reply["result"]["status"], 500);
    assert!(reply["message"].as_str().unwrap().contains("500"));
    puts.recv_timeout(DEADLINE).unwrap();

    r.upload(
        "logs-5",
        json!({"url": "ftp://x/y", "since": now_plus(-60), "until": now_plus(60)}),
    );
    let reply = r.reply("logs-5");
    assert_eq!(
        (reply["status"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_args"))
    );
}

#[test]
fn commands_are_answered_while_an_upload_runs() {
    let tools = tempfile::tempdir().unwrap();
    let mut r = rig("sz-ft-0304", &fake_journalctl(tools.path()));
    let (release_tx, release_rx) = mpsc::channel();
    let (url, puts) = put_server(200, Some(release_rx));
    r.upload(
        "logs-6",
        json!({"url": url, "since": now_plus(-60), "until": now_plus(60)}),
    );
    let target = format!("t/{}", r.term.id);
    r.p.publish(
        "kiosk/v1/t/sz-ft-0304/cmd",
        sign(
            "command",
            &command("ping-1", "ping", &target, json!({}), "2099-01-01T00:00:00Z"),
            &[&r.term.admin],
        ),
        false,
    );
    let pong = r.reply("ping-1");
    assert_eq!(pong["status"], "ok");
    assert!(
        !r.p.seen.iter().any(|m| m.json()["id"] == "logs-6"),
        "the upload is still held by the server"
    );
    release_tx.send(()).unwrap();
    assert_eq!(r.reply("logs-6")["status"], "ok");
    puts.recv_timeout(DEADLINE).unwrap();
}
