//! The security records fail closed: a garbled anti-rollback floor or command-id record never
//! lets an old, validly signed document or command back in, and only a signed reset clears the
//! lost state.

mod common;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";

fn catalog(version: u64, target: &str, issued_at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "catalog", "version": version, "target": target, "issued_at": issued_at,
        "items": [{"id": "id-card-renewal", "name": "身份证换领", "department": "公安", "status": "active", "notice": ""}],
        "announcements": [],
    }))
    .unwrap()
}

fn now_rfc3339(offset_s: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(offset_s))
        .unwrap();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn cmd_at(id: &str, name: &str, target: &str, issued_at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "command", "id": id, "name": name, "args": {}, "target": target,
        "issued_at": issued_at, "expires_at": "2099-01-01T00:00:00Z",
    }))
    .unwrap()
}

struct Rig {
    broker: Broker,
    platform: Platform,
    term: Terminal,
    cfg: std::path::PathBuf,
}

impl Rig {
    fn new(id: &str) -> Self {
        let broker = Broker::start();
        let platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
        let term = Terminal::new(id);
        let cfg = term.config(&broker.url(), "");
        Rig {
            broker,
            platform,
            term,
            cfg,
        }
    }

    fn me(&self) -> String {
        format!("t/{}", self.term.id)
    }

    fn start(&mut self) -> Agent {
        let a = Agent::start(&self.cfg);
        let id = self.term.id.clone();
        self.platform.wait_json("/state", move |v| {
            v["status"] == "online" && v["terminal_id"] == id.as_str()
        });
        a
    }

    fn send_catalog(&self, version: u64, issued_at: &str) {
        let topic = format!("{P}/t/{}/desired/catalog", self.term.id);
        let doc = catalog(version, &self.me(), issued_at);
        self.platform
            .publish(&topic, sign("catalog", &doc, &[&self.term.admin]), false);
    }

    fn send_command(&self, doc: &[u8]) {
        let topic = format!("{P}/t/{}/cmd", self.term.id);
        self.platform
            .publish(&topic, sign("command", doc, &[&self.term.admin]), false);
    }

    fn reported(&mut self, version: u64, status: &str) -> Value {
        let s = status.to_string();
        self.platform.wait_json("/reported/catalog", move |v| {
            v["version"] == version && v["status"] == s.as_str()
        })
    }

    fn reply(&mut self, id: &str) -> Value {
        let id = id.to_string();
        self.platform
            .wait_json("/replies", move |v| v["id"] == id.as_str())
    }

    fn garble(&self, rels: &[&str]) {
        for rel in rels {
            let p = self.term.path(&format!("state/{rel}"));
            assert!(p.exists(), "{} exists before garbling", p.display());
            std::fs::write(&p, b"{\"catalog|t/\x00\x01 torn").unwrap();
        }
    }
}

const OLD: &str = "2026-11-29T08:00:00Z";

#[test]
fn garbled_floor_with_documents_intact_still_refuses_the_old_version() {
    let mut r = Rig::new("sz-ft-0701");
    let agent = r.start();
    r.send_catalog(3, OLD);
    r.reported(3, "applied");
    r.send_catalog(5, OLD);
    r.reported(5, "applied");
    assert_eq!(agent.stop().code(), Some(0));

    r.garble(&["control/versions.json", "control/versions.copy.json"]);
    let _agent = r.start();
    let lost = r.platform.event("security.records_lost");
    assert_eq!(lost["severity"], "critical");
    // The documents store still proves version 5 was accepted.
    r.send_catalog(3, OLD);
    let rep = r.reported(3, "rejected");
    assert_eq!(rep["details"]["reason"], "rollback");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(r.term.path("state/catalog/current.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["version"], 5, "the catalog in force is unchanged");
}

#[test]
fn every_record_garbled_refuses_anything_signed_before_the_loss_until_a_signed_reset() {
    let mut r = Rig::new("sz-ft-0702");
    let agent = r.start();
    r.send_catalog(5, OLD);
    r.reported(5, "applied");
    let me = r.me();
    let ping = cmd_at("before-loss", "ping", &me, OLD);
    r.send_command(&ping);
    assert_eq!(r.reply("before-loss")["status"], "ok");
    assert_eq!(agent.stop().code(), Some(0));

    r.garble(&[
        "control/versions.json",
        "control/versions.copy.json",
        "control/documents.json",
        "control/reported.json",
        "control/commands-seen.json",
        "control/commands-seen.copy.json",
    ]);
    let agent = r.start();
    let lost = r.platform.event("security.records_lost");
    assert_eq!(lost["severity"], "critical");
    assert_eq!(
        lost["details"]["newly_lost"].as_array().map(Vec::len),
        Some(2)
    );

    // An old, validly signed catalog (the retained copy an attacker put back) is refused.
    r.send_catalog(3, OLD);
    let rep = r.reported(3, "rejected");
    assert_eq!(rep["details"]["reason"], "records_lost");
    // So is a replay of a command executed before the loss: its id record is gone.
    r.platform.seen.clear();
    r.send_command(&ping);
    let rep = r.reply("before-loss");
    assert_eq!(
        (rep["status"].as_str(), rep["code"].as_str()),
        (Some("rejected"), Some("records_lost"))
    );
    // A document signed after the loss is accepted.
    r.send_catalog(6, &now_rfc3339(0));
    r.reported(6, "applied");
    // The mark survives a restart.
    assert_eq!(agent.stop().code(), Some(0));
    let _agent = r.start();
    r.platform.seen.clear();
    let again = r.platform.event("security.records_lost");
    assert_eq!(again["details"]["since"], lost["details"]["since"]);

    // The operator's signed reset clears it: the floor as it stands is trusted from now on.
    r.send_command(&cmd_at("reset-1", "security_reset", &me, &now_rfc3339(0)));
    let rep = r.reply("reset-1");
    assert_eq!(rep["status"], "ok");
    assert_eq!(rep["result"]["was_lost"], true);
    r.platform.event("security.records_reset");
    r.send_command(&cmd_at("after-reset", "ping", &me, OLD));
    assert_eq!(r.reply("after-reset")["status"], "ok");
    // Version 6 is the floor now: 4 is a rollback, 7 applies.
    r.send_catalog(4, OLD);
    assert_eq!(r.reported(4, "rejected")["details"]["reason"], "rollback");
    r.send_catalog(7, OLD);
    r.reported(7, "applied");
    let _ = &r.broker;
}
