//! The agent core against a real Mosquitto: birth and health, probe events, the durable
//! outbox across broker outages and restarts, clean and unclean stops, the local socket.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const PROBE: &str = r#"
[health]
interval_s = 1

[[probes]]
id = "camera"
kind = "path"
path = "/dev/video0"
severity = "minor"
"#;

#[test]
fn online_health_and_probe_transitions() {
    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, "kiosk/v1/t/#");
    let term = Terminal::new("sz-ft-0001");
    let agent = Agent::start(&term.config(&broker.url(), PROBE));

    let state = platform.wait_json("/state", |v| v["status"] == "online");
    assert_eq!(state["terminal_id"], "sz-ft-0001");
    assert_eq!(state["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(state["groups"], json!(["futian"]));

    let h1 = platform.wait_json("/health", |_| true);
    let s1 = h1["seq"].as_u64().unwrap();
    let h2 = platform.wait_json("/health", move |v| v["seq"].as_u64() != Some(s1));
    assert_eq!(h2["seq"].as_u64().unwrap(), s1 + 1, "consecutive seq");
    assert_eq!(h2["schema"], "kiosk.health/1");
    assert!(h2["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(h2["memory"]["used_bytes"].as_u64().unwrap() > 0);
    let disks = h2["disks"].as_array().unwrap();
    assert!(
        !disks.is_empty() && disks.iter().all(|d| d["total_bytes"].as_u64().unwrap() > 0),
        "{disks:?}"
    );
    assert!(h2["agent"]["rss_bytes"].as_u64().unwrap() > 0);
    let probe = &h2["probes"][0];
    assert_eq!(
        (probe["id"].as_str(), probe["ok"].as_bool()),
        (Some("camera"), Some(false))
    );

    let failed = platform.event("probe.failed");
    assert_eq!(failed["severity"], "minor", "configured severity");
    assert_eq!(failed["details"]["probe"], "camera");

    write(&term.path("root/dev/video0"), "");
    let recovered = platform.event("probe.recovered");
    assert!(recovered["seq"].as_u64() > failed["seq"].as_u64());
    assert_eq!(agent.stop().code(), Some(0));
}

/// Two devices: the camera and a card reader, both present at first.
const TWO_PROBES: &str = r#"
[health]
interval_s = 1

[[probes]]
id = "camera"
kind = "path"
path = "/dev/video0"
severity = "minor"

[[probes]]
id = "card-reader"
kind = "path"
path = "/dev/card0"
severity = "major"
"#;

/// Waits until the agent's own record (the socket's `events` op) holds an event for which
/// `pred` is true: the event is on disk, whether or not a broker is reachable.
fn wait_recorded(sock: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for_some(what, || {
        let r = socket_call(sock, &json!({"op": "events", "limit": 1000}));
        r["data"]["events"]
            .as_array()
            .and_then(|ev| ev.iter().find(|e| pred(e)).cloned())
    })
}

#[test]
fn events_survive_broker_outage_and_agent_restart_in_order() {
    let mut broker = Broker::start();
    let term = Terminal::new("sz-ft-0002");
    write(&term.path("root/dev/video0"), "");
    write(&term.path("root/dev/card0"), "");
    let cfg = term.config(&broker.url(), TWO_PROBES);
    let sock = term.socket();
    let mut platform =
        Platform::connect_session(broker.port, "kiosk/v1/t/+/events", "platform-outage");
    let first_camera;
    {
        let agent = Agent::start(&cfg);
        platform.event("agent.started");
        wait_socket(&sock);
        let all_ok = |r: &Value| {
            r["data"]["probes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["ok"] == true)
        };
        assert!(all_ok(&socket_call(&sock, &json!({"op": "inspect"}))));
        broker.stop();
        // While the broker is away the camera disappears: the event must be kept on disk.
        std::fs::remove_file(term.path("root/dev/video0")).unwrap();
        first_camera = wait_recorded(&sock, "the camera fault, recorded offline", |e| {
            e["code"] == "probe.failed" && e["details"]["probe"] == "camera"
        })["seq"]
            .as_u64();
        assert_eq!(
            agent.stop().code(),
            Some(0),
            "stops cleanly without a broker"
        );
    }
    // Restarted while the broker is still down (the camera is still missing, which the new
    // process reports too), then a second device fails while still offline.
    let agent = Agent::start(&cfg);
    wait_socket(&sock);
    wait_recorded(&sock, "the camera fault seen again at start", |e| {
        e["code"] == "probe.failed"
            && e["details"]["probe"] == "camera"
            && e["seq"].as_u64() > first_camera
    });
    std::fs::remove_file(term.path("root/dev/card0")).unwrap();
    let reader = wait_recorded(&sock, "the card-reader fault, recorded offline", |e| {
        e["code"] == "probe.failed" && e["details"]["probe"] == "card-reader"
    });
    let last = reader["seq"].as_u64().unwrap();
    broker.restart();
    let log_path = agent.log.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        platform.wait_json("/events", |v| v["seq"].as_u64() == Some(last))
    }))
    .unwrap_or_else(|_| {
        panic!(
            "agent log:\n{}\nbroker log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            broker.log()
        )
    });
    let events: Vec<Value> = platform
        .seen
        .iter()
        .filter(|m| m.topic.ends_with("/events"))
        .map(|m| m.json())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every event exactly once, in order, seq counting on across the restart"
    );
    // Whatever else the host raised (a full disk, say), these are the story, in this order.
    let story: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["code"] == "agent.started" || e["code"] == "probe.failed")
        .map(|e| {
            (
                e["code"].as_str().unwrap().to_string(),
                e["details"]["probe"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want = [
        ("agent.started", ""),
        ("probe.failed", "camera"),
        ("agent.started", ""),
        ("probe.failed", "camera"),
        ("probe.failed", "card-reader"),
    ];
    assert_eq!(
        story,
        want.map(|(c, p)| (c.to_string(), p.to_string())).to_vec()
    );
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn sigterm_says_shutdown_and_sigkill_leaves_the_will() {
    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, "kiosk/v1/t/+/state");
    let term = Terminal::new("sz-ft-0003");
    let cfg = term.config(&broker.url(), "");

    let agent = Agent::start(&cfg);
    platform.wait_json("/state", |v| v["status"] == "online");
    assert_eq!(agent.stop().code(), Some(0));
    let off = platform.wait_json("/state", |v| v["status"] == "offline");
    assert_eq!(off["reason"], "shutdown");

    platform.seen.clear();
    let mut agent = Agent::start(&cfg);
    platform.wait_json("/state", |v| v["status"] == "online");
    agent.signal(Signal::SIGKILL);
    agent.wait();
    let lost = platform.wait_json("/state", |v| v["status"] == "offline");
    assert_eq!(lost["reason"], "lost");
    assert_eq!(lost["terminal_id"], "sz-ft-0003");
}

#[test]
fn corrupt_event_queue_is_survived_and_reported() {
    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, "kiosk/v1/t/#");
    let term = Terminal::new("sz-ft-0004");
    write(
        &term.path("state/events/queue.jsonl"),
        "{\"id\":\"x-1\",\"terminal_id\":\"sz-ft-0004\",\"seq\":1,\"ts\":\"2026-11-29T08:00:00Z\",\"severity\":\"major\",\"code\":\"probe.failed\",\"message\":\"kept\",\"details\":{}}\n\u{0}\u{0}garbage{{{\n",
    );
    let agent = Agent::start(&term.config(&broker.url(), ""));
    let kept = platform.event("probe.failed");
    assert_eq!(kept["message"], "kept");
    let rec = platform.event("events.recovered");
    assert_eq!(rec["details"]["corrupt_lines"], 1);
    assert!(rec["seq"].as_u64().unwrap() > 1);
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn socket_status_health_inspect_and_maintenance() {
    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, "kiosk/v1/t/#");
    let term = Terminal::new("sz-ft-0005");
    let agent = Agent::start(&term.config(&broker.url(), PROBE));
    platform.wait_json("/health", |_| true);
    let sock = term.socket();

    let st = socket_call(&sock, &json!({"op": "status"}));
    assert_eq!(st["ok"], true);
    assert_eq!(st["data"]["terminal_id"], "sz-ft-0005");
    assert_eq!(st["data"]["faults"][0]["id"], "camera");

    let insp = socket_call(&sock, &json!({"op": "inspect"}));
    assert_eq!(insp["data"]["probes"][0]["ok"], false);

    let bad = socket_call(&sock, &json!({"op": "fly"}));
    assert_eq!(bad["error"]["code"], "unknown_op");

    let m = socket_call(
        &sock,
        &json!({"op": "maintenance", "on": true, "reason": "replacing camera"}),
    );
    assert_eq!(m["data"]["on"], true);
    platform.wait_json("/health", |v| v["maintenance"] == true);
    // Alarms are muted in maintenance: the camera coming back raises nothing.
    write(&term.path("root/dev/video0"), "");
    platform.wait_json("/health", |v| v["probes"][0]["ok"] == true);
    // A later event proves every event raised before it has arrived (they come in seq order),
    // so the absence of a recovery is conclusive.
    event_barrier(&mut platform, &sock, true, "replacing camera, camera back");
    assert!(
        !platform
            .seen
            .iter()
            .any(|m| m.json()["code"] == "probe.recovered"),
        "{:#?}",
        platform.summary()
    );

    // kioskctl renders it for a person.
    let out = std::process::Command::new(kioskctl_bin())
        .args(["--socket", sock.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Maintenance   ON") && text.contains("replacing camera"),
        "{text}"
    );
    let out = std::process::Command::new(kioskctl_bin())
        .args(["--socket", sock.to_str().unwrap(), "--json", "health"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], "kiosk.health/1");
    drop(agent);
    // The flag survives a restart.
    let _agent2 = Agent::start(&term.config(&broker.url(), PROBE));
    wait_socket(&sock);
    let st = socket_call(&sock, &json!({"op": "status"}));
    assert_eq!(st["data"]["maintenance"]["on"], true);
}

#[test]
fn kioskctl_names_the_os_error_once_and_empty_states_are_not_errors() {
    let kioskctl = |sock: &std::path::Path, args: &[&str]| {
        std::process::Command::new(kioskctl_bin())
            .arg("--socket")
            .arg(sock)
            .args(args)
            .output()
            .unwrap()
    };
    // No agent behind the path: one line, the OS error once, a hint that fits it.
    let nowhere = tempfile::tempdir().unwrap();
    let out = kioskctl(&nowhere.path().join("kioskctl.sock"), &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("is kiosk-agent running?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, "kiosk/v1/t/#");
    let term = Terminal::new("sz-ft-0006");
    let agent = Agent::start(&term.config(&broker.url(), PROBE));
    platform.wait_json("/state", |v| v["status"] == "online");
    wait_socket(&term.socket());
    let sock = term.socket();
    for (args, says) in [
        (&["compliance"][..], "No compliance report yet"),
        (&["catalog"][..], "No service-item catalog yet"),
        (&["patrol", "--history"][..], "No patrol reports yet"),
    ] {
        let out = kioskctl(&sock, args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(says), "{args:?}: {text}");
    }
    let out = kioskctl(&sock, &["--json", "compliance"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null");

    // Publishing a patrol says so, and the report is on the platform's side.
    let out = kioskctl(&sock, &["inspect", "--publish", "--lang", "en"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Recorded in the patrol history as report #1 and published on kiosk/v1/t/sz-ft-0006/patrol"),
        "{text}"
    );
    let report = platform.wait_json("/patrol", |_| true);
    assert_eq!(report["seq"], 1);
    assert_eq!(agent.stop().code(), Some(0));
}
