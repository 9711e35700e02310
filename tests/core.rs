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

#[test]
fn events_survive_broker_outage_and_agent_restart_in_order() {
    let mut broker = Broker::start();
    let term = Terminal::new("sz-ft-0002");
    write(&term.path("root/dev/video0"), "");
    let cfg = term.config(&broker.url(), PROBE);
    let mut platform =
        Platform::connect_session(broker.port, "kiosk/v1/t/+/events", "platform-outage");
    {
        let agent = Agent::start(&cfg);
        platform.event("agent.started");
        wait_socket(&term.socket());
        let ok = |r: &Value| r["data"]["probes"][0]["ok"] == true;
        assert!(ok(&socket_call(&term.socket(), &json!({"op": "inspect"}))));
        broker.stop();
        // While the broker is away the camera disappears: the event must be kept on disk.
        std::fs::remove_file(term.path("root/dev/video0")).unwrap();
        let sock = term.socket();
        let start = std::time::Instant::now();
        loop {
            let r = socket_call(&sock, &json!({"op": "events"}));
            if r["data"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["code"] == "probe.failed")
            {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "probe.failed never raised");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(
            agent.stop().code(),
            Some(0),
            "stops cleanly without a broker"
        );
    }
    // Restarted while the broker is still down, then a second fault while offline.
    let agent = Agent::start(&cfg);
    wait_socket(&term.socket());
    broker.restart();
    let log_path = agent.log.clone();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        platform.event("probe.failed")
    }))
    .unwrap_or_else(|_| {
        panic!(
            "agent log:\n{}\nbroker log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            broker.log()
        )
    });
    let third_start = platform.wait_json("/events", |v| {
        v["code"] == "agent.started" && v["seq"].as_u64() > Some(2)
    });
    let events: Vec<Value> = platform
        .seen
        .iter()
        .filter(|m| m.topic.ends_with("/events"))
        .map(|m| m.json())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "delivered in order: {seqs:?}");
    assert!(
        failed["seq"].as_u64().unwrap() >= 2,
        "seq survives restarts"
    );
    assert!(
        third_start["seq"].as_u64() > failed["seq"].as_u64(),
        "the offline fault comes first"
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
    platform.drain();
    assert!(
        !platform
            .seen
            .iter()
            .any(|m| m.json()["code"] == "probe.recovered")
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
