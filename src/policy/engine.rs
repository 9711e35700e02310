//! Evaluating a policy into docs/protocol.md's compliance report, remediating where allowed, and telling
//! the daemon which changes deserve an event.
//!
//! A rule is remediated only when three things agree: the rule asks (`remediate: true`), the
//! caller allows it (`allow_remediation`, e.g. off in maintenance or for a dry run), and the
//! check type has a fix. After a fix the rule is checked again; only a passing re-check counts
//! as `remediated`, with the before and after observations kept as evidence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::host::{HostPaths, rfc3339};

use super::checks::{CheckStatus, Ctx, Outcome};
use super::doc::{Policy, Rule, Severity};
use super::remediate::Remediator;
use super::runner::{CommandRunner, SystemRunner};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Pass,
    Fail,
    Error,
    Remediated,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Pass => "pass",
            ResultStatus::Fail => "fail",
            ResultStatus::Error => "error",
            ResultStatus::Remediated => "remediated",
        }
    }
}

/// One rule's line in the compliance report. `remediation` is present when a fix was attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleResult {
    pub id: String,
    pub status: ResultStatus,
    pub observed: Value,
    pub message: String,
    pub severity: Severity,
    pub clause: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<Value>,
}

/// docs/protocol.md §4 compliance document (retained on `P/t/{id}/compliance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComplianceReport {
    pub version: u64,
    pub seq: u64,
    pub ts: String,
    pub passed: usize,
    pub failed: usize,
    pub remediated: usize,
    #[serde(default)]
    pub errors: usize,
    pub results: Vec<RuleResult>,
}

impl ComplianceReport {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Performs a rule's remediation somewhere else than in this process (the privileged helper,
/// which re-verifies the signed policy the rule comes from). Returns the action taken.
pub trait RuleFixer: Send + Sync + std::fmt::Debug {
    fn fix(&self, rule: &Rule) -> Result<String, String>;
}

/// Runs scans. Holds what does not change between scans: the host root and the command runner.
#[derive(Debug, Clone)]
pub struct Engine {
    host: HostPaths,
    runner: Arc<dyn CommandRunner>,
    deadlines: Deadlines,
    fixer: Option<Arc<dyn RuleFixer>>,
}

/// How long one check and one whole scan may take. A check past its deadline is reported as
/// `error` (its thread is left to finish on its own and its result dropped); once the scan's
/// deadline has passed, the rules not yet evaluated are reported as `error` without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub check: Duration,
    pub scan: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            check: Duration::from_secs(30),
            scan: Duration::from_secs(300),
        }
    }
}

impl Engine {
    pub fn new(host: HostPaths) -> Self {
        Self {
            host,
            runner: Arc::new(SystemRunner),
            deadlines: Deadlines::default(),
            fixer: None,
        }
    }

    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Runs one check on its own thread and waits at most `limit` for it.
    fn timed(&self, check: &Arc<dyn super::checks::Check>, limit: Duration) -> Outcome {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let check = check.clone();
        let host = self.host.clone();
        let runner = self.runner.clone();
        let spawned = std::thread::Builder::new()
            .name("policy-check".into())
            .spawn(move || {
                let ctx = Ctx {
                    host: &host,
                    runner: runner.as_ref(),
                };
                let _ = tx.send(check.evaluate(&ctx));
            });
        if let Err(e) = spawned {
            return Outcome::error(format!("cannot start the check: {e}"));
        }
        match rx.recv_timeout(limit) {
            Ok(o) => o,
            Err(_) => Outcome::error(format!(
                "check did not finish within {} s; abandoned",
                limit.as_secs_f64()
            )),
        }
    }

    /// Sends remediations to `fixer` instead of the in-process [`Remediator`].
    pub fn with_fixer(mut self, fixer: Arc<dyn RuleFixer>) -> Self {
        self.fixer = Some(fixer);
        self
    }

    /// Replaces the command runner (`exec` checks, unit active state); tests inject a fake.
    pub fn with_runner(mut self, runner: Arc<dyn CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    pub fn host(&self) -> &HostPaths {
        &self.host
    }

    /// Evaluates every rule in order. Blocking (file reads, maybe commands): call it from a
    /// blocking task, one scan at a time, since remediation mutates the host.
    pub fn evaluate(
        &self,
        policy: &Policy,
        remediator: &dyn Remediator,
        allow_remediation: bool,
        seq: u64,
        ts: Timestamp,
    ) -> ComplianceReport {
        let ctx = Ctx {
            host: &self.host,
            runner: self.runner.as_ref(),
        };
        let mut results = Vec::with_capacity(policy.rules.len());
        let started = Instant::now();
        let scan_deadline = started + self.deadlines.scan;
        for rule in &policy.rules {
            let left = scan_deadline.saturating_duration_since(Instant::now());
            let before = if left.is_zero() {
                Outcome::error(format!(
                    "not evaluated: the scan's deadline of {} s had passed",
                    self.deadlines.scan.as_secs_f64()
                ))
            } else {
                self.timed(&rule.check, self.deadlines.check.min(left))
            };
            let mut status = match before.status {
                CheckStatus::Pass => ResultStatus::Pass,
                CheckStatus::Fail => ResultStatus::Fail,
                CheckStatus::Error => ResultStatus::Error,
            };
            let mut observed = before.observed.clone();
            let mut message = before.message.clone();
            let mut remediation = None;
            if status == ResultStatus::Fail && rule.remediate {
                if !rule.check.can_remediate() {
                    message.push_str(" (no automatic remediation for this check)");
                } else if !allow_remediation {
                    message.push_str(" (remediation not allowed now)");
                } else {
                    let action = match &self.fixer {
                        Some(f) => f.fix(rule),
                        None => rule
                            .check
                            .remediate(&ctx, remediator)
                            .map_err(|e| e.to_string()),
                    };
                    let after = self.timed(&rule.check, self.deadlines.check);
                    let (action_text, ok) = match &action {
                        Ok(a) => (a.clone(), true),
                        Err(e) => (e.clone(), false),
                    };
                    tracing::info!(rule = %rule.id, ok, action = %action_text, "policy remediation");
                    remediation = Some(json!({
                        "action": action_text,
                        "ok": ok,
                        "before": before.observed,
                        "after": after.observed,
                    }));
                    if ok && after.status == CheckStatus::Pass {
                        status = ResultStatus::Remediated;
                        observed = after.observed;
                        message = format!("remediated: {action_text}");
                    } else if ok {
                        observed = after.observed;
                        message = format!("remediation done but re-check fails: {}", after.message);
                    } else {
                        message = format!("{} (remediation failed: {action_text})", before.message);
                    }
                }
            }
            results.push(RuleResult {
                id: rule.id.clone(),
                status,
                observed,
                message,
                severity: rule.severity,
                clause: rule.clause.clone(),
                title: rule.title.clone(),
                remediation,
            });
        }
        let count = |s: ResultStatus| results.iter().filter(|r| r.status == s).count();
        ComplianceReport {
            version: policy.version,
            seq,
            ts: rfc3339(ts),
            passed: count(ResultStatus::Pass),
            failed: count(ResultStatus::Fail),
            remediated: count(ResultStatus::Remediated),
            errors: count(ResultStatus::Error),
            results,
        }
    }
}

/// One scan with the system command runner; see [`Engine::evaluate`].
pub fn evaluate(
    policy: &Policy,
    host: &HostPaths,
    remediator: &dyn Remediator,
    allow_remediation: bool,
    seq: u64,
    ts: Timestamp,
) -> ComplianceReport {
    Engine::new(host.clone()).evaluate(policy, remediator, allow_remediation, seq, ts)
}

/// A change between two reports that deserves an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// `policy.violation`: the rule fails now and did not fail before.
    Violation {
        id: String,
        severity: Severity,
        title: String,
        clause: String,
        observed: Value,
        message: String,
    },
    /// `policy.remediated`: the agent fixed the rule in this scan.
    Remediated {
        id: String,
        severity: Severity,
        title: String,
        evidence: Value,
    },
}

impl Transition {
    pub fn code(&self) -> &'static str {
        match self {
            Transition::Violation { .. } => "policy.violation",
            Transition::Remediated { .. } => "policy.remediated",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Transition::Violation { severity, .. } => *severity,
            // The host is compliant again; the event is a record, not an alarm.
            Transition::Remediated { .. } => Severity::Info,
        }
    }

    /// `details` of the event.
    pub fn details(&self, policy_version: u64) -> Value {
        match self {
            Transition::Violation {
                id,
                severity,
                title,
                clause,
                observed,
                ..
            } => json!({"rule": id, "rule_severity": severity, "title": title, "clause": clause,
                        "observed": observed, "policy_version": policy_version}),
            Transition::Remediated {
                id,
                severity,
                title,
                evidence,
            } => json!({"rule": id, "rule_severity": severity, "title": title,
                        "before": evidence.get("before"), "after": evidence.get("after"),
                        "action": evidence.get("action"), "policy_version": policy_version}),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Transition::Violation { id, message, .. } => format!("{id}: {message}"),
            Transition::Remediated { id, evidence, .. } => format!(
                "{id}: {}",
                evidence
                    .get("action")
                    .and_then(Value::as_str)
                    .unwrap_or("remediated")
            ),
        }
    }
}

/// Lists what changed from `prev` to `new`. A rule that fails now raises a violation unless it
/// already failed (or could not be evaluated) in the previous report, so a standing failure is
/// announced once, and a host that starts out non-compliant (no previous report, or a new rule)
/// is announced too. Every remediation in `new` is listed.
pub fn transitions(prev: Option<&ComplianceReport>, new: &ComplianceReport) -> Vec<Transition> {
    let mut out = Vec::new();
    for r in &new.results {
        let before = prev.and_then(|p| p.results.iter().find(|x| x.id == r.id));
        match r.status {
            ResultStatus::Fail => {
                let known = before
                    .is_some_and(|b| matches!(b.status, ResultStatus::Fail | ResultStatus::Error));
                if !known {
                    out.push(Transition::Violation {
                        id: r.id.clone(),
                        severity: r.severity,
                        title: r.title.clone(),
                        clause: r.clause.clone(),
                        observed: r.observed.clone(),
                        message: r.message.clone(),
                    });
                }
            }
            ResultStatus::Remediated => out.push(Transition::Remediated {
                id: r.id.clone(),
                severity: r.severity,
                title: r.title.clone(),
                evidence: r.remediation.clone().unwrap_or(Value::Null),
            }),
            ResultStatus::Pass | ResultStatus::Error => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::checks::testutil::{FakeRunner, Fx};
    use super::super::doc::parse;
    use super::super::remediate::FsRemediator;
    use super::*;

    fn policy() -> Policy {
        parse(
            br#"{"kind":"policy","version":7,"target":"all","issued_at":"2026-01-01T00:00:00Z","rules":[
            {"id":"sysrq","title":"SysRq off","severity":"major","clause":"c1","remediate":true,
             "check":{"type":"sysctl","key":"kernel.sysrq","value":"0"}},
            {"id":"preload","title":"no preload","severity":"critical","clause":"c2","remediate":true,
             "check":{"type":"file_absent","path":"/etc/ld.so.preload"}},
            {"id":"fwd","title":"no forwarding","severity":"minor","clause":"c3",
             "check":{"type":"sysctl","key":"net.ipv4.ip_forward","value":"0"}},
            {"id":"gone","title":"missing","severity":"info","clause":"c4",
             "check":{"type":"sysctl","key":"kernel.nosuch","value":"0"}}]}"#,
        )
        .unwrap()
    }

    fn fx() -> Fx {
        Fx::new(&[
            ("/proc/sys/kernel/sysrq", "438\n"),
            ("/proc/sys/net/ipv4/ip_forward", "1\n"),
            ("/etc/ld.so.preload", "/lib/evil.so\n"),
        ])
    }

    fn ts() -> Timestamp {
        "2026-03-01T08:00:00.5Z".parse().unwrap()
    }

    #[test]
    fn report_counts_statuses_and_remediates_only_where_asked_and_allowed() {
        let fx = fx();
        let engine = Engine::new(fx.host.clone()).with_runner(Arc::new(FakeRunner::default()));
        let rem = FsRemediator::new(fx.host.clone());
        let dry = engine.evaluate(&policy(), &rem, false, 1, ts());
        assert_eq!(
            (dry.passed, dry.failed, dry.remediated, dry.errors),
            (0, 3, 0, 1)
        );
        assert_eq!(
            fx.read("/proc/sys/kernel/sysrq"),
            "438\n",
            "dry run changes nothing"
        );
        assert!(dry.results[0].message.contains("not allowed"));
        let rep = engine.evaluate(&policy(), &rem, true, 2, ts());
        assert_eq!(
            (rep.passed, rep.failed, rep.remediated, rep.errors),
            (0, 2, 1, 1)
        );
        let sysrq = &rep.results[0];
        assert_eq!(sysrq.status, ResultStatus::Remediated);
        let ev = sysrq.remediation.as_ref().unwrap();
        assert_eq!(
            (ev["before"].clone(), ev["after"].clone()),
            (json!("438"), json!("0"))
        );
        assert!(rep.results[1].message.contains("no automatic remediation"));
        assert_eq!(
            rep.results[2].status,
            ResultStatus::Fail,
            "fwd not marked remediate"
        );
        assert_eq!(fx.read("/proc/sys/net/ipv4/ip_forward"), "1\n");
        let j = rep.to_json();
        assert_eq!(j["ts"], "2026-03-01T08:00:00Z");
        assert_eq!(j["version"], 7);
        assert_eq!(j["results"][0]["severity"], "major");
        assert_eq!(j["results"][0]["clause"], "c1");
        let back: ComplianceReport = serde_json::from_value(j).unwrap();
        assert_eq!(back, rep);
    }

    #[test]
    fn transitions_announce_new_failures_once_and_every_remediation() {
        let fx = fx();
        let engine = Engine::new(fx.host.clone()).with_runner(Arc::new(FakeRunner::default()));
        let rem = FsRemediator::new(fx.host.clone());
        let first = engine.evaluate(&policy(), &rem, false, 1, ts());
        let t = transitions(None, &first);
        let ids: Vec<_> = t.iter().map(|t| (t.code(), t.severity())).collect();
        assert_eq!(
            ids,
            [
                ("policy.violation", Severity::Major),
                ("policy.violation", Severity::Critical),
                ("policy.violation", Severity::Minor)
            ]
        );
        let second = engine.evaluate(&policy(), &rem, true, 2, ts());
        let t = transitions(Some(&first), &second);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].code(), "policy.remediated");
        assert_eq!(t[0].details(7)["before"], "438");
        // back to pass, then fail again: announced again
        fx.write("/proc/sys/kernel/sysrq", "1\n");
        let third = engine.evaluate(&policy(), &rem, false, 3, ts());
        let t = transitions(Some(&second), &third);
        assert_eq!(t.len(), 1);
        assert!(matches!(&t[0], Transition::Violation { id, .. } if id == "sysrq"));
        assert!(t[0].message().starts_with("sysrq: "));
    }
}
