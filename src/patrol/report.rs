//! The patrol report document exactly as published, and its pure builder.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::host::rfc3339;
use crate::telemetry::grade::Grade;
use crate::telemetry::probes::ProbeResult;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatrolItem {
    pub id: String,
    pub kind: String,
    pub ok: bool,
    /// The fault grade; `null` when the item has no fault.
    pub level: Option<Grade>,
    pub detail: String,
}

impl PatrolItem {
    /// An item from a probe result and the grade the daemon computed for it.
    pub fn from_probe(r: &ProbeResult, level: Option<Grade>) -> Self {
        Self {
            id: r.id.clone(),
            kind: r.kind.clone(),
            ok: r.ok,
            level,
            detail: r.detail.clone(),
        }
    }
}

/// The client certificate as a checklist item: `detail` is its `not_after` (RFC 3339), followed
/// by ` renewing` while a renewal is under way; the checklist words it in either language.
/// Expired is a P1 (the terminal is about to drop off the network), within a week a P2.
pub fn cert_item(not_after: Timestamp, renewing: bool, now: Timestamp) -> PatrolItem {
    let left = not_after.as_second() - now.as_second();
    let (ok, level) = if left < 0 {
        (false, Some(Grade::P1))
    } else if left < 7 * 86_400 {
        (true, Some(Grade::P2))
    } else {
        (true, None)
    };
    let mut detail = rfc3339(not_after);
    if renewing {
        detail.push_str(" renewing");
    }
    PatrolItem {
        id: "certificate".into(),
        kind: "cert".into(),
        ok,
        level,
        detail,
    }
}

/// The clock discipline as a checklist item: `detail` is `synchronized <max_error_ms>` or
/// `unsynchronized <max_error_ms>`. A clock without a time source is a P3.
pub fn clock_item(synchronized: bool, max_error_ms: u64) -> PatrolItem {
    PatrolItem {
        id: "clock".into(),
        kind: "time".into(),
        ok: synchronized,
        level: (!synchronized).then_some(Grade::P3),
        detail: format!(
            "{} {max_error_ms}",
            if synchronized {
                "synchronized"
            } else {
                "unsynchronized"
            }
        ),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compliance {
    /// The policy version the checks ran against.
    pub version: String,
    pub passed: u32,
    pub failed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScheduleSummary {
    pub next_on: Option<String>,
    pub next_off: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub version: String,
    pub uptime_s: u64,
}

/// `{"ts","seq","items","compliance","schedule","agent"}` (docs/protocol.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatrolReport {
    pub ts: String,
    pub seq: u64,
    pub items: Vec<PatrolItem>,
    /// `null` when no policy has run yet: "not checked" must not read as "all passed".
    pub compliance: Option<Compliance>,
    pub schedule: ScheduleSummary,
    pub agent: AgentSummary,
}

/// Everything a patrol report is made of; the daemon gathers it, `build` only arranges it.
#[derive(Debug, Clone)]
pub struct PatrolInputs {
    pub ts: Timestamp,
    pub items: Vec<PatrolItem>,
    pub compliance: Option<Compliance>,
    pub next_on: Option<Timestamp>,
    pub next_off: Option<Timestamp>,
    pub agent_version: String,
    pub uptime_s: u64,
}

/// The report for `inputs` with sequence number `seq`. Items are ordered worst fault first
/// (then faultless items in their configured order), so the first line a technician reads is
/// the one that needs them most.
pub fn build(inputs: PatrolInputs, seq: u64) -> PatrolReport {
    let mut items = inputs.items;
    // Stable: equal grades keep the configured order.
    items.sort_by_key(|i| (i.level.is_none(), i.level, i.ok));
    PatrolReport {
        ts: rfc3339(inputs.ts),
        seq,
        items,
        compliance: inputs.compliance,
        schedule: ScheduleSummary {
            next_on: inputs.next_on.map(rfc3339),
            next_off: inputs.next_off.map(rfc3339),
        },
        agent: AgentSummary {
            version: inputs.agent_version,
            uptime_s: inputs.uptime_s,
        },
    }
}

/// One line of history: enough to see a trend without opening every report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatrolSummary {
    pub ts: String,
    pub seq: u64,
    pub items: usize,
    pub failing: usize,
    /// Items with a fault grade, failing or not (paper low counts).
    pub faults: usize,
    pub worst: Option<Grade>,
    pub compliance_failed: Option<u32>,
}

impl PatrolReport {
    pub fn summary(&self) -> PatrolSummary {
        PatrolSummary {
            ts: self.ts.clone(),
            seq: self.seq,
            items: self.items.len(),
            failing: self.items.iter().filter(|i| !i.ok).count(),
            faults: self.items.iter().filter(|i| i.level.is_some()).count(),
            worst: self.items.iter().filter_map(|i| i.level).min(),
            compliance_failed: self.compliance.as_ref().map(|c| c.failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, ok: bool, level: Option<Grade>) -> PatrolItem {
        PatrolItem {
            id: id.into(),
            kind: "usb".into(),
            ok,
            level,
            detail: String::new(),
        }
    }

    #[test]
    fn worst_first_then_configured_order_and_wire_shape() {
        let r = build(
            PatrolInputs {
                ts: "2026-03-02T23:00:00Z".parse().unwrap(),
                items: vec![
                    item("a", true, None),
                    item("b", true, Some(Grade::P3)),
                    item("c", false, Some(Grade::P2)),
                    item("d", true, None),
                    item("e", false, Some(Grade::P3)),
                ],
                compliance: None,
                next_on: Some("2026-03-03T00:30:00Z".parse().unwrap()),
                next_off: None,
                agent_version: "0.1.0".into(),
                uptime_s: 5,
            },
            9,
        );
        let ids: Vec<&str> = r.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["c", "e", "b", "a", "d"]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["items"][0]["level"], "P2");
        assert_eq!(v["items"][3]["level"], serde_json::Value::Null);
        assert_eq!(v["compliance"], serde_json::Value::Null);
        assert_eq!(v["schedule"]["next_on"], "2026-03-03T00:30:00Z");
        assert_eq!(v["agent"]["uptime_s"], 5);
        let s = r.summary();
        assert_eq!((s.failing, s.faults, s.worst), (2, 3, Some(Grade::P2)));
    }
}
