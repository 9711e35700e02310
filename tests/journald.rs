//! Under systemd the agent logs to the journal's native socket with its structured fields as
//! journal fields (`KIOSK_CODE=...`), and the dependencies' `log` records reach the journal too.
//! A real systemd-journald is used: the one of the machine, or one started here when none runs.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SOCKET: &str = "/run/systemd/journal/socket";

/// Kills the journald this test started (if it started one) when dropped; holds the lock
/// that keeps the tests of this file from starting two.
struct Journald(
    Option<Child>,
    #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
);

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A socket file can outlive its journald: only a connect tells whether one listens.
fn listening() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(SOCKET))
        .is_ok()
}

fn journald() -> Journald {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if listening() {
        return Journald(None, guard);
    }
    let bin = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-journald is installed (scripts/test installs systemd)");
    let child = Command::new(bin).spawn().expect("start systemd-journald");
    let start = Instant::now();
    while !listening() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "journald socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Journald(Some(child), guard)
}

/// Journal entries matching `matches`, read with journalctl until `pred` holds for one.
fn wait_entry(matches: &[String], pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let out = Command::new("journalctl")
            .args(["--no-pager", "-o", "json", "--all"])
            .args(matches)
            .output()
            .expect("journalctl runs");
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| pred(v));
        if let Some(v) = found {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no journal entry for {matches:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_fields_are_journal_fields_and_set_log_level_works_under_journald() {
    let _j = journald();
    let broker = Broker::start();
    let id = "sz-ft-0801";
    let mut platform = Platform::connect(broker.port, &format!("kiosk/v1/t/{id}/#"));
    let term = Terminal::new(id);
    let cfg = term.config(&broker.url(), "");
    let agent = Agent::start_env(&cfg, &[("JOURNAL_STREAM", "8:12345")]);
    platform.wait_json("/state", |v| v["status"] == "online");
    let pid = agent.child.id().to_string();

    // A refusal: its event code is a field of its own, not message text.
    platform.publish(
        &format!("kiosk/v1/t/{id}/cmd"),
        b"{not an envelope".to_vec(),
        false,
    );
    platform.event("security.rejected");
    let e = wait_entry(
        &[
            format!("_PID={pid}"),
            "SYSLOG_IDENTIFIER=kiosk-agent".into(),
            "KIOSK_CODE=security.rejected".into(),
        ],
        |_| true,
    );
    assert_eq!(e["PRIORITY"], "4", "major events are warnings: {e}");
    assert!(
        e["KIOSK_SEQ"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{e}"
    );
    assert!(
        !e["MESSAGE"].as_str().unwrap_or("").contains("code="),
        "fields are not folded into the message: {e}"
    );
    // The refusal's reason is a field too, from the control layer's own log line.
    wait_entry(
        &[format!("_PID={pid}"), "KIOSK_REASON=bad_envelope".into()],
        |_| true,
    );

    // The filter is reloadable under journald as well.
    let sign_cmd = |cid: &str, level: &str| {
        sign(
            "command",
            &command(
                cid,
                "set_log_level",
                &format!("t/{id}"),
                serde_json::json!({"level": level}),
                "2099-01-01T00:00:00Z",
            ),
            &[&term.admin],
        )
    };
    platform.publish(
        &format!("kiosk/v1/t/{id}/cmd"),
        sign_cmd("lvl-1", "debug"),
        false,
    );
    let r = platform.wait_json("/replies", |v| v["id"] == "lvl-1");
    assert_eq!(r["status"], "ok", "{r}");
    platform.publish(
        &format!("kiosk/v1/t/{id}/cmd"),
        sign_cmd("lvl-2", "loud"),
        false,
    );
    let r = platform.wait_json("/replies", |v| v["id"] == "lvl-2");
    assert_eq!(
        (r["status"].as_str(), r["code"].as_str()),
        (Some("error"), Some("bad_args")),
        "{r}"
    );
    assert!(
        agent.log().is_empty(),
        "nothing on stderr under journald: {}",
        agent.log()
    );
    drop(agent);
}

#[test]
fn dependency_log_records_reach_the_journal() {
    let _j = journald();
    // SAFETY: set before any thread of this test binary reads the environment for logging.
    unsafe { std::env::set_var("JOURNAL_STREAM", "8:12345") };
    kiosk_agent::logging::init(kiosk_agent::config::LogLevel::Info);
    let marker = format!("bridged record {}", std::process::id());
    log::warn!(target: "ureq::unit", "{marker}");
    tracing::info!(code = "test.marker", "{marker} via tracing");
    let pid = std::process::id().to_string();
    let e = wait_entry(&[format!("_PID={pid}")], |v| {
        v["MESSAGE"] == marker.as_str()
    });
    assert_eq!(e["PRIORITY"], "4");
    assert_eq!(e["SYSLOG_IDENTIFIER"], "kiosk-agent");
    let t = wait_entry(
        &[format!("_PID={pid}"), "KIOSK_CODE=test.marker".into()],
        |_| true,
    );
    assert_eq!(t["PRIORITY"], "6");
}
