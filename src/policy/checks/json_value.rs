//! `json_value`: the value at a JSON pointer in a JSON file equals the one required (browser
//! managed policies: `/etc/chromium/policies/managed/kiosk.json` `/DeveloperToolsAvailability`).
//!
//! Remediation sets the value, creating the file and intermediate objects if needed, and keeps
//! every other key; a file that is not a JSON object is left alone rather than replaced. Point
//! `path` at the agent's own policy file so vendor files stay untouched.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};
use crate::policy::remediate::{RemediateError, Remediator};
use crate::policy::text;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
    pointer: String,
    value: Value,
}

#[derive(Debug)]
pub struct JsonValue {
    path: String,
    pointer: String,
    tokens: Vec<String>,
    value: Value,
}

impl JsonValue {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("path", &s.path)?;
        let Some(rest) = s.pointer.strip_prefix('/') else {
            return Err(format!("pointer {:?} must start with /", s.pointer));
        };
        let tokens = rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Ok(Self {
            path: s.path,
            pointer: s.pointer,
            tokens,
            value: s.value,
        })
    }

    fn load(&self, ctx: &Ctx<'_>) -> std::io::Result<Option<Value>> {
        match text::read_host(ctx.host, &self.path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Check for JsonValue {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let doc = match self.load(ctx) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Outcome::fail(
                    json!({"file": "absent"}),
                    format!("{} does not exist", self.path),
                );
            }
            Err(e) => return Outcome::error(format!("cannot read {}: {e}", self.path)),
        };
        let got = doc.pointer(&self.pointer).cloned().unwrap_or(Value::Null);
        Outcome::verdict(
            got == self.value,
            got.clone(),
            format!(
                "{}{} is {got}; expected {}",
                self.path, self.pointer, self.value
            ),
        )
    }

    fn can_remediate(&self) -> bool {
        true
    }

    fn remediate(&self, ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        let refused = |message: String| RemediateError::Refused {
            path: self.path.clone(),
            message,
        };
        let mut doc = self
            .load(ctx)
            .map_err(|e| refused(format!("not valid JSON ({e})")))?
            .unwrap_or_else(|| Value::Object(Map::new()));
        let mut cur = &mut doc;
        let (last, parents) = self
            .tokens
            .split_last()
            .ok_or_else(|| refused("empty pointer".into()))?;
        for t in parents {
            let Value::Object(m) = cur else {
                return Err(refused(format!("{t:?} is inside a non-object")));
            };
            cur = m
                .entry(t.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        let Value::Object(m) = cur else {
            return Err(refused("the parent of the pointer is not an object".into()));
        };
        m.insert(last.clone(), self.value.clone());
        let mut body = serde_json::to_vec_pretty(&doc).map_err(|e| refused(e.to_string()))?;
        body.push(b'\n');
        rem.write_file(&self.path, &body, None)?;
        Ok(format!(
            "set {}{} to {}",
            self.path, self.pointer, self.value
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;

    #[test]
    fn pointer_compare_and_remediation_keeps_other_keys() {
        let fx = Fx::new(&[(
            "/etc/chromium/policies/managed/kiosk.json",
            "{\"URLBlocklist\":[\"*\"],\"DeveloperToolsAvailability\":0}",
        )]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let rem = FsRemediator::new(fx.host.clone());
        let p = "/etc/chromium/policies/managed/kiosk.json";
        let dev =
            JsonValue::build(json!({"path":p,"pointer":"/DeveloperToolsAvailability","value":2}))
                .unwrap();
        let o = dev.evaluate(&ctx);
        assert_eq!(
            (o.status, o.observed.clone()),
            (CheckStatus::Fail, json!(0))
        );
        dev.remediate(&ctx, &rem).unwrap();
        assert_eq!(dev.evaluate(&ctx).status, CheckStatus::Pass);
        let doc: Value = serde_json::from_str(&fx.read(p)).unwrap();
        assert_eq!(doc["URLBlocklist"], json!(["*"]));
        let nested =
            JsonValue::build(json!({"path":"/etc/new.json","pointer":"/a/b~1c","value":true}))
                .unwrap();
        assert_eq!(nested.evaluate(&ctx).status, CheckStatus::Fail);
        nested.remediate(&ctx, &rem).unwrap();
        assert_eq!(nested.evaluate(&ctx).status, CheckStatus::Pass);
        fx.write("/etc/bad.json", "{not json");
        let bad =
            JsonValue::build(json!({"path":"/etc/bad.json","pointer":"/a","value":1})).unwrap();
        assert_eq!(bad.evaluate(&ctx).status, CheckStatus::Error);
        assert!(
            matches!(bad.remediate(&ctx, &rem), Err(RemediateError::Refused { ref message, .. }) if message.contains("not valid JSON"))
        );
        assert_eq!(fx.read("/etc/bad.json"), "{not json");
        assert!(
            matches!(JsonValue::build(json!({"path":"/x","pointer":"a","value":1})), Err(ref e) if e.contains("must start with /"))
        );
    }
}
