//! Signed control against a real Mosquitto: the catalog applied byte-exact, every refusal
//! changing nothing and reported, scope precedence, commands at most once, trust rotation, and
//! all of it surviving a restart.

mod common;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";

fn catalog(version: u64, target: &str, status: &str) -> Vec<u8> {
    // Exact bytes matter: non-ASCII, odd spacing, key order as the platform wrote it.
    format!(
        "{{\"kind\": \"catalog\", \"version\": {version}, \"target\": \"{target}\", \"issued_at\": \"2026-11-29T08:00:00+08:00\",\n \"items\": [{{\"id\": \"id-card-renewal\", \"name\": \"身份证换领\", \"department\": \"公安\", \"status\": \"{status}\", \"notice\": \"系统升级\"}}], \"announcements\": [\"周日暂停服务\"]}}"
    )
    .into_bytes()
}

const FUTURE: &str = "2099-01-01T00:00:00Z";

fn rejected(platform: &mut Platform, reason: &str) -> Value {
    let r = reason.to_string();
    platform.wait_json("/events", move |v| {
        v["code"] == "security.rejected" && v["details"]["reason"] == r.as_str()
    })
}

fn reply(platform: &mut Platform, id: &str) -> Value {
    let id = id.to_string();
    platform.wait_json("/replies", move |v| v["id"] == id.as_str())
}

struct Setup {
    broker: Broker,
    platform: Platform,
    term: Terminal,
    agent: Option<Agent>,
    cfg: std::path::PathBuf,
}

fn setup(id: &str, extra: &str) -> Setup {
    let broker = Broker::start();
    let platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    let cfg = term.config(&broker.url(), extra);
    Setup {
        broker,
        platform,
        term,
        agent: None,
        cfg,
    }
}

impl Setup {
    fn start(&mut self) {
        self.agent = Some(Agent::start(&self.cfg));
        let id = self.term.id.clone();
        self.platform.wait_json("/state", move |v| {
            v["status"] == "online" && v["terminal_id"] == id.as_str()
        });
    }
    fn topic(&self, leaf: &str) -> String {
        format!("{P}/t/{}/{leaf}", self.term.id)
    }
    fn catalog_file(&self) -> Vec<u8> {
        std::fs::read(self.term.path("state/catalog/current.json")).unwrap_or_default()
    }
}

#[test]
fn catalog_applies_byte_exact_and_every_refusal_changes_nothing() {
    let mut s = setup("sz-ft-0201", "");
    let (b, c, stranger, schedule_only) = (key(), key(), key(), key());
    s.term.set_trust(&trust_doc(
        1,
        &[
            (&s.term.admin, ALL_ROLES),
            (&b, DOC_ROLES),
            (&c, DOC_ROLES),
            (&schedule_only, &["schedule"]),
        ],
        json!({"trust": 1, "policy": 2, "schedule": 1, "catalog": 1, "app": 1, "command": 1}),
    ));
    s.start();
    let me = format!("t/{}", s.term.id);
    let topic = s.topic("desired/catalog");

    let good = catalog(3, &me, "suspended");
    s.platform
        .publish(&topic, sign("catalog", &good, &[&s.term.admin]), false);
    let rep = s
        .platform
        .wait_json("/reported/catalog", |v| v["status"] == "applied");
    assert_eq!(
        (rep["version"].as_u64(), rep["target"].as_str()),
        (Some(3), Some(me.as_str()))
    );
    assert_eq!(s.catalog_file(), good, "exact payload bytes on disk");

    let send = |s: &Setup, bytes: Vec<u8>| s.platform.publish(&topic, bytes, false);
    let send_to =
        |s: &Setup, leaf: &str, bytes: Vec<u8>| s.platform.publish(&s.topic(leaf), bytes, false);
    // Lower version.
    send(
        &s,
        sign("catalog", &catalog(2, &me, "active"), &[&s.term.admin]),
    );
    let r = s
        .platform
        .wait_json("/reported/catalog", |v| v["status"] == "rejected");
    assert_eq!(r["details"]["reason"], "rollback");
    rejected(&mut s.platform, "rollback");
    // Tampered: a signature over other bytes.
    let mut env: Value = serde_json::from_slice(&sign(
        "catalog",
        &catalog(4, &me, "active"),
        &[&s.term.admin],
    ))
    .unwrap();
    env["payload"] = json!(base64_of(&catalog(4, &me, "offline")));
    send(&s, serde_json::to_vec(&env).unwrap());
    rejected(&mut s.platform, "bad_signature");
    // Unknown key.
    send(
        &s,
        sign("catalog", &catalog(5, &me, "active"), &[&stranger]),
    );
    rejected(&mut s.platform, "unknown_key");
    // A trusted key without the catalog role.
    send(
        &s,
        sign("catalog", &catalog(6, &me, "active"), &[&schedule_only]),
    );
    rejected(&mut s.platform, "missing_role");
    // A kind no capability takes: refused by name, nothing written.
    send_to(
        &s,
        "desired/firmware",
        sign("catalog", &catalog(7, &me, "offline"), &[&s.term.admin]),
    );
    let ev = rejected(&mut s.platform, "invalid_document");
    assert_eq!(ev["details"]["topic"], "desired/firmware", "{ev:#}");
    assert!(
        ev["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("unknown kind firmware")),
        "{ev:#}"
    );
    // 2-of-3 policy threshold met by one key only.
    let policy = serde_json::to_vec(&json!({"kind": "policy", "version": 1, "target": me, "issued_at": "2026-11-29T08:00:00Z",
        "rules": [{"id": "no-preload", "title": "t", "severity": "high", "clause": "c", "check": {"type": "file_absent", "path": "/etc/ld.so.preload"}, "remediate": false}]}))
    .unwrap();
    s.platform.publish(
        &s.topic("desired/policy"),
        sign("policy", &policy, &[&b]),
        false,
    );
    rejected(&mut s.platform, "below_threshold");
    // Wrong target: a document for another terminal replayed onto ours.
    send(
        &s,
        sign(
            "catalog",
            &catalog(7, "t/sz-ft-9999", "active"),
            &[&s.term.admin],
        ),
    );
    rejected(&mut s.platform, "wrong_target");
    // payloadType does not match the topic.
    send(
        &s,
        sign("schedule", &catalog(8, &me, "active"), &[&s.term.admin]),
    );
    rejected(&mut s.platform, "wrong_type");
    // Expired.
    let expired = String::from_utf8(catalog(9, &me, "active"))
        .unwrap()
        .replacen(
            "\"issued_at\"",
            "\"expires_at\": \"2026-01-01T00:00:00Z\", \"issued_at\"",
            1,
        );
    send(&s, sign("catalog", expired.as_bytes(), &[&s.term.admin]));
    rejected(&mut s.platform, "expired");
    // Malformed JSON, then malformed base64.
    send(&s, b"{not json".to_vec());
    let first = rejected(&mut s.platform, "bad_envelope")["seq"].as_u64();
    send(&s, br#"{"payloadType":"application/vnd.kiosk.catalog+json","payload":"!!notbase64!!","signatures":[]}"#.to_vec());
    s.platform.wait_json("/events", move |v| {
        v["code"] == "security.rejected"
            && v["details"]["reason"] == "bad_envelope"
            && v["seq"].as_u64() > first
    });
    // 10 MiB, above security.max_message_bytes.
    send(&s, vec![b' '; 10 * 1024 * 1024]);
    rejected(&mut s.platform, "too_large");

    assert_eq!(s.catalog_file(), good, "nothing changed");
    // The 2-of-3 threshold is met by two distinct keys.
    s.platform.publish(
        &s.topic("desired/policy"),
        sign("policy", &policy, &[&b, &c]),
        false,
    );
    s.platform
        .wait_json("/reported/policy", |v| v["status"] == "applied");
    let comp = s.platform.wait_json("/compliance", |_| true);
    assert_eq!(comp["passed"], 1);
    // kioskctl shows the catalog to a technician.
    let out = std::process::Command::new(kioskctl_bin())
        .args(["--socket", s.term.socket().to_str().unwrap(), "catalog"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("suspended") && text.contains("身份证换领") && text.contains("系统升级"),
        "{text}"
    );
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn terminal_beats_group_beats_fleet_and_clearing_falls_back() {
    let mut s = setup("sz-ft-0202", "");
    s.start();
    let k = &s.term.admin;
    let fleet = catalog(1, "all", "active");
    s.platform.publish(
        &format!("{P}/all/desired/catalog"),
        sign("catalog", &fleet, &[k]),
        true,
    );
    s.platform.wait_json("/reported/catalog", |v| {
        v["status"] == "applied" && v["target"] == "all"
    });
    assert_eq!(s.catalog_file(), fleet);

    let group = catalog(1, "g/futian", "suspended");
    s.platform.publish(
        &format!("{P}/g/futian/desired/catalog"),
        sign("catalog", &group, &[k]),
        true,
    );
    s.platform
        .wait_json("/reported/catalog", |v| v["target"] == "g/futian");
    assert_eq!(s.catalog_file(), group);

    let mine = format!("t/{}", s.term.id);
    let terminal = catalog(1, &mine, "offline");
    s.platform.publish(
        &s.topic("desired/catalog"),
        sign("catalog", &terminal, &[k]),
        true,
    );
    let m = mine.clone();
    s.platform
        .wait_json("/reported/catalog", move |v| v["target"] == m.as_str());
    assert_eq!(s.catalog_file(), terminal);

    // A newer group document is accepted but the terminal's stays in force...
    let group2 = catalog(2, "g/futian", "active");
    s.platform.publish(
        &format!("{P}/g/futian/desired/catalog"),
        sign("catalog", &group2, &[k]),
        true,
    );
    // Proof that it was taken in: the first group document, sent again on the same topic (so
    // it arrives after the second), is now a rollback. Had version 2 not been recorded, an
    // equal version would only have been reported again.
    s.platform.publish(
        &format!("{P}/g/futian/desired/catalog"),
        sign("catalog", &group, &[k]),
        false,
    );
    let rollback = rejected(&mut s.platform, "rollback");
    assert_eq!(rollback["details"]["target"], "g/futian", "{rollback:#}");
    assert_eq!(
        s.catalog_file(),
        terminal,
        "the terminal's document stays in force"
    );
    assert!(
        !s.platform
            .seen
            .iter()
            .any(|m| m.topic.ends_with("/reported/catalog")
                && m.json()["target"] == "g/futian"
                && m.json()["version"] == 2),
        "the group's newer document is not reported while the terminal's is in force: {:#?}",
        s.platform.summary()
    );
    let shown = socket_call(&s.term.socket(), &json!({"op": "catalog"}));
    assert_eq!(shown["data"]["items"][0]["status"], "offline", "{shown:#}");
    // ...until the terminal scope is cleared.
    s.platform
        .publish(&s.topic("desired/catalog"), Vec::new(), true);
    s.platform.wait_json("/reported/catalog", |v| {
        v["target"] == "g/futian" && v["version"] == 2
    });
    assert_eq!(s.catalog_file(), group2);
}

#[test]
fn commands_run_at_most_once_and_only_when_meant_for_us() {
    let mut s = setup("sz-ft-0203", "");
    let marker = s.term.path("rebooted");
    let extra = format!(
        "[power]\nreboot_cmd = [\"sh\", \"-c\", \"echo reboot >> {}\"]\n",
        marker.display()
    );
    s.cfg = s.term.config(&s.broker.url(), &extra);
    s.start();
    let k = &s.term.admin;
    let me = format!("t/{}", s.term.id);
    let cmd_topic = s.topic("cmd");

    s.platform.publish(
        &cmd_topic,
        sign(
            "command",
            &command("c-ping", "ping", &me, json!({}), FUTURE),
            &[k],
        ),
        false,
    );
    assert_eq!(reply(&mut s.platform, "c-ping")["status"], "ok");

    s.platform.publish(
        &cmd_topic,
        sign(
            "command",
            &command(
                "c-1",
                "maintenance",
                &me,
                json!({"on": true, "reason": "paper"}),
                FUTURE,
            ),
            &[k],
        ),
        false,
    );
    assert_eq!(reply(&mut s.platform, "c-1")["status"], "ok");
    s.platform.publish(
        &cmd_topic,
        sign(
            "command",
            &command("c-2", "maintenance", &me, json!({"on": false}), FUTURE),
            &[k],
        ),
        false,
    );
    assert_eq!(reply(&mut s.platform, "c-2")["status"], "ok");
    // The same id again does not run (maintenance stays off).
    s.platform.publish(
        &cmd_topic,
        sign(
            "command",
            &command(
                "c-1",
                "maintenance",
                &me,
                json!({"on": true, "reason": "paper"}),
                FUTURE,
            ),
            &[k],
        ),
        false,
    );
    let r = s.platform.wait_json("/replies", |v| {
        v["id"] == "c-1" && v["status"] == "rejected"
    });
    assert_eq!(r["code"], "replayed");
    let st = socket_call(&s.term.socket(), &json!({"op": "status"}));
    assert_eq!(st["data"]["maintenance"]["on"], false);

    // Expired: refused with a reply, not run.
    s.platform.publish(
        &cmd_topic,
        sign(
            "command",
            &command(
                "c-old",
                "maintenance",
                &me,
                json!({"on": true}),
                "2026-01-01T00:00:00Z",
            ),
            &[k],
        ),
        false,
    );
    assert_eq!(reply(&mut s.platform, "c-old")["code"], "expired");
    // For another terminal, on our group's topic: not run here.
    s.platform.publish(
        &format!("{P}/g/futian/cmd"),
        sign(
            "command",
            &command(
                "c-other",
                "maintenance",
                "t/sz-ft-9999",
                json!({"on": true}),
                FUTURE,
            ),
            &[k],
        ),
        false,
    );
    assert_eq!(reply(&mut s.platform, "c-other")["code"], "wrong_target");
    // Unknown name.
    s.platform.publish(
        &cmd_topic,
        sign(
            "command",
            &command("c-x", "self_destruct", &me, json!({}), FUTURE),
            &[k],
        ),
        false,
    );
    let r = reply(&mut s.platform, "c-x");
    assert_eq!(
        (r["status"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unknown_command"))
    );
    // Fleet-wide reboot goes through power.reboot_cmd.
    s.platform.publish(
        &format!("{P}/all/cmd"),
        sign(
            "command",
            &command("c-boot", "reboot", "all", json!({"delay_s": 0}), FUTURE),
            &[k],
        ),
        false,
    );
    assert_eq!(reply(&mut s.platform, "c-boot")["status"], "ok");
    wait_until("reboot_cmd to run", || {
        std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    });
    let st = socket_call(&s.term.socket(), &json!({"op": "status"}));
    assert_eq!(
        st["data"]["maintenance"]["on"], false,
        "neither c-old nor c-other ran"
    );

    // After a restart the seen ids are still refused.
    drop(s.agent.take());
    s.platform.seen.clear();
    s.start();
    let again = sign(
        "command",
        &command("c-2", "maintenance", &me, json!({"on": false}), FUTURE),
        &[&s.term.admin],
    );
    s.platform.publish(&cmd_topic, again, false);
    assert_eq!(reply(&mut s.platform, "c-2")["code"], "replayed");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().lines().count(),
        1,
        "reboot ran once"
    );
}

#[test]
fn trust_rotation_and_restart_keep_what_is_in_force() {
    let mut s = setup("sz-ft-0204", "");
    let (root1, doc1, root2, doc2) = (key(), key(), key(), key());
    s.term.set_trust(&trust_doc(
        1,
        &[(&root1, &["trust"]), (&doc1, DOC_ROLES)],
        thresholds(1),
    ));
    s.start();
    let me = format!("t/{}", s.term.id);
    let cat = s.topic("desired/catalog");
    let trust = s.topic("desired/trust");

    s.platform.publish(
        &cat,
        sign("catalog", &catalog(1, &me, "active"), &[&doc1]),
        false,
    );
    s.platform.wait_json("/reported/catalog", |v| {
        v["status"] == "applied" && v["version"] == 1
    });

    let mut v2 = trust_doc(
        2,
        &[(&root2, &["trust"]), (&doc2, DOC_ROLES)],
        thresholds(1),
    );
    v2["target"] = json!(me);
    v2["issued_at"] = json!("2026-11-29T08:00:00Z");
    let v2 = serde_json::to_vec(&v2).unwrap();
    // Signed only by the new root: refused.
    s.platform
        .publish(&trust, sign("trust", &v2, &[&root2]), false);
    s.platform
        .wait_json("/reported/trust", |v| v["status"] == "rejected");
    // Signed by the old and the new root: in force.
    s.platform
        .publish(&trust, sign("trust", &v2, &[&root1, &root2]), false);
    s.platform.wait_json("/reported/trust", |v| {
        v["status"] == "applied" && v["version"] == 2
    });
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(s.term.path("trust.json")).unwrap()).unwrap();
    assert_eq!(on_disk["version"], 2);

    s.platform.publish(
        &cat,
        sign("catalog", &catalog(2, &me, "active"), &[&doc1]),
        false,
    );
    rejected(&mut s.platform, "unknown_key");
    s.platform.publish(
        &cat,
        sign("catalog", &catalog(2, &me, "suspended"), &[&doc2]),
        false,
    );
    s.platform.wait_json("/reported/catalog", |v| {
        v["status"] == "applied" && v["version"] == 2
    });

    // Restart: versions and trust survive.
    assert_eq!(s.agent.take().unwrap().stop().code(), Some(0));
    s.platform.seen.clear();
    s.start();
    s.platform.publish(
        &cat,
        sign("catalog", &catalog(1, &me, "offline"), &[&doc2]),
        false,
    );
    rejected(&mut s.platform, "rollback");
    s.platform.publish(
        &cat,
        sign("catalog", &catalog(3, &me, "offline"), &[&doc1]),
        false,
    );
    rejected(&mut s.platform, "unknown_key");
    assert_eq!(s.catalog_file(), catalog(2, &me, "suspended"));
    let _ = &s.broker;
}
