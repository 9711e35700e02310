//! Hostile input that is signed or local and therefore gets past the verifier: a download that
//! trickles or stalls, special files planted at checked paths, a flood of socket connections,
//! broken config files, array-shaped JSON and over-long free text. Real daemon, real Mosquitto,
//! real sockets and files; every case asserts the specific refusal and that everything else
//! keeps being answered.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const FUTURE: &str = "2099-01-01T00:00:00Z";

fn sha(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A release archive whose entries all claim mode 0777 (a directory and an executable) or 0666.
fn wide_open_tar_gz(release: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o777);
    dir.set_cksum();
    b.append_data(&mut dir, "bin/", &[][..]).unwrap();
    for (path, mode, body) in [
        ("bin/app", 0o777, format!("app {release}")),
        ("index.html", 0o666, "<html></html>".to_string()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, path, body.as_bytes()).unwrap();
    }
    let raw = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    e.finish().unwrap()
}

fn app_doc(
    name: &str,
    version: u64,
    target: &str,
    release: &str,
    url: &str,
    bytes: &[u8],
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "app", "version": version, "target": target,
        "issued_at": "2026-11-29T08:00:00Z",
        "name": name, "release": release,
        "artifact": {"url": url, "sha256": sha(bytes), "size": bytes.len(), "format": "tar.gz"},
        "restart_units": [],
    }))
    .unwrap()
}

/// An HTTP server that announces `size` bytes and then sends one byte every `every`
/// (or nothing at all when `every` is `None`). Stops when the flag is set.
struct Trickle {
    url: String,
    stop: Arc<AtomicBool>,
}

impl Trickle {
    fn start(size: usize, every: Option<Duration>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/app.tar.gz", l.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n"
                    );
                    while !st.load(Ordering::Relaxed) {
                        match every {
                            Some(d) => {
                                std::thread::sleep(d);
                                if s.write_all(b"x").is_err() {
                                    return;
                                }
                            }
                            None => std::thread::sleep(Duration::from_millis(200)),
                        }
                    }
                });
            }
        });
        Trickle { url, stop }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Site {
    _broker: Broker,
    platform: Platform,
    term: Terminal,
    agent: Agent,
}

impl Site {
    fn start(id: &str, extra: &str) -> Self {
        let broker = Broker::start();
        let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
        let term = Terminal::new(id);
        let cfg = term.config(
            &broker.url(),
            &format!("[commands]\nsystemctl = [\"true\"]\n\n{extra}"),
        );
        let agent = Agent::start(&cfg);
        let me = id.to_string();
        platform.wait_json("/state", move |v| {
            v["status"] == "online" && v["terminal_id"] == me.as_str()
        });
        Site {
            _broker: broker,
            platform,
            term,
            agent,
        }
    }

    fn me(&self) -> String {
        format!("t/{}", self.term.id)
    }

    fn publish(&self, suffix: &str, role: &str, doc: &[u8]) {
        self.platform.publish(
            &format!("{P}/t/{}/{suffix}", self.term.id),
            sign(role, doc, &[&self.term.admin]),
            false,
        );
    }

    fn command(&self, id: &str, name: &str, args: Value) {
        let doc = command(id, name, &self.me(), args, FUTURE);
        self.publish("cmd", "command", &doc);
    }

    fn reply(&mut self, id: &str) -> Value {
        let id = id.to_string();
        self.platform
            .wait_json("/replies", move |v| v["id"] == id.as_str())
    }

    fn reported_app(&mut self, name: &str, version: u64, status: &str) -> Value {
        let status = status.to_string();
        self.platform
            .wait_json(&format!("/reported/app/{name}"), move |v| {
                v["version"] == version && v["status"] == status.as_str()
            })
    }

    fn seen_index(&self, pred: impl Fn(&Msg) -> bool) -> Option<usize> {
        self.platform.seen.iter().position(pred)
    }
}

/// Short download limits so a stall is decided in seconds.
const SHORT: &str = "[updates]\ndownload_idle_timeout_s = 3\ndownload_min_rate_bps = 100\ndownload_retries = 1\ndownload_retry_backoff_s = 1\n";

#[test]
fn trickling_download_fails_in_bounded_time_and_another_app_updates_meanwhile() {
    let mut s = Site::start("sz-ft-1701", SHORT);
    let trickle = Trickle::start(50_000, Some(Duration::from_secs(2)));
    let me = s.me();
    s.publish(
        "desired/app/stalled",
        "app",
        &app_doc("stalled", 1, &me, "1.0", &trickle.url, &[7u8; 50_000]),
    );
    s.reported_app("stalled", 1, "in_progress");

    // A second application, published while the first one trickles, goes through.
    let bytes = wide_open_tar_gz("2.0");
    let file = s.term.path("artifact.tar.gz");
    std::fs::write(&file, &bytes).unwrap();
    let url = format!("file://{}", file.display());
    s.publish(
        "desired/app/kiosk-ui",
        "app",
        &app_doc("kiosk-ui", 1, &me, "2.0", &url, &bytes),
    );
    s.reported_app("kiosk-ui", 1, "applied");

    let failed = s.reported_app("stalled", 1, "failed");
    assert_eq!(failed["details"]["code"], "download_timeout", "{failed:#}");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.contains("below the minimum of 100 B/s") && msg.contains("gave up after 2 attempts"),
        "{msg}"
    );
    let applied = s
        .seen_index(|m| {
            m.topic.ends_with("/reported/app/kiosk-ui") && m.json()["status"] == "applied"
        })
        .unwrap();
    let gave_up = s
        .seen_index(|m| {
            m.topic.ends_with("/reported/app/stalled") && m.json()["status"] == "failed"
        })
        .unwrap();
    assert!(
        applied < gave_up,
        "the second app waited for the stalled one"
    );

    // Installed files keep their execute bits but lose group and world write.
    let rel = s.term.path("apps/kiosk-ui/releases/2.0");
    for (p, want) in [
        ("bin", 0o755),
        ("bin/app", 0o755),
        ("index.html", 0o644),
        ("", 0o755),
    ] {
        let mode = std::fs::metadata(rel.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, want, "{p}: {mode:o}");
    }
}

#[test]
fn newer_document_replaces_a_stalled_download() {
    let extra = "[updates]\ndownload_idle_timeout_s = 600\ndownload_min_rate_bps = 0\n";
    let mut s = Site::start("sz-ft-1702", extra);
    let trickle = Trickle::start(50_000, Some(Duration::from_secs(1)));
    let me = s.me();
    s.publish(
        "desired/app/kiosk-ui",
        "app",
        &app_doc("kiosk-ui", 1, &me, "1.0", &trickle.url, &[7u8; 50_000]),
    );
    s.reported_app("kiosk-ui", 1, "in_progress");
    let bytes = wide_open_tar_gz("2.0");
    let file = s.term.path("artifact.tar.gz");
    std::fs::write(&file, &bytes).unwrap();
    s.publish(
        "desired/app/kiosk-ui",
        "app",
        &app_doc(
            "kiosk-ui",
            2,
            &me,
            "2.0",
            &format!("file://{}", file.display()),
            &bytes,
        ),
    );
    let r = s.reported_app("kiosk-ui", 2, "applied");
    assert_eq!(r["details"]["current"], "2.0", "{r:#}");
    assert_eq!(
        std::fs::read_link(s.term.path("apps/kiosk-ui/current")).unwrap(),
        PathBuf::from("releases/2.0")
    );
    // The superseded install reports nothing final of its own.
    s.platform.drain();
    assert!(
        s.seen_index(|m| m.topic.ends_with("/reported/app/kiosk-ui")
            && m.json()["version"] == 1
            && m.json()["status"] == "failed")
            .is_none(),
        "{:#?}",
        s.platform.summary()
    );
}

#[test]
fn sigterm_during_a_silent_download_exits_cleanly_and_keeps_the_journal() {
    // Default timeouts: the read would block for a minute.
    let mut s = Site::start("sz-ft-1703", "");
    let silent = Trickle::start(50_000, None);
    let me = s.me();
    s.publish(
        "desired/app/kiosk-ui",
        "app",
        &app_doc("kiosk-ui", 1, &me, "1.0", &silent.url, &[7u8; 50_000]),
    );
    s.reported_app("kiosk-ui", 1, "in_progress");
    s.agent.signal(nix::sys::signal::Signal::SIGTERM);
    // Agent::wait allows 30 s; the unit's TimeoutStopSec is 20 s and the read would take 60.
    let status = s.agent.wait();
    assert!(status.success(), "{status:?}\n{}", s.agent.log());
    assert!(
        s.term.path("state/update/journal/kiosk-ui.json").is_file(),
        "the journal that resumes the install is kept"
    );
}

fn read_line(c: &mut BufReader<UnixStream>) -> Value {
    let mut l = String::new();
    c.read_line(&mut l).unwrap();
    serde_json::from_str(&l).unwrap_or(Value::Null)
}

fn raise_nofile(soft: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard).unwrap();
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn connection_flood_is_capped_and_the_agent_keeps_answering() {
    let mut s = Site::start(
        "sz-ft-1704",
        "[local]\nmax_connections = 100\nidle_timeout_s = 2\n",
    );
    let sock = s.term.socket();
    wait_socket(&sock);
    raise_nofile(8192);
    let pid = s.agent.child.id();
    let before = rss_kb(pid);

    // Long-lived by design: a subscriber and an inhibitor outlive the idle timeout.
    let mut sub = BufReader::new(UnixStream::connect(&sock).unwrap());
    sub.get_mut()
        .write_all(b"{\"op\":\"subscribe\"}\n")
        .unwrap();
    assert_eq!(read_line(&mut sub)["ok"], true);
    let mut inh = BufReader::new(UnixStream::connect(&sock).unwrap());
    inh.get_mut()
        .write_all(b"{\"op\":\"inhibit\",\"who\":\"ui\",\"why\":\"citizen mid-transaction\"}\n")
        .unwrap();
    assert_eq!(read_line(&mut inh)["ok"], true);
    let mut idle = BufReader::new(UnixStream::connect(&sock).unwrap());

    let mut flood = Vec::new();
    for _ in 0..3000 {
        flood.push(UnixStream::connect(&sock).unwrap());
    }
    // The last ones are over the cap: told why and closed.
    let mut last = BufReader::new(flood.pop().unwrap());
    let busy = read_line(&mut last);
    assert_eq!(busy["error"]["code"], "busy", "{busy}");
    assert!(
        busy["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100")
    );

    // The platform's path is not the socket's: a ping is answered during the flood.
    s.command("ping-during-flood", "ping", json!({}));
    assert_eq!(s.reply("ping-during-flood")["status"], "ok");

    // The idle connection is closed with a reason; the long-lived ones are not.
    let gone = read_line(&mut idle);
    assert_eq!(gone["error"]["code"], "idle_timeout", "{gone}");
    drop(flood);
    drop(last);
    for c in [&mut sub, &mut inh] {
        c.get_mut().write_all(b"{\"op\":\"status\"}\n").unwrap();
        loop {
            let v = read_line(c);
            if v.get("ok").is_some() {
                assert_eq!(v["ok"], true, "{v}");
                break;
            }
        }
    }
    // A fresh client is served once the flood is gone (the idle ones time out).
    let st = loop {
        let mut c = BufReader::new(UnixStream::connect(&sock).unwrap());
        c.get_mut().write_all(b"{\"op\":\"status\"}\n").unwrap();
        let v = read_line(&mut c);
        if v["ok"] == true {
            break v;
        }
        assert_eq!(v["error"]["code"], "busy", "{v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["data"]["terminal_id"], "sz-ft-1704");
    let log = s.agent.log();
    let refusals = log.matches("too many open connections").count();
    assert!(
        (1..=3).contains(&refusals),
        "{refusals} refusal lines for one flood"
    );
    assert!(
        log.lines().count() < 200,
        "log grew to {} lines",
        log.lines().count()
    );
    eprintln!(
        "RSS: {before} kB before the flood, {} kB after (agent pid {pid})",
        rss_kb(pid)
    );
}

#[test]
fn special_files_at_checked_paths_are_errors_and_commands_keep_flowing() {
    let id = "sz-ft-1705";
    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    let root = term.path("root");
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    nix::unistd::mkfifo(
        &etc.join("fifo.conf"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(etc.join("sock.conf")).unwrap();
    nix::sys::stat::mknod(
        &etc.join("chr.conf"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/null", etc.join("null.conf")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", etc.join("escape.conf")).unwrap();
    let agent = Agent::start(&term.config(&broker.url(), "[policy]\ncheck_timeout_s = 5\n"));
    platform.wait_json("/state", |v| v["status"] == "online");
    let me = format!("t/{id}");
    let rule = |rid: &str, check: Value| json!({"id": rid, "title": rid, "severity": "high", "clause": "8.1", "check": check});
    let fc =
        |p: &str| json!({"type": "file_contains", "path": p, "pattern": "x", "expect": "absent"});
    let policy = serde_json::to_vec(&json!({
        "kind": "policy", "version": 1, "target": me, "issued_at": "2026-11-29T08:00:00Z",
        "rules": [
            rule("fifo", fc("/etc/fifo.conf")),
            rule("sock", json!({"type": "json_value", "path": "/etc/sock.conf", "pointer": "/a", "value": 1})),
            rule("chr", json!({"type": "file_hash", "path": "/etc/chr.conf", "sha256": "0".repeat(64)})),
            rule("null", fc("/etc/null.conf")),
            rule("escape", fc("/etc/escape.conf")),
        ],
    }))
    .unwrap();
    platform.publish(
        &format!("{P}/t/{id}/desired/policy"),
        sign("policy", &policy, &[&term.admin]),
        false,
    );
    let report = platform.wait_json("/compliance", |v| v["version"] == 1);
    let msg = |rid: &str| {
        let r = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == rid)
            .unwrap_or_else(|| panic!("{rid}: {report:#}"))
            .clone();
        assert_eq!(r["status"], "error", "{r:#}");
        r["message"].as_str().unwrap().to_string()
    };
    assert!(msg("fifo").contains("is a FIFO, not a regular file"));
    assert!(msg("sock").contains("is a socket, not a regular file"));
    assert!(msg("chr").contains("is a character device, not a regular file"));
    assert!(msg("null").contains("outside the host root"));
    assert!(msg("escape").contains("outside the host root"));

    // A scan on command is answered, and so is everything behind it.
    for (cid, name) in [("scan-1", "compliance_scan"), ("ping-1", "ping")] {
        let doc = command(cid, name, &me, json!({}), FUTURE);
        platform.publish(
            &format!("{P}/t/{id}/cmd"),
            sign("command", &doc, &[&term.admin]),
            false,
        );
    }
    let ping = platform.wait_json("/replies", |v| v["id"] == "ping-1");
    assert_eq!(ping["status"], "ok");
    let scan = platform.wait_json("/replies", |v| v["id"] == "scan-1");
    assert_eq!(scan["status"], "ok", "{scan:#}");
    drop(agent);
}

#[test]
fn transient_catalog_write_failure_is_retried() {
    let mut s = Site::start("sz-ft-1706", "");
    // The catalog directory is a file: writing the catalog fails with an I/O error.
    let blocker = s.term.path("state/catalog");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let me = s.me();
    let doc = serde_json::to_vec(&json!({
        "kind": "catalog", "version": 1, "target": me, "issued_at": "2026-11-29T08:00:00Z",
        "items": [{"id": "id-card", "name": "身份证", "department": "公安", "status": "active", "notice": ""}],
        "announcements": [],
    }))
    .unwrap();
    s.publish("desired/catalog", "catalog", &doc);
    let failed = s
        .platform
        .wait_json("/reported/catalog", |v| v["status"] == "failed");
    assert_eq!(failed["details"]["code"], "transient", "{failed:#}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("trying again in 5 s")
    );
    std::fs::remove_file(&blocker).unwrap();
    let applied = s
        .platform
        .wait_json("/reported/catalog", |v| v["status"] == "applied");
    assert_eq!(applied["version"], 1);
    assert!(s.term.path("state/catalog/current.json").is_file());
}

#[test]
fn array_shaped_envelope_and_over_long_free_text_are_refused() {
    let mut s = Site::start("sz-ft-1707", "");
    let me = s.me();
    // The envelope's fields in serde's sequence form.
    let doc = command("arr-1", "ping", &me, json!({}), FUTURE);
    let env: Value = serde_json::from_slice(&sign("command", &doc, &[&s.term.admin])).unwrap();
    let arr = json!([env["payloadType"], env["payload"], env["signatures"]]);
    s.platform.publish(
        &format!("{P}/t/{}/cmd", s.term.id),
        serde_json::to_vec(&arr).unwrap(),
        false,
    );
    let ev = s.platform.event("security.rejected");
    assert_eq!(ev["details"]["reason"], "bad_envelope", "{ev:#}");
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("an envelope is a JSON object")
    );

    // A signed document whose payload is an array.
    let arr_doc = serde_json::to_vec(&json!(["catalog", 1, me])).unwrap();
    s.publish("desired/catalog", "catalog", &arr_doc);
    let ev = s.platform.wait_json("/events", |v| {
        v["code"] == "security.rejected" && v["details"]["reason"] == "invalid_document"
    });
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("not a JSON object"),
        "{ev:#}"
    );

    // An over-long reason, from the platform and from the socket.
    s.command(
        "long-1",
        "maintenance",
        json!({"on": true, "reason": "x".repeat(1000)}),
    );
    let r = s.reply("long-1");
    assert_eq!(r["status"], "error");
    assert_eq!(r["code"], "invalid");
    assert_eq!(
        r["message"],
        "args.reason is 1000 characters; at most 256 are accepted"
    );
    let sock = s.term.socket();
    let r = socket_call(
        &sock,
        &json!({"op": "maintenance", "on": true, "reason": "y".repeat(300)}),
    );
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    assert_eq!(
        r["error"]["message"],
        "reason is 300 characters; at most 256 are accepted"
    );
    let r = socket_call(
        &sock,
        &json!({"op": "inhibit", "who": "ui", "why": "z".repeat(257)}),
    );
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("why is 257 characters")
    );
    // Nothing was stored.
    let st = socket_call(&sock, &json!({"op": "status"}));
    assert_eq!(st["data"]["maintenance"]["on"], false, "{st:#}");
}

fn check_config(dir: &Path, mqtt: &str) -> (bool, String) {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[terminal]\nid = \"sz-ft-1708\"\n\n[mqtt]\n{mqtt}\n\n[paths]\nstate_dir = \"/var/lib/x\"\nsocket = \"/run/x.sock\"\ntrust_file = \"/etc/x.json\"\napps_dir = \"/opt/x\"\nroot = \"/\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["check-config", "--config-only", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_each_bad_file_and_topic_prefix() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    // A real CA certificate and key, made here.
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(p("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(p("key.pem"), ca.signing_key.serialize_pem()).unwrap();
    std::fs::write(p("garbage.pem"), b"\x00\x01 not pem at all").unwrap();
    std::fs::create_dir(p("dir.pem")).unwrap();
    nix::unistd::mkfifo(
        &p("fifo.pem"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::write(p("empty.txt"), b"\n").unwrap();
    let tls = |ca: &str, cert: &str, key: &str| {
        format!(
            "url = \"mqtts://broker.example:8883\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            p(ca).display(),
            p(cert).display(),
            p(key).display()
        )
    };
    let (ok, err) = check_config(d.path(), &tls("ca.pem", "ca.pem", "key.pem"));
    assert!(ok, "a good TLS config passes: {err}");
    for (mqtt, key, why) in [
        (
            tls("missing.pem", "ca.pem", "key.pem"),
            "mqtt.ca_file",
            "No such file",
        ),
        (
            tls("garbage.pem", "ca.pem", "key.pem"),
            "mqtt.ca_file",
            "no PEM certificate",
        ),
        (
            tls("ca.pem", "dir.pem", "key.pem"),
            "mqtt.cert_file",
            "is a directory",
        ),
        (
            tls("ca.pem", "ca.pem", "fifo.pem"),
            "mqtt.key_file",
            "is not a regular file",
        ),
        (
            tls("ca.pem", "ca.pem", "ca.pem"),
            "mqtt.key_file",
            "not a PEM private key",
        ),
        (
            tls("ca.pem", "ca.pem", "garbage.pem"),
            "mqtt.key_file",
            "not a PEM private key",
        ),
        (
            format!(
                "url = \"mqtt://127.0.0.1:1883\"\nusername = \"k\"\npassword_file = \"{}\"",
                p("nope").display()
            ),
            "mqtt.password_file",
            "No such file",
        ),
        (
            format!(
                "url = \"mqtt://127.0.0.1:1883\"\nusername = \"k\"\npassword_file = \"{}\"",
                p("empty.txt").display()
            ),
            "mqtt.password_file",
            "is empty",
        ),
        (
            "url = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"kiosk/+/v1\"".into(),
            "mqtt.topic_prefix",
            "wildcards",
        ),
        (
            "url = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"kiosk/#\"".into(),
            "mqtt.topic_prefix",
            "wildcards",
        ),
        (
            "url = \"mqtt://127.0.0.1:1883\"\ntopic_prefix = \"kiosk\\u0000v1\"".into(),
            "mqtt.topic_prefix",
            "NUL",
        ),
    ] {
        let (ok, err) = check_config(d.path(), &mqtt);
        assert!(!ok, "{mqtt} passed");
        assert!(
            err.contains(&format!("{key}: ")) && err.contains(why),
            "{mqtt}: {err}"
        );
    }
}
