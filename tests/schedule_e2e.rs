//! Power schedules through the real daemon and a real Mosquitto: the daemon runs on a shifted
//! clock a minute before closing time, the kiosk UI holds the power-off on its socket while a
//! citizen pays and watches the warning on the same connection, releasing it powers off at once
//! with the RTC armed for the next opening, and a schedule the agent cannot understand is
//! refused whole while the one in force stays.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use kiosk_agent::api::client::Client;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const ZONE: &str = "Asia/Shanghai";
/// How far ahead of the agent's "now" the off time lies, in agent (and real) seconds.
const OFF_IN_S: i64 = 50;
const EVERY_DAY: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn schedule(version: u64, target: &str, zone: &str, days: &[&str], on: &str, off: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "schedule", "version": version, "target": target,
        "issued_at": "2026-11-29T08:00:00Z",
        "timezone": zone,
        "weekly": [{"days": days, "on": on, "off": off}],
        "dates": [],
        "off_action": "poweroff",
        "warn_minutes": 10,
    }))
    .unwrap()
}

/// Reads lines from the kiosk UI's connection until one matches. `next_line` blocks, so a
/// watchdog kills the agent when nothing matching arrives in time: the connection then closes
/// and the wait fails instead of hanging.
fn wait_line(
    ui: &mut Client,
    agent: &Agent,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    let (disarm, armed) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let mut seen = Vec::new();
    let found = loop {
        match ui.next_line() {
            Ok(v) if pred(&v) => break v,
            Ok(v) => seen.push(v),
            Err(e) => panic!(
                "waiting for {what} on the socket: {e}; saw {seen:#?}\nagent log:\n{}",
                agent.log()
            ),
        }
    };
    drop(disarm);
    watchdog.join().unwrap();
    found
}

/// Polls the socket's `schedule` op until `pred` holds.
fn wait_schedule(sock: &Path, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until_within(limit, what, || {
        last = socket_call(sock, &json!({"op": "schedule"}))["data"].clone();
        pred(&last)
    });
    last
}

fn wait_file_lines(path: &Path, n: usize, what: &str) {
    wait_until(what, || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
            >= n
    });
}

fn ts(s: &Value) -> jiff::Timestamp {
    s.as_str()
        .unwrap_or_else(|| panic!("not a time: {s}"))
        .parse()
        .unwrap()
}

#[test]
fn held_power_off_follows_release_with_the_rtc_armed_for_the_next_opening() {
    // The agent's clock: OFF_IN_S seconds before 18:00 in Shanghai, today.
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let real = jiff::Timestamp::now();
    let today = tz.to_datetime(real).date();
    let off_at = tz.to_timestamp(today.at(18, 0, 0, 0)).unwrap();
    let next_on = tz
        .to_timestamp(today.tomorrow().unwrap().at(9, 0, 0, 0))
        .unwrap();
    let offset = off_at.as_second() - OFF_IN_S - real.as_second();

    let broker = Broker::start();
    let id = "sz-ft-0301";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    std::fs::create_dir_all(term.path("root/sys/class/rtc/rtc0")).unwrap();
    let marker = term.path("poweroff.log");
    let wakealarm = term.path("root/sys/class/rtc/rtc0/wakealarm");
    let cfg = term.config(
        &broker.url(),
        &format!(
            "[power]\npoweroff_cmd = [\"sh\", \"-c\", \"echo off >> {}\"]\nwake_lead_minutes = 5\nmax_inhibit_minutes = 30\n",
            marker.display()
        ),
    );
    let agent = Agent::start_env(&cfg, &[("KIOSK_AGENT_CLOCK_OFFSET_S", &offset.to_string())]);
    platform.wait_json("/state", |v| v["status"] == "online");
    wait_socket(&term.socket());

    // The kiosk UI: one connection that watches and holds.
    let mut ui = Client::connect(&term.socket()).unwrap();
    ui.send(&json!({"op": "subscribe"})).unwrap();
    wait_line(&mut ui, &agent, DEADLINE, "subscribed", |v| {
        v["ok"] == true && v["data"]["subscribed"] == true
    });
    ui.send(&json!({"op": "inhibit", "who": "ui", "why": "citizen paying"}))
        .unwrap();
    wait_line(&mut ui, &agent, DEADLINE, "inhibit answer", |v| {
        v["ok"] == true && v["data"]["held"] == true
    });

    let me = format!("t/{id}");
    platform.publish(
        &format!("{P}/t/{id}/desired/schedule"),
        sign(
            "schedule",
            &schedule(1, &me, ZONE, &EVERY_DAY, "09:00", "18:00"),
            &[&term.admin],
        ),
        false,
    );
    let rep = platform.wait_json("/reported/schedule", |v| v["status"] == "applied");
    assert_eq!(rep["version"], 1);
    assert_eq!(ts(&rep["details"]["next_off"]), off_at, "{rep:#}");
    assert_eq!(ts(&rep["details"]["next_on"]), next_on, "{rep:#}");

    // Inside warn_minutes: the citizen is warned at the screen, the platform told.
    let warning = wait_line(&mut ui, &agent, DEADLINE, "power.warning", |v| {
        v["code"] == "power.warning"
    });
    assert_eq!(ts(&warning["details"]["off_at"]), off_at, "{warning:#}");
    assert_eq!(warning["details"]["minutes_left"], 1, "{warning:#}");
    assert_eq!(warning["details"]["action"], "poweroff");
    let scheduled = platform.event("power.scheduled");
    assert_eq!(ts(&scheduled["details"]["off_at"]), off_at);
    // PROTOCOL §8 spread, from first principles: u64_be(SHA-256(id)[0..8]) mod (10 × 60).
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let h = digest.as_ref()[..8]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let spread = (h % 600) as i64;
    assert_eq!(
        ts(&scheduled["details"]["wake_at"]).as_second(),
        next_on.as_second() - 300 - spread,
        "{scheduled:#}"
    );

    // The off time passes while the citizen is still paying: the power-off waits.
    let limit = DEADLINE + Duration::from_secs(OFF_IN_S as u64);
    let held = wait_schedule(&term.socket(), limit, "a held power-off", |d| {
        !d["pending_off"].is_null()
    });
    assert_eq!(ts(&held["pending_off"]["off_at"]), off_at, "{held:#}");
    assert_eq!(held["pending_off"]["action"], "poweroff");
    assert_eq!(
        held["pending_off"]["reasons"],
        json!(["held by ui: citizen paying"]),
        "{held:#}"
    );
    assert_eq!(held["holds"][0]["who"], "ui");
    assert_eq!(
        ts(&held["pending_off"]["deadline"]).as_second(),
        off_at.as_second() + 30 * 60,
        "max_inhibit_minutes"
    );
    assert!(!marker.exists(), "powered off under a citizen's hands");

    // The transaction ends: off at once, RTC armed for the next opening minus the wake lead.
    ui.send(&json!({"op": "release"})).unwrap();
    wait_line(&mut ui, &agent, DEADLINE, "release answer", |v| {
        v["ok"] == true && v["data"]["held"] == false
    });
    wait_file_lines(&marker, 1, "poweroff_cmd");
    let wake = std::fs::read_to_string(&wakealarm).unwrap();
    assert_eq!(
        wake.trim().parse::<i64>().unwrap(),
        ts(&rep["details"]["next_on"]).as_second() - 5 * 60 - spread,
        "wakealarm = next_on - wake_lead_minutes - spread (default 10 minutes)"
    );
    let off = platform.event("power.off");
    assert_eq!(ts(&off["details"]["off_at"]), off_at);
    assert_eq!(off["details"]["forced"], false, "released, not overridden");
    let after = wait_schedule(&term.socket(), DEADLINE, "the last action", |d| {
        d["last_action"]["action"] == "poweroff"
    });
    assert!(after["pending_off"].is_null(), "{after:#}");
    assert_eq!(after["last_action"]["ok"], true, "{after:#}");
    assert!(after["holds"].as_array().unwrap().is_empty());

    drop(ui);
    assert_eq!(agent.stop().code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "off\n",
        "poweroff_cmd ran exactly once"
    );
}

#[test]
fn a_schedule_with_an_unknown_zone_time_or_day_is_refused_whole() {
    let broker = Broker::start();
    let id = "sz-ft-0302";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    let cfg = term.config(&broker.url(), "[power]\npoweroff_cmd = [\"true\"]\n");
    let agent = Agent::start(&cfg);
    platform.wait_json("/state", |v| v["status"] == "online");
    let me = format!("t/{id}");
    let topic = format!("{P}/t/{id}/desired/schedule");
    let send = |platform: &Platform, bytes: Vec<u8>| {
        platform.publish(&topic, sign("schedule", &bytes, &[&term.admin]), false)
    };

    send(
        &platform,
        schedule(1, &me, ZONE, &EVERY_DAY, "09:00", "18:00"),
    );
    platform.wait_json("/reported/schedule", |v| v["status"] == "applied");

    let bad: [(u64, Vec<u8>, &str); 3] = [
        (
            2,
            schedule(2, &me, "Asia/Shenzhen", &EVERY_DAY, "09:00", "18:00"),
            "Asia/Shenzhen",
        ),
        (
            3,
            schedule(3, &me, ZONE, &EVERY_DAY, "09:00", "25:00"),
            "25:00",
        ),
        (
            4,
            schedule(4, &me, ZONE, &["mon", "funday"], "09:00", "18:00"),
            "funday",
        ),
    ];
    for (version, bytes, names) in bad {
        send(&platform, bytes);
        let r = platform.wait_json("/reported/schedule", move |v| {
            v["status"] == "rejected" && v["version"] == version
        });
        assert_eq!(r["details"]["reason"], "invalid_document", "{r:#}");
        let message = r["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
        assert_eq!(
            r["details"]["in_force"],
            json!({"target": me, "version": 1}),
            "{r:#}"
        );
    }
    let s = socket_call(&term.socket(), &json!({"op": "schedule"}));
    assert_eq!(s["data"]["schedule"]["version"], 1, "{s:#}");
    assert_eq!(s["data"]["schedule"]["timezone"], ZONE);
    assert_eq!(s["data"]["schedule"]["weekly_days"], 7);

    // A refused document never became the newest version: version 2, done right, is taken.
    send(
        &platform,
        schedule(2, &me, ZONE, &["mon", "tue"], "08:30", "17:00"),
    );
    platform.wait_json("/reported/schedule", |v| {
        v["status"] == "applied" && v["version"] == 2
    });
    let s = socket_call(&term.socket(), &json!({"op": "schedule"}));
    assert_eq!(s["data"]["schedule"]["weekly_days"], 2, "{s:#}");
    assert_eq!(agent.stop().code(), Some(0));
}
