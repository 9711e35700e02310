//! `file_contains`: a regex matches some line (`present`) or no line (`absent`) of a file.
//!
//! Only the `absent` form can be remediated, by commenting the matching lines out: that removes
//! a setting without deleting what an administrator wrote, and is reversible by hand.

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};
use crate::policy::remediate::{RemediateError, Remediator};
use crate::policy::text;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
    pattern: String,
    expect: String,
}

#[derive(Debug)]
pub struct FileContains {
    path: String,
    re: Regex,
    present: bool,
}

impl FileContains {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("path", &s.path)?;
        let re = Regex::new(&s.pattern).map_err(|e| format!("pattern: {e}"))?;
        let present = match s.expect.as_str() {
            "present" => true,
            "absent" => false,
            o => return Err(format!("expect must be present or absent, got {o:?}")),
        };
        Ok(Self {
            path: s.path,
            re,
            present,
        })
    }

    fn matching(&self, content: &str) -> Vec<(usize, String)> {
        content
            .lines()
            .enumerate()
            .filter(|(_, l)| self.re.is_match(l))
            .map(|(i, l)| (i + 1, l.to_string()))
            .collect()
    }
}

impl Check for FileContains {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let content = match text::read_host(ctx.host, &self.path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Outcome::verdict(
                    !self.present,
                    json!({"file": "absent"}),
                    format!("{} does not exist", self.path),
                );
            }
            Err(e) => return Outcome::error(format!("cannot read {}: {e}", self.path)),
        };
        let hits = self.matching(&content);
        let observed = json!({
            "matches": hits.iter().take(10).map(|(n, l)| format!("{n}: {l}")).collect::<Vec<_>>(),
            "count": hits.len(),
        });
        let ok = hits.is_empty() != self.present;
        let msg = match (self.present, hits.len()) {
            (true, 0) => format!("no line of {} matches {}", self.path, self.re),
            (true, n) => format!("{n} line(s) of {} match", self.path),
            (false, 0) => format!("no line of {} matches {}", self.path, self.re),
            (false, n) => format!("{n} line(s) of {} match {}", self.path, self.re),
        };
        Outcome::verdict(ok, observed, msg)
    }

    fn can_remediate(&self) -> bool {
        !self.present
    }

    fn remediate(&self, ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        if self.present {
            return Err(RemediateError::Unsupported);
        }
        let content = text::read_for_rewrite(&ctx.host.resolve(&self.path))
            .map_err(|source| RemediateError::Io {
                op: "read for rewrite",
                path: self.path.clone(),
                source,
            })?
            .unwrap_or_default();
        let mut n = 0;
        let mut out: Vec<String> = Vec::new();
        for l in content.lines() {
            if self.re.is_match(l) {
                n += 1;
                out.push(format!("# disabled by kiosk-agent: {l}"));
            } else {
                out.push(l.to_string());
            }
        }
        if n == 0 {
            return Ok("nothing to change".into());
        }
        let mut body = out.join("\n");
        body.push('\n');
        rem.write_file(&self.path, body.as_bytes(), None)?;
        Ok(format!("commented out {n} line(s) of {}", self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;

    #[test]
    fn present_and_absent_and_comment_out() {
        let fx = Fx::new(&[(
            "/etc/j.conf",
            "[Journal]\nMaxRetentionSec=1week\nStorage=auto\n",
        )]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let absent = FileContains::build(
            json!({"path":"/etc/j.conf","pattern":"^\\s*MaxRetentionSec\\s*=","expect":"absent"}),
        )
        .unwrap();
        let o = absent.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["matches"][0], "2: MaxRetentionSec=1week");
        let present = FileContains::build(
            json!({"path":"/etc/j.conf","pattern":"^Storage=","expect":"present"}),
        )
        .unwrap();
        assert_eq!(present.evaluate(&ctx).status, CheckStatus::Pass);
        assert!(!present.can_remediate());
        absent
            .remediate(&ctx, &FsRemediator::new(fx.host.clone()))
            .unwrap();
        assert_eq!(
            fx.read("/etc/j.conf"),
            "[Journal]\n# disabled by kiosk-agent: MaxRetentionSec=1week\nStorage=auto\n"
        );
        assert_eq!(absent.evaluate(&ctx).status, CheckStatus::Pass);
    }

    #[test]
    fn missing_file_and_bad_specs() {
        let fx = Fx::new(&[]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let absent =
            FileContains::build(json!({"path":"/etc/none","pattern":"x","expect":"absent"}))
                .unwrap();
        assert_eq!(absent.evaluate(&ctx).status, CheckStatus::Pass);
        let present =
            FileContains::build(json!({"path":"/etc/none","pattern":"x","expect":"present"}))
                .unwrap();
        assert_eq!(present.evaluate(&ctx).status, CheckStatus::Fail);
        assert!(
            matches!(FileContains::build(json!({"path":"/x","pattern":"(","expect":"absent"})), Err(ref e) if e.contains("pattern: regex parse error"))
        );
        assert!(
            matches!(FileContains::build(json!({"path":"/x","pattern":"x","expect":"maybe"})), Err(ref e) if e.contains("expect must be present or absent"))
        );
    }
}
