//! The `policy` document as it arrives (already verified by `trust`): parsed and validated whole.
//!
//! A policy is all-or-nothing: if any rule is malformed (unknown check type, bad regex, bad
//! octal mode, unknown field) the whole document is refused and the one in force stays, because
//! a half-applied security policy is worse than a stale one. Errors name the rule id so the
//! platform operator can find the typo.

use std::collections::HashSet;

use serde::Deserialize;

use super::checks::{self, Check};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy document is not valid JSON or lacks a required field: {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("policy document kind is {0:?}, expected \"policy\"")]
    Kind(String),
    #[error("rule #{index}: invalid id {id:?} (1-64 chars of A-Z a-z 0-9 . _ -)")]
    RuleId { index: usize, id: String },
    #[error("rule {0}: duplicate id")]
    DuplicateId(String),
    #[error("rule {id}: {message}")]
    Rule { id: String, message: String },
}

/// Severity of a rule is the event vocabulary (docs/protocol.md §3), so a violation event carries it
/// unchanged; the baseline's High/Medium/Low are accepted as aliases of major/minor/info.
pub use crate::events::Severity;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    kind: String,
    version: u64,
    target: String,
    issued_at: String,
    #[serde(default)]
    expires_at: Option<String>,
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    id: String,
    #[serde(default)]
    title: String,
    severity: serde_json::Value,
    #[serde(default)]
    clause: String,
    check: serde_json::Value,
    #[serde(default)]
    remediate: bool,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// One validated rule with its check compiled (regexes built, modes parsed).
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub clause: String,
    pub remediate: bool,
    pub check_type: String,
    /// Shared so a check can run on its own thread under a deadline.
    pub check: std::sync::Arc<dyn Check>,
}

/// A validated policy, ready to evaluate as many times as the schedule asks.
#[derive(Debug, Clone)]
pub struct Policy {
    pub version: u64,
    pub target: String,
    pub issued_at: String,
    pub expires_at: Option<String>,
    pub rules: Vec<Rule>,
}

fn valid_rule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses and validates the decoded payload bytes of a `policy` document.
pub fn parse(bytes: &[u8]) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = serde_json::from_slice(bytes).map_err(PolicyError::Syntax)?;
    if raw.kind != "policy" {
        return Err(PolicyError::Kind(raw.kind));
    }
    let mut seen = HashSet::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (index, r) in raw.rules.into_iter().enumerate() {
        if !valid_rule_id(&r.id) {
            return Err(PolicyError::RuleId { index, id: r.id });
        }
        if !seen.insert(r.id.clone()) {
            return Err(PolicyError::DuplicateId(r.id));
        }
        let rule_err = |message: String| PolicyError::Rule {
            id: r.id.clone(),
            message,
        };
        if let Some(k) = r.extra.keys().next() {
            return Err(rule_err(format!("unknown field {k:?}")));
        }
        let severity: Severity = serde_json::from_value(r.severity.clone())
            .map_err(|e| rule_err(format!("severity: {e}")))?;
        let check_type = r
            .check
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| rule_err("check.type is missing or not a string".into()))?
            .to_string();
        let check = checks::build(&check_type, r.check.clone())
            .map_err(|m| rule_err(format!("check {check_type}: {m}")))?;
        rules.push(Rule {
            id: r.id,
            title: r.title,
            severity,
            clause: r.clause,
            remediate: r.remediate,
            check_type,
            check: check.into(),
        });
    }
    Ok(Policy {
        version: raw.version,
        target: raw.target,
        issued_at: raw.issued_at,
        expires_at: raw.expires_at,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(rules: &str) -> String {
        format!(
            r#"{{"kind":"policy","version":3,"target":"all","issued_at":"2026-01-01T00:00:00Z","rules":[{rules}]}}"#
        )
    }

    const OK_RULE: &str = r#"{"id":"ssh-root","title":"t","severity":"high","clause":"c","check":{"type":"file_contains","path":"/etc/x","pattern":"^a","expect":"absent"},"remediate":true}"#;

    #[test]
    fn parses_a_valid_policy_and_maps_severity_aliases() {
        let p = parse(doc(OK_RULE).as_bytes()).unwrap();
        assert_eq!(p.version, 3);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].severity, Severity::Major);
        assert!(p.rules[0].remediate);
        assert_eq!(p.rules[0].check_type, "file_contains");
    }

    #[test]
    fn unknown_check_type_refuses_whole_policy_naming_the_rule() {
        let bad = r#"{"id":"r2","severity":"minor","check":{"type":"telepathy"}}"#;
        let err = parse(doc(&format!("{OK_RULE},{bad}")).as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("r2") && msg.contains("telepathy"), "{msg}");
    }

    #[test]
    fn malformed_regex_is_refused_naming_the_rule() {
        let bad = r#"{"id":"bad-re","severity":"minor","check":{"type":"file_contains","path":"/etc/x","pattern":"([a-","expect":"present"}}"#;
        let err = parse(doc(bad).as_bytes()).unwrap_err();
        assert!(
            matches!(err, PolicyError::Rule { ref id, .. } if id == "bad-re"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_bad_ids_and_duplicates_are_refused() {
        let extra = r#"{"id":"a","severity":"minor","check":{"type":"file_absent","path":"/x","colour":"red"}}"#;
        assert!(matches!(
            parse(doc(extra).as_bytes()),
            Err(PolicyError::Rule { .. })
        ));
        let extra_rule = r#"{"id":"a","severity":"minor","check":{"type":"file_absent","path":"/x"},"remedy":true}"#;
        assert!(matches!(
            parse(doc(extra_rule).as_bytes()),
            Err(PolicyError::Rule { .. })
        ));
        let bad_id =
            r#"{"id":"a b","severity":"minor","check":{"type":"file_absent","path":"/x"}}"#;
        assert!(matches!(
            parse(doc(bad_id).as_bytes()),
            Err(PolicyError::RuleId { .. })
        ));
        let dup = r#"{"id":"a","severity":"minor","check":{"type":"file_absent","path":"/x"}}"#;
        assert!(matches!(
            parse(doc(&format!("{dup},{dup}")).as_bytes()),
            Err(PolicyError::DuplicateId(_))
        ));
        let bad_sev =
            r#"{"id":"a","severity":"urgent","check":{"type":"file_absent","path":"/x"}}"#;
        assert!(matches!(
            parse(doc(bad_sev).as_bytes()),
            Err(PolicyError::Rule { .. })
        ));
    }

    #[test]
    fn wrong_kind_and_garbage_are_refused() {
        assert!(matches!(
            parse(b"\xff\x00garbage"),
            Err(PolicyError::Syntax(_))
        ));
        let other = doc(OK_RULE).replace("\"kind\":\"policy\"", "\"kind\":\"schedule\"");
        assert!(matches!(parse(other.as_bytes()), Err(PolicyError::Kind(_))));
    }
}
