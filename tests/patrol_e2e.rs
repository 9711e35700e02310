//! The daily patrol through the real daemon: produced at `patrol.at` local time (on a shifted
//! clock), retained on `patrol`, kept in the history across a restart, and printed by
//! `kioskctl inspect` as a checklist in Chinese or English.

mod common;

use common::*;
use serde_json::json;

#[test]
fn patrol_runs_at_the_configured_local_time_and_history_survives_restart() {
    let broker = Broker::start();
    let mut platform = Platform::connect(broker.port, "kiosk/v1/t/+/patrol");
    let term = Terminal::new("sz-ft-0301");
    write(&term.path("root/dev/video0"), "");
    let extra = r#"
[patrol]
at = "03:00"

[[probes]]
id = "camera"
kind = "path"
path = "/dev/video0"

[[probes]]
id = "id-reader"
kind = "usb"
vid_pid = "0bda:5411"
severity = "major"
"#;
    let cfg = term.config(&broker.url(), extra);
    // Put the agent's clock 20 s before the next 03:00 in the machine's zone.
    let tz = jiff::tz::TimeZone::system();
    let now = jiff::Timestamp::now();
    let local = tz.to_datetime(now);
    let mut target = local.date().at(3, 0, 0, 0);
    if target <= local {
        target = target.tomorrow().unwrap();
    }
    let due = tz.to_timestamp(target).unwrap();
    let offset = due.as_second() - now.as_second() - 20;
    let agent = Agent::start_env(&cfg, &[("KIOSK_AGENT_CLOCK_OFFSET_S", &offset.to_string())]);

    let m = platform.wait_for("the daily patrol", |m| m.topic.ends_with("/patrol"));
    let report = m.json();
    assert_eq!(m.topic, "kiosk/v1/t/sz-ft-0301/patrol");
    assert_eq!(report["seq"], 1);
    // Retained: a platform that subscribes later still gets it, flagged as retained.
    let mut late = Platform::connect(broker.port, "kiosk/v1/t/sz-ft-0301/patrol");
    let kept = late.wait_for("the retained patrol report", |m| {
        m.topic.ends_with("/patrol")
    });
    assert!(kept.retain, "delivered from the broker's retained store");
    assert_eq!(kept.json(), report);
    let ts: jiff::Timestamp = report["ts"].as_str().unwrap().parse().unwrap();
    assert!(ts >= due, "not before 03:00 local: {ts} < {due}");
    let items = report["items"].as_array().unwrap();
    // The two probes and the clock (no certificate item: this broker is plain MQTT).
    let ids: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        ids.contains(&"clock") && !ids.contains(&"certificate"),
        "{ids:?}"
    );
    // Worst first: the missing card reader (major → P2) leads.
    assert_eq!(items[0]["id"], "id-reader");
    assert_eq!(items[0]["ok"], false);
    assert_eq!(items[0]["level"], "P2");
    assert_eq!(report["agent"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(agent.stop().code(), Some(0));

    let _agent = Agent::start(&cfg);
    wait_socket(&term.socket());
    let h = socket_call(&term.socket(), &json!({"op": "patrol"}));
    let history = h["data"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{h}");
    assert_eq!(history[0]["seq"], 1);

    let sock = term.socket();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(kioskctl_bin())
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .env_remove("LANG")
            .env_remove("LC_ALL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let zh = run(&["inspect", "--lang", "zh"]);
    assert!(zh.starts_with("巡检报告 #2"), "{zh}");
    assert!(
        zh.contains("✗ id-reader") && zh.contains("✓ camera"),
        "{zh}"
    );
    let en = run(&["inspect", "--lang", "en"]);
    assert!(en.starts_with("Patrol report #2"), "{en}");
    assert!(en.contains("P2"), "{en}");
    // A preview is not recorded; --publish records it.
    run(&["inspect", "--publish"]);
    let hist = run(&["patrol", "--history"]);
    assert_eq!(hist.lines().count(), 3, "header and two reports:\n{hist}");
    platform.wait_json("/patrol", |v| v["seq"] == 2);
}
