//! Application updates through the real daemon, a real Mosquitto and a loopback HTTP server: a
//! signed release is downloaded, unpacked, switched in and health-checked; an unhealthy one is
//! rolled back by itself; and an agent killed with SIGKILL in the middle of a download, after
//! unpacking while it waits for its maintenance window, or between the switch and the health
//! verdict finishes the job after a restart (resuming the download with a `Range` request,
//! reusing a complete unpack), while `current` only ever points at a complete release.

mod common;
mod common_http;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const APP: &str = "kiosk-ui";
/// The payload of the large release; the archive is a little bigger (tar headers, gzip framing).
const BIG: usize = 64 << 20;

/// A release archive: `bin/app` saying which release it is, an optional large `data.bin`, and
/// `ok` last, so a directory holding `ok` holds everything.
fn release_tar_gz(release: &str, data: Option<&[u8]>) -> Vec<u8> {
    let app = format!("app {release}");
    let mut entries = vec![Entry::File("bin/app", app.as_bytes())];
    if let Some(d) = data {
        entries.push(Entry::File("data.bin", d));
    }
    entries.push(Entry::File("ok", b""));
    // Large payloads are stored, not compressed: the point is the size on the wire.
    let level = if data.is_some() {
        flate2::Compression::none()
    } else {
        flate2::Compression::fast()
    };
    gzip(&tar(&entries), level)
}

fn big_payload() -> Vec<u8> {
    (0..BIG as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn app_doc(
    version: u64,
    target: &str,
    release: &str,
    url: &str,
    bytes: &[u8],
    health: Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "app", "version": version, "target": target,
        "issued_at": "2026-11-29T08:00:00Z",
        "name": APP, "release": release,
        "artifact": {"url": url, "sha256": sha256_hex(bytes), "size": bytes.len(), "format": "tar.gz"},
        "restart_units": ["kiosk-ui.service"],
        "health": health,
    }))
    .unwrap()
}

/// An HTTP server whose first response stops after `pause_at` body bytes until the test lets it
/// go; later requests honour `Range`. Records every request's `Range` header.
struct PausingServer {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
    paused: mpsc::Receiver<()>,
    go: Option<mpsc::Sender<()>>,
}

impl PausingServer {
    fn start(body: Arc<Vec<u8>>, pause_at: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/release.tar.gz", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (paused_tx, paused) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let seen = ranges.clone();
        std::thread::spawn(move || {
            let mut gate = Some((paused_tx, go_rx));
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (body, seen, gate) = (body.clone(), seen.clone(), gate.take());
                std::thread::spawn(move || {
                    let Some(range) = read_request(&mut s) else {
                        return;
                    };
                    seen.lock().unwrap().push(range.clone());
                    let start = range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes="))
                        .and_then(|r| r.strip_suffix('-'))
                        .and_then(|r| r.parse::<usize>().ok());
                    let head = match start {
                        Some(st) => format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {st}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len() - 1,
                            body.len(),
                            body.len() - st
                        ),
                        None => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        ),
                    };
                    let from = start.unwrap_or(0);
                    let _ = s.write_all(head.as_bytes());
                    match gate {
                        Some((paused_tx, go_rx)) => {
                            let _ = s.write_all(&body[from..pause_at]);
                            let _ = s.flush();
                            let _ = paused_tx.send(());
                            let _ = go_rx.recv();
                            let _ = s.write_all(&body[pause_at..]);
                        }
                        None => {
                            let _ = s.write_all(&body[from..]);
                        }
                    }
                    let _ = s.flush();
                });
            }
        });
        PausingServer {
            url,
            ranges,
            paused,
            go: Some(go),
        }
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

/// Reads a request head; returns its `Range` header (`None` inside when absent).
fn read_request(s: &mut impl Read) -> Option<Option<String>> {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => req.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    Some(text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("range")
            .then(|| v.trim().to_string())
    }))
}

struct Setup {
    _broker: Broker,
    platform: Platform,
    term: Terminal,
    cfg: PathBuf,
    agent: Option<Agent>,
    systemctl_log: PathBuf,
}

fn setup(id: &str) -> Setup {
    let broker = Broker::start();
    let platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    let systemctl_log = term.path("systemctl.log");
    let cfg = term.config(
        &broker.url(),
        &format!(
            "[commands]\nsystemctl = [\"sh\", \"-c\", \"echo \\\"$*\\\" >> '{}'\", \"systemctl\"]\n",
            systemctl_log.display()
        ),
    );
    let mut s = Setup {
        _broker: broker,
        platform,
        term,
        cfg,
        agent: None,
        systemctl_log,
    };
    s.start();
    s
}

impl Setup {
    fn start(&mut self) {
        self.agent = Some(Agent::start(&self.cfg));
        let id = self.term.id.clone();
        self.platform.wait_json("/state", move |v| {
            v["status"] == "online" && v["terminal_id"] == id.as_str()
        });
    }

    fn kill(&mut self) {
        let mut a = self.agent.take().unwrap();
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait();
    }

    fn me(&self) -> String {
        format!("t/{}", self.term.id)
    }

    fn publish_app(&self, doc: Vec<u8>) {
        self.platform.publish(
            &format!("{P}/t/{}/desired/app/{APP}", self.term.id),
            sign("app", &doc, &[&self.term.admin]),
            false,
        );
    }

    /// The next `reported/app/{APP}` of `version` matching `pred`.
    fn reported(&mut self, version: u64, pred: impl Fn(&Value) -> bool) -> Value {
        self.platform
            .wait_json(&format!("/reported/app/{APP}"), move |v| {
                v["version"] == version && pred(v)
            })
    }

    fn app_dir(&self) -> PathBuf {
        self.term.path("apps").join(APP)
    }

    fn current(&self) -> Option<String> {
        let t = std::fs::read_link(self.app_dir().join("current")).ok()?;
        Some(t.to_str()?.to_string())
    }

    fn health_exec(&self) -> Value {
        let ok = self.app_dir().join("current/ok");
        json!({"type": "exec", "cmd": ["test", "-f", ok.display().to_string()], "timeout_s": 5})
    }

    /// Serves and installs release 1.0 (small, healthy), so later installs have something to
    /// protect.
    fn install_base(&mut self) -> common_http::Server {
        let bytes = release_tar_gz("1.0", None);
        let server = common_http::serve(
            bytes.clone(),
            common_http::Options {
                honour_range: true,
                ..Default::default()
            },
        );
        let doc = app_doc(
            1,
            &self.me(),
            "1.0",
            &server.url("1.0.tar.gz"),
            &bytes,
            self.health_exec(),
        );
        self.publish_app(doc);
        let done = self.reported(1, |v| v["status"] != "in_progress");
        assert_eq!(done["status"], "applied", "{done:#}");
        assert_eq!(self.current().as_deref(), Some("releases/1.0"));
        server
    }
}

/// `current` resolves to a release holding everything its archive had.
fn complete(app_dir: &Path) -> Result<String, String> {
    let link = std::fs::read_link(app_dir.join("current")).map_err(|e| format!("current: {e}"))?;
    let dir = app_dir.join(&link);
    let release = link.file_name().unwrap().to_string_lossy().into_owned();
    let app = std::fs::read_to_string(dir.join("bin/app")).map_err(|e| format!("{link:?}: {e}"))?;
    if app != format!("app {release}") || !dir.join("ok").is_file() {
        return Err(format!("{link:?} is not a complete release"));
    }
    if release == "2.0" {
        let len = std::fs::metadata(dir.join("data.bin"))
            .map(|m| m.len())
            .unwrap_or(0);
        if len != BIG as u64 {
            return Err(format!("{link:?} holds {len} bytes of data.bin"));
        }
    }
    Ok(release)
}

/// Checks `current` continuously until dropped; any moment it is not a complete release is kept.
struct CurrentWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl CurrentWatch {
    fn start(app_dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut looks, mut bad) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                looks += 1;
                if let Err(e) = complete(&app_dir) {
                    bad.push(e);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (looks, bad)
        });
        CurrentWatch {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (looks, bad) = self.handle.take().unwrap().join().unwrap();
        assert!(looks > 0);
        assert!(
            bad.is_empty(),
            "current was not a complete release: {bad:?}"
        );
    }
}

#[test]
fn release_applied_then_an_unhealthy_one_rolled_back() {
    let mut s = setup("sz-ft-0501");
    let _base = s.install_base();
    // Seen in order: queued, downloading, ..., applied.
    let phases: Vec<Value> = s
        .platform
        .seen
        .iter()
        .filter(|m| m.topic.ends_with(&format!("/reported/app/{APP}")))
        .map(|m| m.json())
        .collect();
    assert_eq!(phases.first().unwrap()["status"], "in_progress");
    assert!(
        phases
            .iter()
            .any(|v| v["status"] == "in_progress" && v["details"]["phase"] == "downloading"),
        "{phases:#?}"
    );
    assert_eq!(phases.last().unwrap()["status"], "applied");
    let applied = s.platform.event("update.applied");
    assert_eq!(applied["details"]["release"], "1.0", "{applied:#}");
    assert_eq!(applied["details"]["current"], "1.0");
    assert_eq!(
        std::fs::read_to_string(s.app_dir().join("current/bin/app")).unwrap(),
        "app 1.0"
    );

    let bytes = release_tar_gz("2.0", None);
    let server = common_http::serve(bytes.clone(), common_http::Options::default());
    s.publish_app(app_doc(
        2,
        &s.me(),
        "2.0",
        &server.url("2.0.tar.gz"),
        &bytes,
        json!({"type": "exec", "cmd": ["false"], "timeout_s": 2}),
    ));
    let r = s.reported(2, |v| v["status"] != "in_progress");
    assert_eq!(r["status"], "rolled_back", "{r:#}");
    assert_eq!(r["details"]["code"], "health_failed", "{r:#}");
    assert_eq!(r["details"]["current"], "1.0");
    let ev = s.platform.event("update.rolled_back");
    assert_eq!(ev["severity"], "major");
    assert_eq!(
        (
            ev["details"]["release"].as_str(),
            ev["details"]["previous"].as_str()
        ),
        (Some("2.0"), Some("1.0")),
        "{ev:#}"
    );
    assert_eq!(s.current().as_deref(), Some("releases/1.0"));
    assert_eq!(complete(&s.app_dir()).as_deref(), Ok("1.0"));
    assert!(
        s.app_dir().join("releases/2.0/ok").is_file(),
        "the unhealthy release is kept for inspection"
    );
    // kiosk-ui restarted for 1.0, for 2.0, and again after switching back.
    let log = std::fs::read_to_string(&s.systemctl_log).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| *l == "restart kiosk-ui.service")
            .count(),
        3,
        "{log}"
    );
    let u = socket_call(&s.term.socket(), &json!({"op": "updates"}));
    assert_eq!(u["data"]["apps"][0]["current"], "1.0", "{u:#}");
    assert_eq!(
        u["data"]["last_outcomes"][0]["status"], "rolled_back",
        "{u:#}"
    );
    // In force is the release that runs, not the one last queued: 1 sent again is a rollback
    // whose report names version 1 (2 was queued, then rolled back) as in force.
    s.publish_app(app_doc(
        1,
        &s.me(),
        "1.0",
        &server.url("2.0.tar.gz"),
        &bytes,
        s.health_exec(),
    ));
    let r = s.reported(1, |v| v["status"] == "rejected");
    assert_eq!(r["details"]["reason"], "rollback", "{r:#}");
    assert_eq!(
        r["details"]["in_force"],
        json!({"target": s.me(), "version": 1}),
        "{r:#}"
    );
    assert_eq!(s.agent.take().unwrap().stop().code(), Some(0));
}

#[test]
fn killed_mid_download_resumes_with_a_range_request() {
    let mut s = setup("sz-ft-0502");
    let _base = s.install_base();
    let watch = CurrentWatch::start(s.app_dir());

    let bytes = Arc::new(release_tar_gz("2.0", Some(&big_payload())));
    let pause_at = bytes.len() / 2;
    let mut server = PausingServer::start(bytes.clone(), pause_at);
    s.publish_app(app_doc(
        2,
        &s.me(),
        "2.0",
        &server.url,
        &bytes,
        s.health_exec(),
    ));
    s.reported(2, |v| {
        v["status"] == "in_progress" && v["details"]["phase"] == "downloading"
    });
    server
        .paused
        .recv_timeout(DEADLINE)
        .expect("the agent asked for the artifact");
    let partial = s.term.path(&format!(
        "state/update/downloads/{APP}-{}.part",
        sha256_hex(&bytes)
    ));
    wait_until("half the artifact on disk", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() == pause_at as u64)
    });

    s.kill();
    drop(server.go.take());
    assert_eq!(
        complete(&s.app_dir()).as_deref(),
        Ok("1.0"),
        "killed mid-download"
    );

    s.platform.seen.clear();
    s.start();
    let r = s.reported(2, |v| v["status"] != "in_progress");
    assert_eq!(r["status"], "applied", "{r:#}");
    assert_eq!(
        server.ranges(),
        vec![None, Some(format!("bytes={pause_at}-"))],
        "the restarted agent continued where the killed one stopped"
    );
    let ev = s.platform.event("update.applied");
    assert_eq!(ev["details"]["release"], "2.0");
    assert_eq!(s.current().as_deref(), Some("releases/2.0"));
    assert_eq!(
        std::fs::read(s.app_dir().join("current/data.bin")).unwrap(),
        big_payload()
    );
    assert!(!partial.exists(), "the finished download is cleaned up");
    watch.finish();
    assert_eq!(s.agent.take().unwrap().stop().code(), Some(0));
}

#[test]
fn killed_between_switch_and_health_verdict_settles_after_restart() {
    let mut s = setup("sz-ft-0503");
    let _base = s.install_base();
    let watch = CurrentWatch::start(s.app_dir());

    // The health check reports that it started, then waits until the test says go.
    let started = s.term.path("health-started");
    let go = s.term.path("health-go");
    let ok = s.app_dir().join("current/ok");
    let script = format!(
        "echo $$ >> '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; test -f '{}'",
        started.display(),
        go.display(),
        ok.display()
    );
    let bytes = release_tar_gz("2.0", Some(&big_payload()));
    let server = common_http::serve(bytes.clone(), common_http::Options::default());
    s.publish_app(app_doc(
        2,
        &s.me(),
        "2.0",
        &server.url("2.0.tar.gz"),
        &bytes,
        json!({"type": "exec", "cmd": ["sh", "-c", script], "timeout_s": 60}),
    ));
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until("the health check to start", || lines(&started) == 1);
    assert_eq!(
        s.current().as_deref(),
        Some("releases/2.0"),
        "switched before the health check"
    );

    s.kill();
    assert_eq!(complete(&s.app_dir()).as_deref(), Ok("2.0"));
    s.platform.seen.clear();
    s.start();
    // Recovery checks the switched-in release again rather than trusting a verdict it never got.
    wait_until("the health check to run again", || lines(&started) == 2);
    assert_eq!(s.current().as_deref(), Some("releases/2.0"));
    std::fs::write(&go, "").unwrap();
    let r = s.reported(2, |v| v["status"] != "in_progress");
    assert_eq!(r["status"], "applied", "{r:#}");
    assert_eq!(r["details"]["previous"], "1.0", "{r:#}");
    s.platform.event("update.applied");
    assert_eq!(complete(&s.app_dir()).as_deref(), Ok("2.0"));
    assert!(
        !s.term
            .path("state/update/journal")
            .join(format!("{APP}.json"))
            .exists(),
        "nothing left in flight"
    );
    watch.finish();
    assert_eq!(s.agent.take().unwrap().stop().code(), Some(0));
}

#[test]
fn killed_after_unpack_while_waiting_for_the_window_finishes_when_it_opens() {
    let mut s = setup("sz-ft-0504");
    let _base = s.install_base();
    // A window that opens two hours from now, in the zone the agent reads it in (no schedule
    // is in force, so the machine's zone).
    let tz = jiff::tz::TimeZone::system();
    let local = tz.to_datetime(jiff::Timestamp::now());
    let start = local + jiff::SignedDuration::from_hours(2);
    let end = start + jiff::SignedDuration::from_hours(1);
    let hhmm = |d: jiff::civil::DateTime| format!("{:02}:{:02}", d.hour(), d.minute());
    let bytes = release_tar_gz("2.1", None);
    let server = common_http::serve(bytes.clone(), common_http::Options::default());
    let mut doc: Value = serde_json::from_slice(&app_doc(
        2,
        &s.me(),
        "2.1",
        &server.url("2.1.tar.gz"),
        &bytes,
        s.health_exec(),
    ))
    .unwrap();
    doc["window"] = json!({"start": hhmm(start), "end": hhmm(end)});
    s.publish_app(serde_json::to_vec(&doc).unwrap());
    // Downloaded and unpacked, not switched: it waits for the window.
    let waiting = s.reported(2, |v| v["status"] == "waiting_window");
    assert!(
        waiting["message"].as_str().unwrap().contains("window"),
        "{waiting:#}"
    );
    assert!(
        s.app_dir().join("releases/2.1/ok").exists(),
        "unpacked ahead of the window"
    );
    assert_eq!(s.current().as_deref(), Some("releases/1.0"));

    s.kill();
    assert_eq!(complete(&s.app_dir()).as_deref(), Ok("1.0"));
    // Restarted with its clock inside the window: it finishes without downloading again.
    s.platform.seen.clear();
    let offset = (2 * 3600 + 120).to_string();
    s.agent = Some(Agent::start_env(
        &s.cfg,
        &[("KIOSK_AGENT_CLOCK_OFFSET_S", &offset)],
    ));
    let r = s.reported(2, |v| {
        v["status"] == "applied" || v["status"] == "failed" || v["status"] == "rolled_back"
    });
    assert_eq!(r["status"], "applied", "{r:#}");
    assert_eq!(complete(&s.app_dir()).as_deref(), Ok("2.1"));
    assert_eq!(
        server.ranges().len(),
        1,
        "the unpacked release was reused, not fetched again"
    );
}
