//! The kiosk UI's side against a real Mosquitto and the real daemon: usage statistics counted
//! exactly across a restart, refused when they carry anything but the three allowed fields or
//! name an item outside the catalog, kept on disk while the broker is down and published in
//! order after; and the screen heartbeat's fault and recovery.

mod common;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const FUTURE: &str = "2099-01-01T00:00:00Z";

fn catalog(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "catalog", "version": 1, "target": format!("t/{id}"),
        "issued_at": "2026-11-29T08:00:00Z",
        "items": [
            {"id": "id-card-renewal", "name": "身份证换领", "department": "公安", "status": "active"},
            {"id": "tax-query", "name": "个税查询", "department": "税务", "status": "suspended"},
        ],
    }))
    .unwrap()
}

fn setup(id: &str, extra: &str) -> Rig {
    Rig::new(P, id, extra)
}

impl Rig {
    fn start(&mut self, env: &[(&str, &str)]) -> Agent {
        let a = Agent::start_env(&self.cfg, env);
        wait_socket(&self.term.socket());
        a
    }

    fn online(&mut self) {
        self.wait_online();
    }

    fn apply_catalog(&mut self) {
        let id = self.term.id.clone();
        self.platform.publish(
            &format!("{P}/t/{id}/desired/catalog"),
            sign("catalog", &catalog(&id), &[&self.term.admin]),
            false,
        );
        self.platform
            .wait_json("/reported/catalog", |v| v["status"] == "applied");
    }

    fn usage(&self, item: &str, outcome: &str, duration_s: u64) -> Value {
        socket_call(
            &self.term.socket(),
            &json!({"op": "usage", "item": item, "outcome": outcome, "duration_s": duration_s}),
        )
    }

    fn command(&self, id: &str, name: &str) {
        let target = format!("t/{}", self.term.id);
        self.platform.publish(
            &format!("{P}/t/{}/cmd", self.term.id),
            sign(
                "command",
                &command(id, name, &target, json!({}), FUTURE),
                &[&self.term.admin],
            ),
            false,
        );
    }

    fn kioskctl(&self, args: &[&str]) -> String {
        let (ok, out, err) = kioskctl(&self.term.socket(), args);
        assert!(ok, "{err}");
        out
    }
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], true, "{v}");
    &v["data"]
}

/// Per item, the sum over the records: (completed, abandoned, failed, duration_s_total).
fn totals(records: &[Value], item: &str) -> (u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0);
    for r in records {
        for i in r["items"].as_array().unwrap() {
            if i["id"] == item {
                t.0 += i["completed"].as_u64().unwrap();
                t.1 += i["abandoned"].as_u64().unwrap();
                t.2 += i["failed"].as_u64().unwrap();
                t.3 += i["duration_s_total"].as_u64().unwrap();
            }
        }
    }
    t
}

/// Every `stats` record seen, in arrival order.
fn stats_seen(p: &Platform) -> Vec<Value> {
    p.seen
        .iter()
        .filter(|m| m.topic.ends_with("/stats"))
        .map(|m| m.json())
        .collect()
}

#[test]
fn counts_are_exact_across_a_restart_and_stats_flush_publishes_them() {
    let mut s = setup("sz-ft-0601", "");
    let agent = s.start(&[]);
    s.online();
    s.apply_catalog();
    ok(&s.usage("id-card-renewal", "completed", 60));
    ok(&s.usage("id-card-renewal", "completed", 40));
    ok(&s.usage("id-card-renewal", "abandoned", 10));
    let r = s.usage("tax-query", "failed", 5);
    assert_eq!(ok(&r)["counts"]["failed"], 1);
    assert_eq!(agent.stop().code(), Some(0));

    let _agent = s.start(&[]);
    let r = s.usage("id-card-renewal", "completed", 30);
    let today = s.kioskctl(&["usage", "--lang", "en", "--json"]);
    let today: Value = serde_json::from_str(&today).unwrap();
    let card = today["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "id-card-renewal")
        .unwrap()
        .clone();
    assert_eq!(
        (
            card["completed"].as_u64(),
            card["abandoned"].as_u64(),
            card["duration_s_total"].as_u64()
        ),
        (Some(3), Some(1), Some(140)),
        "{today} after {r}"
    );
    let zh = s.kioskctl(&["usage", "--lang", "zh"]);
    assert!(
        zh.contains("今日事项使用统计") && zh.contains("身份证换领") && zh.contains("完成"),
        "{zh}"
    );
    let en = s.kioskctl(&["usage", "--lang", "en"]);
    assert!(
        en.contains("COMPLETED") && en.contains("id-card-renewal"),
        "{en}"
    );

    s.command("flush-1", "stats_flush");
    let reply = s.platform.wait_json("/replies", |v| v["id"] == "flush-1");
    assert_eq!(reply["status"], "ok", "{reply}");
    let seq = reply["result"]["seq"].as_u64().unwrap();
    let flushed = s
        .platform
        .wait_json("/stats", move |v| v["seq"].as_u64() == Some(seq));
    assert_eq!(flushed["schema"], "kiosk.usage/1");
    assert_eq!(flushed["terminal_id"], "sz-ft-0601");
    assert_eq!(flushed["period_end"], reply["result"]["period_end"]);
    // An hour may have closed on its own meanwhile: together the records hold every session once.
    let records: Vec<Value> = stats_seen(&s.platform)
        .into_iter()
        .filter(|r| r["seq"].as_u64().unwrap() <= seq)
        .collect();
    assert_eq!(totals(&records, "id-card-renewal"), (3, 1, 0, 140));
    assert_eq!(totals(&records, "tax-query"), (0, 0, 1, 5));
    let stats_msg = s
        .platform
        .seen
        .iter()
        .find(|m| m.topic.ends_with("/stats"))
        .unwrap();
    assert!(!stats_msg.retain, "stats are not retained");
}

#[test]
fn citizen_data_and_unknown_items_are_refused_and_nothing_is_stored() {
    let mut s = setup("sz-ft-0602", "");
    let _agent = s.start(&[]);
    s.online();
    let r = s.usage("id-card-renewal", "completed", 10);
    assert_eq!(r["error"]["code"], "unknown_item", "no catalog yet: {r}");
    s.apply_catalog();
    let r = socket_call(
        &s.term.socket(),
        &json!({"op": "usage", "item": "id-card-renewal", "outcome": "completed", "duration_s": 10,
            "id_number": "440301199001011234", "name": "张三"}),
    );
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    let r = s.usage("passport-renewal", "completed", 10);
    assert_eq!(r["error"]["code"], "unknown_item", "{r}");
    let r = s.usage("id-card-renewal", "succeeded", 10);
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    let today = ok(&socket_call(
        &s.term.socket(),
        &json!({"op": "usage_today"}),
    ))
    .clone();
    assert_eq!(today["items"], json!([]), "nothing counted");
    let stored =
        std::fs::read_to_string(s.term.path("state/usage/current.json")).unwrap_or_default();
    assert!(
        !stored.contains("440301") && !stored.contains("张三"),
        "{stored}"
    );
    ok(&s.usage("id-card-renewal", "completed", 10));
}

#[test]
fn stats_are_kept_while_the_broker_is_down_and_delivered_in_order_after() {
    let mut s = setup("sz-ft-0603", "");
    let agent = s.start(&[]);
    s.online();
    s.apply_catalog();
    assert_eq!(agent.stop().code(), Some(0));
    s.broker.stop();

    // Offline: each restart an hour later (the injected clock) closes the previous hour.
    let agent = s.start(&[]);
    ok(&s.usage("id-card-renewal", "completed", 11));
    assert_eq!(agent.stop().code(), Some(0));
    let agent = s.start(&[("KIOSK_AGENT_CLOCK_OFFSET_S", "3600")]);
    ok(&s.usage("tax-query", "abandoned", 22));
    assert_eq!(agent.stop().code(), Some(0));
    let _agent = s.start(&[("KIOSK_AGENT_CLOCK_OFFSET_S", "7200")]);
    let status = ok(&socket_call(
        &s.term.socket(),
        &json!({"op": "usage_today"}),
    ))
    .clone();
    assert!(status["stats_pending"].as_u64().unwrap() >= 2, "{status}");

    s.broker.restart();
    s.platform.wait_json("/stats", |v| {
        v["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|x| x["id"] == "tax-query"))
    });
    let records = stats_seen(&s.platform);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "in order, no gap: {seqs:?}");
    }
    let first = |item: &str| {
        records
            .iter()
            .position(|r| {
                r["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["id"] == item)
            })
            .unwrap()
    };
    assert!(
        first("id-card-renewal") < first("tax-query"),
        "{records:#?}"
    );
    assert_eq!(totals(&records, "id-card-renewal"), (1, 0, 0, 11));
    assert_eq!(totals(&records, "tax-query"), (0, 1, 0, 22));
    // Each record is a closed period that ends before the next one starts.
    for w in records.windows(2) {
        assert!(
            w[0]["period_end"].as_str() <= w[1]["period_start"].as_str(),
            "{records:#?}"
        );
    }
}

#[test]
fn a_silent_screen_is_a_fault_until_the_next_heartbeat() {
    let mut s = setup("sz-ft-0604", "[ui]\nheartbeat_timeout_s = 1\n");
    let _agent = s.start(&[]);
    s.online();
    let beat = json!({"op": "heartbeat", "who": "ui", "screen": "home"});
    ok(&socket_call(&s.term.socket(), &beat));
    let ev = s.platform.event("ui.unresponsive");
    assert_eq!(ev["severity"], "major");
    assert_eq!(ev["details"]["screen"], "home");
    // The fault stays until a heartbeat: status, health and the patrol checklist show it.
    let status = ok(&socket_call(&s.term.socket(), &json!({"op": "status"}))).clone();
    let fault = status["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "ui.heartbeat")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(
        (fault["ok"].as_bool(), fault["level"].as_str()),
        (Some(false), Some("P2"))
    );
    s.command("report-1", "report_now");
    let health = s.platform.wait_json("/health", |v| {
        v["probes"].as_array().is_some_and(|p| {
            p.iter()
                .any(|x| x["id"] == "ui.heartbeat" && x["ok"] == false)
        })
    });
    assert_eq!(health["schema"], "kiosk.health/1");
    let inspect = s.kioskctl(&["inspect", "--lang", "en"]);
    assert!(
        inspect.contains("ui.heartbeat") && inspect.contains("kiosk screen"),
        "{inspect}"
    );
    let zh = s.kioskctl(&["inspect", "--lang", "zh"]);
    assert!(zh.contains("终端界面"), "{zh}");

    let r = socket_call(
        &s.term.socket(),
        &json!({"op": "heartbeat", "who": "ui", "screen": "id-card"}),
    );
    assert_eq!(ok(&r)["screen"], "id-card");
    let rec = s.platform.event("ui.recovered");
    assert_eq!(rec["details"]["screen"], "id-card");
    let r = socket_call(
        &s.term.socket(),
        &json!({"op": "heartbeat", "who": "ui", "photo": "x"}),
    );
    assert_eq!(r["error"]["code"], "invalid", "{r}");
}
