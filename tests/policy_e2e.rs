//! The security policy through the real daemon and a real Mosquitto, over a stock Debian host
//! tree: a signed policy is evaluated on receipt with evidence, the remediable failure fixed and
//! reported with before/after, the other one raised as a violation; a host change is caught by
//! the signed `compliance_scan` command; a policy the agent cannot fully understand is refused
//! whole and the one in force stays.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const FUTURE: &str = "2099-01-01T00:00:00Z";

/// Rules taken verbatim from the shipped baseline.
fn baseline_rules(ids: &[&str]) -> Vec<Value> {
    let text = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy/baseline.json"))
        .unwrap();
    let baseline: Value = serde_json::from_slice(&text).unwrap();
    ids.iter()
        .map(|id| {
            baseline["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == *id)
                .unwrap_or_else(|| panic!("{id} is not in the baseline"))
                .clone()
        })
        .collect()
}

fn policy(version: u64, target: &str, rules: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "policy", "version": version, "target": target,
        "issued_at": "2026-11-29T08:00:00Z", "rules": rules,
    }))
    .unwrap()
}

fn result<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no result for {id}: {report:#}"))
}

const REMEDIABLE: &str = "ts03-pass-max-days";
const REPORTED_ONLY: &str = "ts05-sshd-x11forwarding";
const PASSING: &str = "ts19-no-ld-so-preload";

#[test]
fn policy_evaluated_remediated_rescanned_on_command_and_a_bad_one_refused() {
    let broker = Broker::start();
    let id = "sz-ft-0401";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Terminal::new(id);
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/stock-debian"),
        &term.path("root"),
    );
    let login_defs = term.path("root/etc/login.defs");
    let sshd_config = term.path("root/etc/ssh/sshd_config");
    let sshd_before = fs::read(&sshd_config).unwrap();
    let agent = Agent::start(&term.config(&broker.url(), ""));
    platform.wait_json("/state", |v| v["status"] == "online");
    let me = format!("t/{id}");
    let topic = format!("{P}/t/{id}/desired/policy");

    platform.publish(
        &topic,
        sign(
            "policy",
            &policy(
                1,
                &me,
                baseline_rules(&[REMEDIABLE, REPORTED_ONLY, PASSING]),
            ),
            &[&term.admin],
        ),
        false,
    );
    let rep = platform.wait_json("/reported/policy", |v| v["status"] == "applied");
    assert_eq!(
        (rep["version"].as_u64(), rep["details"]["rules"].as_u64()),
        (Some(1), Some(3))
    );

    let first = platform.wait_json("/compliance", |v| v["version"] == 1);
    assert_eq!(
        (&first["passed"], &first["failed"], &first["remediated"]),
        (&json!(1), &json!(1), &json!(1)),
        "{first:#}"
    );
    assert_eq!(result(&first, PASSING)["status"], "pass");
    let fixed = result(&first, REMEDIABLE);
    assert_eq!(fixed["status"], "remediated", "{fixed:#}");
    assert_eq!(fixed["observed"]["value"], "90", "{fixed:#}");
    let failing = result(&first, REPORTED_ONLY);
    assert_eq!(failing["status"], "fail", "{failing:#}");
    assert_eq!(failing["observed"]["value"], "yes", "{failing:#}");
    let s1 = first["seq"].as_u64().unwrap();

    // The host really changed for the remediable rule, and only there.
    let defs = fs::read_to_string(&login_defs).unwrap();
    assert!(
        defs.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["PASS_MAX_DAYS", "90"]),
        "{defs}"
    );
    assert_eq!(
        fs::read(&sshd_config).unwrap(),
        sshd_before,
        "remediate: false"
    );

    let violation = platform.wait_json("/events", |v| {
        v["code"] == "policy.violation" && v["details"]["rule"] == REPORTED_ONLY
    });
    assert_eq!(violation["severity"], "major", "{violation:#}");
    assert_eq!(violation["details"]["rule_severity"], "major");
    assert_eq!(violation["details"]["observed"]["value"], "yes", "evidence");
    assert_eq!(violation["details"]["policy_version"], 1);
    let remediated = platform.wait_json("/events", |v| {
        v["code"] == "policy.remediated" && v["details"]["rule"] == REMEDIABLE
    });
    assert_eq!(
        remediated["details"]["before"]["value"], "99999",
        "{remediated:#}"
    );
    assert_eq!(
        remediated["details"]["after"]["value"], "90",
        "{remediated:#}"
    );
    assert_eq!(remediated["details"]["rule_severity"], "minor");

    // A policy holding one check type this agent does not know is refused whole.
    let mut rules = baseline_rules(&[PASSING]);
    rules.push(
        json!({"id": "reg-1", "title": "t", "severity": "major", "clause": "c",
        "check": {"type": "registry_key", "path": "HKLM\\Software"}, "remediate": false}),
    );
    platform.publish(
        &topic,
        sign("policy", &policy(2, &me, rules), &[&term.admin]),
        false,
    );
    let r = platform.wait_json("/reported/policy", |v| {
        v["status"] == "rejected" && v["version"] == 2
    });
    assert_eq!(r["details"]["reason"], "invalid_document", "{r:#}");
    assert!(
        r["message"].as_str().unwrap().contains("registry_key"),
        "{r:#}"
    );
    assert_eq!(
        r["details"]["in_force"],
        json!({"target": me, "version": 1})
    );

    // Someone drops a preload file on the kiosk; the platform asks for a scan.
    fs::write(term.path("root/etc/ld.so.preload"), "/tmp/evil.so\n").unwrap();
    platform.publish(
        &format!("{P}/t/{id}/cmd"),
        sign(
            "command",
            &command("scan-1", "compliance_scan", &me, json!({}), FUTURE),
            &[&term.admin],
        ),
        false,
    );
    let reply = platform.wait_json("/replies", |v| v["id"] == "scan-1");
    assert_eq!(reply["status"], "ok", "{reply:#}");
    assert_eq!(
        reply["result"]["version"], 1,
        "the policy in force is still 1"
    );
    let s2 = reply["result"]["seq"].as_u64().unwrap();
    assert!(s2 > s1, "{reply:#}");
    assert_eq!(
        (
            &reply["result"]["passed"],
            &reply["result"]["failed"],
            &reply["result"]["remediated"]
        ),
        (&json!(1), &json!(2), &json!(0)),
        "{reply:#}"
    );

    let second = platform.wait_json("/compliance", move |v| v["seq"].as_u64() == Some(s2));
    assert_eq!(second["version"], 1);
    assert_eq!(result(&second, PASSING)["status"], "fail", "{second:#}");
    assert_eq!(result(&second, REMEDIABLE)["status"], "pass", "stays fixed");
    assert_eq!(result(&second, REPORTED_ONLY)["status"], "fail");
    let preload = platform.wait_json("/events", |v| {
        v["code"] == "policy.violation" && v["details"]["rule"] == PASSING
    });
    assert_eq!(preload["details"]["rule_severity"], "major", "{preload:#}");
    assert!(
        preload["seq"].as_u64() > violation["seq"].as_u64(),
        "{preload:#}"
    );
    // The standing failure is not announced again: once an event raised after the scan has
    // arrived, every event of the scan has too (events come in seq order).
    event_barrier(
        &mut platform,
        &term.socket(),
        false,
        "after the second scan",
    );
    let again = platform
        .seen
        .iter()
        .filter(|m| {
            m.topic.ends_with("/events")
                && m.json()["code"] == "policy.violation"
                && m.json()["details"]["rule"] == REPORTED_ONLY
        })
        .count();
    assert_eq!(again, 1, "{:#?}", platform.summary());

    // The technician sees the same report on the socket.
    let c = socket_call(&term.socket(), &json!({"op": "compliance"}));
    assert_eq!(c["data"]["seq"].as_u64(), Some(s2), "{c:#}");
    assert_eq!(agent.stop().code(), Some(0));
}
