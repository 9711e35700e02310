//! Fleet behaviour (PROTOCOL §8) through the real daemon and a real Mosquitto with
//! persistence: a present session is resumed without a SUBSCRIBE (so no retained document is
//! re-sent), a lost one is rebuilt without republishing acknowledged reports, the session
//! counter is the same in the birth and the Last Will, a burst of signed commands (also inside
//! a flood of invalid messages) is answered exactly once per command, reports made while the
//! broker is away all arrive, and a staged rollout holds a release until its wave opens.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const FUTURE: &str = "2099-01-01T00:00:00Z";

/// Lines of the broker's log (`log_type all`) that say it sent `id` something new on
/// `needle` (`d0`: a DUP re-send of a message still in flight at a restart is MQTT's delivery
/// guarantee, not a replay).
fn sent_to(broker: &Broker, id: &str, needle: &str) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains(&format!("Sending PUBLISH to {id} (d0,")) && l.contains(needle))
        .count()
}

fn subscribes_from(broker: &Broker, id: &str) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains(&format!("Received SUBSCRIBE from {id}")))
        .count()
}

/// A catalog of `n` service items, as a city publishes it fleet-wide.
fn catalog(version: u64, n: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("item-{i:03}"), "name": format!("事项 {i}"), "department": "政务服务",
                   "status": "active", "notice": ""})
        })
        .collect();
    serde_json::to_vec(&json!({
        "kind": "catalog", "version": version, "target": "all",
        "issued_at": "2026-11-29T08:00:00Z", "items": items, "announcements": [],
    }))
    .unwrap()
}

fn baseline_policy() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/policy/baseline.json"
    ))
    .unwrap()
}

fn ping(platform: &Platform, term: &Terminal, id: &str) {
    let me = format!("t/{}", term.id);
    platform.publish(
        &format!("{P}/t/{}/cmd", term.id),
        sign(
            "command",
            &command(id, "ping", &me, json!({}), FUTURE),
            &[&term.admin],
        ),
        false,
    );
}

fn birth(platform: &mut Platform, session: u64) -> Value {
    platform.wait_json("/state", move |v| {
        v["status"] == "online" && v["session"] == session
    })
}

#[test]
fn present_session_resumes_without_replay_and_the_will_carries_the_session() {
    let mut broker = Broker::start();
    let id = "sz-ft-0801";
    let mut platform =
        Platform::connect_session(broker.port, &format!("{P}/t/{id}/#"), "plat-0801");
    let term = Terminal::new(id);
    let admin = [&term.admin];
    platform.publish(
        &format!("{P}/all/desired/catalog"),
        sign("catalog", &catalog(1, 120), &admin),
        true,
    );
    platform.publish(
        &format!("{P}/all/desired/policy"),
        sign("policy", &baseline_policy(), &admin),
        true,
    );
    let cfg = term.config(&broker.url(), "");
    let mut agent = Agent::start(&cfg);
    let first = birth(&mut platform, 1);
    assert_eq!(first["terminal_id"], id);
    platform.wait_json("/reported/catalog", |v| v["status"] == "applied");
    platform.wait_json("/reported/policy", |v| v["status"] == "applied");
    let docs_before = sent_to(&broker, id, "/desired/");
    assert_eq!(docs_before, 2, "catalog and policy delivered once each");
    assert_eq!(subscribes_from(&broker, id), 1);

    let reports = |p: &Platform| {
        p.seen
            .iter()
            .filter(|m| m.topic.contains("/reported/") && !m.payload.is_empty())
            .count()
    };
    ping(&platform, &term, "before-restart");
    platform.wait_json("/replies", |v| v["id"] == "before-restart");
    platform.drain();
    let reported_before = reports(&platform);

    // Broker restart with persistence: the session is present, so no SUBSCRIBE and no replay.
    broker.stop();
    let log_mark = broker.log().len();
    broker.restart();
    birth(&mut platform, 2);
    ping(&platform, &term, "after-restart");
    platform.wait_json("/replies", |v| v["id"] == "after-restart");
    let after: String = broker.log()[log_mark..].to_string();
    assert!(
        !after.contains(&format!("Received SUBSCRIBE from {id}")),
        "no SUBSCRIBE on a present session:\n{after}"
    );
    assert_eq!(
        sent_to(&broker, id, "/desired/"),
        docs_before,
        "no retained document re-sent"
    );
    platform.drain();
    assert_eq!(
        reports(&platform),
        reported_before,
        "no report published again"
    );

    // The Last Will of this connection carries the birth's session (the Will of the first
    // connection, published when the broker went down, carried 1).
    platform.seen.clear();
    agent.child.kill().unwrap();
    agent.wait();
    let will = platform.wait_json("/state", |v| v["status"] == "offline");
    assert_eq!(will["reason"], "lost");
    assert_eq!(
        will["session"], 2,
        "the Will names the connection it belongs to"
    );

    // A restarted agent finds its session on the broker: still no SUBSCRIBE, no replay; the
    // counter continues from the persisted value.
    let subs = subscribes_from(&broker, id);
    let agent = Agent::start(&cfg);
    birth(&mut platform, 3);
    ping(&platform, &term, "after-agent-restart");
    platform.wait_json("/replies", |v| v["id"] == "after-agent-restart");
    assert_eq!(subscribes_from(&broker, id), subs);
    assert_eq!(sent_to(&broker, id, "/desired/"), docs_before);

    // Without a session (the broker lost its state) the agent subscribes as at first connect;
    // the documents come again at an equal version and nothing new is published for them.
    broker.stop();
    std::fs::remove_file(broker.dir.path().join("mosquitto.db")).unwrap();
    broker.restart();
    let mut platform2 = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    platform2.publish(
        &format!("{P}/all/desired/catalog"),
        sign("catalog", &catalog(1, 120), &admin),
        true,
    );
    platform2.publish(
        &format!("{P}/all/desired/policy"),
        sign("policy", &baseline_policy(), &admin),
        true,
    );
    birth(&mut platform2, 4);
    ping(&platform2, &term, "after-wipe");
    platform2.wait_json("/replies", |v| v["id"] == "after-wipe");
    assert_eq!(subscribes_from(&broker, id), subs + 1, "subscribed again");
    // Both documents were re-sent on the new subscription (FIFO: before the ping's reply).
    let log = broker.log();
    let wiped = &log[log.rfind("mosquitto version").unwrap()..];
    assert_eq!(
        wiped
            .lines()
            .filter(
                |l| l.contains(&format!("Sending PUBLISH to {id} (d0,")) && l.contains("/desired/")
            )
            .count(),
        2
    );
    platform2.drain();
    assert!(
        !platform2
            .seen
            .iter()
            .any(|m| m.topic.contains("/reported/")),
        "acknowledged reports are not republished for equal versions: {:#?}",
        platform2.summary()
    );
    agent.stop();
}

#[test]
fn a_burst_of_signed_commands_is_answered_exactly_once_each() {
    // Room in the broker's queue for the whole burst; the agent takes it at its own pace.
    let broker = Broker::start_with("allow_anonymous true\nmax_queued_messages 0\n");
    let id = "sz-ft-0802";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/replies"));
    let term = Terminal::new(id);
    let me = format!("t/{id}");
    const N: usize = 1000;
    let cmds: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            sign(
                "command",
                &command(&format!("burst-{i}"), "ping", &me, json!({}), FUTURE),
                &[&term.admin],
            )
        })
        .collect();
    let cfg = term.config(&broker.url(), "");
    let agent = Agent::start(&cfg);
    let mut state = Platform::connect(broker.port, &format!("{P}/t/{id}/state"));
    state.wait_json("/state", |v| v["status"] == "online");
    for c in cmds {
        platform.publish(&format!("{P}/t/{id}/cmd"), c, false);
    }
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    while count.len() < N {
        let m = platform.wait_for("a reply", |m| m.topic.ends_with("/replies"));
        platform.seen.clear();
        let v = m.json();
        assert_eq!(v["status"], "ok", "{v}");
        *count
            .entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Anything duplicated would be among what arrives next, before this marker's reply.
    ping(&platform, &term, "marker");
    loop {
        let m = platform.wait_for("a reply", |m| m.topic.ends_with("/replies"));
        platform.seen.clear();
        let v = m.json();
        if v["id"] == "marker" {
            break;
        }
        *count
            .entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(count.len(), N);
    assert!(count.values().all(|&n| n == 1), "each exactly once");
    agent.stop();
}

#[test]
fn a_flood_of_invalid_messages_loses_no_valid_command() {
    let broker = Broker::start_with("allow_anonymous true\nmax_queued_messages 0\n");
    let id = "sz-ft-0803";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/replies"));
    let term = Terminal::new(id);
    let me = format!("t/{id}");
    let stranger = key();
    let cfg = term.config(&broker.url(), "");
    let agent = Agent::start(&cfg);
    let mut state = Platform::connect(broker.port, &format!("{P}/t/{id}/state"));
    state.wait_json("/state", |v| v["status"] == "online");
    let topic = format!("{P}/t/{id}/cmd");
    let forged = sign(
        "command",
        &command("forged", "ping", &me, json!({}), FUTURE),
        &[&stranger],
    );
    let oversized = vec![b'{'; 1024 * 1024 + 1];
    const VALID: usize = 100;
    for i in 0..3000 {
        let junk: Vec<u8> = match i % 4 {
            0 => b"not json at all".to_vec(),
            1 => forged.clone(),
            2 => b"{\"payloadType\": 1}".to_vec(),
            _ if i % 300 == 3 => oversized.clone(),
            _ => vec![0xff; 64],
        };
        platform.publish(&topic, junk, false);
        if i % 30 == 0 {
            let n = i / 30;
            platform.publish(
                &topic,
                sign(
                    "command",
                    &command(&format!("valid-{n}"), "ping", &me, json!({}), FUTURE),
                    &[&term.admin],
                ),
                false,
            );
        }
    }
    ping(&platform, &term, "marker");
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let m = platform.wait_for("a reply", |m| m.topic.ends_with("/replies"));
        platform.seen.clear();
        let v = m.json();
        let rid = v["id"].as_str().unwrap().to_string();
        if rid == "marker" {
            break;
        }
        *count.entry(rid).or_default() += 1;
    }
    assert_eq!(count.len(), VALID, "{count:?}");
    assert!(count.keys().all(|k| k.starts_with("valid-")));
    assert!(count.values().all(|&n| n == 1));
    agent.stop();
}

#[test]
fn reports_made_while_the_broker_is_away_all_arrive() {
    let mut broker = Broker::start();
    let id = "sz-ft-0804";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    let admin = [&term.admin];
    platform.publish(
        &format!("{P}/all/desired/catalog"),
        sign("catalog", &catalog(1, 120), &admin),
        true,
    );
    platform.publish(
        &format!("{P}/all/desired/policy"),
        sign("policy", &baseline_policy(), &admin),
        true,
    );
    let cfg = term.config(&broker.url(), "");
    let agent = Agent::start(&cfg);
    platform.wait_json("/reported/catalog", |v| v["status"] == "applied");
    platform.wait_json("/reported/policy", |v| v["status"] == "applied");
    platform.wait_json("/compliance", |v| v["seq"].is_u64());
    // Forget the retained reports, so what is there after the outage was made during it.
    for leaf in ["reported/catalog", "reported/policy", "compliance"] {
        platform.publish(&format!("{P}/t/{id}/{leaf}"), Vec::new(), true);
    }
    let mut state = Platform::connect(broker.port, &format!("{P}/t/{id}/state"));
    ping(&platform, &term, "settled");
    platform.wait_json("/replies", |v| v["id"] == "settled");
    drop(state);

    // The broker goes away; the agent restarts meanwhile (its reports are made again at start)
    // and runs more scans than the MQTT client's request channel holds.
    broker.stop();
    agent.stop();
    let agent = Agent::start(&cfg);
    wait_socket(&term.socket());
    let mut last_seq = 0;
    for _ in 0..300 {
        let r = socket_call(&term.socket(), &json!({"op": "compliance_scan"}));
        assert_eq!(r["ok"], true, "{r}");
        last_seq = r["data"]["seq"].as_u64().unwrap();
    }
    broker.restart();
    state = Platform::connect(broker.port, &format!("{P}/t/{id}/state"));
    state.wait_json("/state", |v| v["status"] == "online");
    let mut fresh = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    ping(&fresh, &term, "after-outage");
    fresh.wait_json("/replies", |v| v["id"] == "after-outage");
    let c = fresh.wait_json("/reported/catalog", |v| v["status"] == "applied");
    assert_eq!(c["version"], 1);
    let p = fresh.wait_json("/reported/policy", |v| v["status"] == "applied");
    assert_eq!(p["version"], 1);
    let comp = fresh.wait_json("/compliance", move |v| v["seq"] == last_seq);
    assert_eq!(comp["version"], 1);
    agent.stop();
}

// --- staged rollout -------------------------------------------------------------------------

/// The §8 position, computed here from first principles (not with the agent's code).
fn position(id: &str, name: &str, release: &str) -> f64 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{id}/{name}/{release}").as_bytes(),
    );
    let mut h: u64 = 0;
    for b in &d.as_ref()[..8] {
        h = (h << 8) | u64::from(*b);
    }
    (u128::from(h) * 100) as f64 / 2f64.powi(64)
}

fn utc(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn app_doc(
    version: u64,
    name: &str,
    release: &str,
    artifact: &Path,
    rollout: Option<Value>,
) -> Vec<u8> {
    let bytes =
        std::fs::read(artifact).unwrap_or_else(|_| format!("{name} {release}\n").into_bytes());
    let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut doc = json!({
        "kind": "app", "version": version, "target": "all",
        "issued_at": "2026-11-29T08:00:00Z",
        "name": name, "release": release,
        "artifact": {"url": format!("file://{}", artifact.display()), "sha256": hex,
                     "size": bytes.len(), "format": "file"},
        "restart_units": [],
    });
    if let Some(r) = rollout {
        doc["rollout"] = r;
    }
    serde_json::to_vec(&doc).unwrap()
}

/// A release name whose position for `id` lies in [20, 80), so waves can be put around it.
fn release_in_middle(id: &str, name: &str) -> (String, f64) {
    (0..)
        .map(|i| format!("2.{i}.0"))
        .map(|r| {
            let p = position(id, name, &r);
            (r, p)
        })
        .find(|(_, p)| (20.0..80.0).contains(p))
        .unwrap()
}

#[test]
fn rollout_holds_a_release_until_its_wave_and_a_newer_document_supersedes_it() {
    let broker = Broker::start();
    let id = "sz-ft-0805";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    let admin = [&term.admin];
    let cfg = term.config(&broker.url(), "");
    let agent = Agent::start(&cfg);
    platform.wait_json("/state", |v| v["status"] == "online");
    wait_socket(&term.socket());

    // "ui": this terminal is in the second wave, opening OPEN_S after the start.
    const OPEN_S: i64 = 8;
    let (rel, p) = release_in_middle(id, "ui");
    let start = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let rollout = json!({"start": utc(start), "waves": [
        {"percent": p / 2.0, "after_s": 0}, {"percent": 100, "after_s": OPEN_S}]});
    let artifact = term.path("ui-artifact");
    std::fs::write(&artifact, b"ui release\n").unwrap();
    let doc = app_doc(1, "ui", &rel, &artifact, Some(rollout.clone()));
    // Not readable until the wave opens: a download before it would fail the install.
    std::fs::rename(&artifact, term.path("ui-artifact.hidden")).unwrap();
    platform.publish(
        &format!("{P}/all/desired/app/ui"),
        sign("app", &doc, &admin),
        true,
    );
    let waiting = platform.wait_json("/reported/app/ui", |v| v["status"] == "waiting_wave");
    let expected = utc(start
        .checked_add(jiff::SignedDuration::from_secs(OPEN_S))
        .unwrap());
    assert_eq!(waiting["details"]["not_before"], expected.as_str());
    assert_eq!(waiting["details"]["wave"], 2);
    assert!((waiting["details"]["position"].as_f64().unwrap() - p).abs() < 1e-9);
    let updates = socket_call(&term.socket(), &json!({"op": "updates"}));
    let w = &updates["data"]["waiting_wave"][0];
    assert_eq!(w["name"], "ui");
    assert_eq!(w["not_before"], expected.as_str());
    assert!(
        !term.path("apps/ui").exists(),
        "nothing downloaded before the wave opens"
    );
    std::fs::rename(term.path("ui-artifact.hidden"), &artifact).unwrap();
    let applied = platform.wait_json("/reported/app/ui", |v| {
        v["status"] != "waiting_wave" && v["status"] != "in_progress"
    });
    assert_eq!(applied["status"], "applied", "{applied}");
    assert_eq!(applied["details"]["release"], rel.as_str());

    // "map": no wave includes this terminal (not_before null); a newer document without a
    // rollout supersedes it and installs at once.
    let (rel_map, p_map) = release_in_middle(id, "map");
    let artifact_map = term.path("map-artifact");
    std::fs::write(&artifact_map, b"map release\n").unwrap();
    let never = json!({"start": utc(start), "waves": [{"percent": p_map / 2.0, "after_s": 0}]});
    platform.publish(
        &format!("{P}/all/desired/app/map"),
        sign(
            "app",
            &app_doc(1, "map", &rel_map, &artifact_map, Some(never)),
            &admin,
        ),
        true,
    );
    let w = platform.wait_json("/reported/app/map", |v| v["status"] == "waiting_wave");
    assert_eq!(w["details"]["not_before"], Value::Null);
    assert_eq!(w["details"]["wave"], Value::Null);
    platform.publish(
        &format!("{P}/all/desired/app/map"),
        sign(
            "app",
            &app_doc(2, "map", "9.9.9", &artifact_map, None),
            &admin,
        ),
        true,
    );
    let done = platform.wait_json("/reported/app/map", |v| {
        v["version"] == 2 && v["status"] != "in_progress"
    });
    assert_eq!(done["status"], "applied", "{done}");
    assert_eq!(done["details"]["release"], "9.9.9");
    let updates = socket_call(&term.socket(), &json!({"op": "updates"}));
    assert_eq!(updates["data"]["waiting_wave"], json!([]));

    // An invalid rollout is refused whole.
    let bad = json!({"start": utc(start), "waves": [{"percent": 50, "after_s": 10}, {"percent": 40, "after_s": 20}]});
    platform.publish(
        &format!("{P}/all/desired/app/ui"),
        sign(
            "app",
            &app_doc(2, "ui", "3.0.0", &artifact, Some(bad)),
            &admin,
        ),
        true,
    );
    let r = platform.wait_json("/reported/app/ui", |v| v["status"] == "rejected");
    assert!(r["message"].as_str().unwrap().contains("rollout"), "{r}");
    agent.stop();
}

#[test]
fn kiosk_admin_waves_matches_the_formula() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = json!({"start": "2026-12-01T00:00:00+08:00",
        "waves": [{"percent": 5, "after_s": 0}, {"percent": 30, "after_s": 3600}, {"percent": 60, "after_s": 86400}]});
    let f = dir.path().join("rollout.json");
    std::fs::write(&f, rollout.to_string()).unwrap();
    let ids: Vec<String> = (1..=40).map(|i| format!("sz-ft-{i:04}")).collect();
    let out = run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_kiosk-admin"))
            .args([
                "waves",
                "--name",
                "kiosk-ui",
                "--release",
                "2.4.0",
                "--rollout",
            ])
            .arg(&f)
            .arg("--json")
            .args(&ids),
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ids.len());
    let mut seen_never = false;
    for (id, v) in ids.iter().zip(&lines) {
        let p = position(id, "kiosk-ui", "2.4.0");
        let (wave, after): (Option<u64>, i64) = if p < 5.0 {
            (Some(1), 0)
        } else if p < 30.0 {
            (Some(2), 3600)
        } else if p < 60.0 {
            (Some(3), 86400)
        } else {
            (None, 0)
        };
        assert_eq!(v["terminal_id"], id.as_str());
        assert!((v["position"].as_f64().unwrap() - p).abs() < 1e-9, "{v}");
        assert_eq!(v["wave"], json!(wave), "{id} at {p}");
        let expected = wave.map(|_| {
            // 2026-12-01T00:00:00+08:00 is 2026-11-30T16:00:00Z.
            utc(jiff::Timestamp::from_second(1_796_054_400 + after).unwrap())
        });
        seen_never |= wave.is_none();
        assert_eq!(v["not_before"], json!(expected), "{id}");
    }
    assert!(seen_never, "some of 40 terminals fall beyond 60%");
}
