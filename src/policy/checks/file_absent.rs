//! `file_absent`: a path must not exist (e.g. `/etc/ld.so.preload`, which injects a library into
//! every process). Not remediated: deleting a file the agent did not write could break the host
//! or destroy evidence; it is reported for a person to look at.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
}

#[derive(Debug)]
pub struct FileAbsent {
    path: String,
}

impl FileAbsent {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("path", &s.path)?;
        Ok(Self { path: s.path })
    }
}

impl Check for FileAbsent {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        // symlink_metadata: a dangling link is still something planted there.
        match std::fs::symlink_metadata(ctx.host.resolve(&self.path)) {
            Ok(m) => {
                let kind = if m.file_type().is_symlink() {
                    "symlink"
                } else if m.is_dir() {
                    "directory"
                } else {
                    "file"
                };
                Outcome::fail(
                    json!({"present": true, "kind": kind, "size": m.len()}),
                    format!("{} exists ({kind}, {} bytes)", self.path, m.len()),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::pass(
                json!({"present": false}),
                format!("{} does not exist", self.path),
            ),
            Err(e) => Outcome::error(format!("cannot inspect {}: {e}", self.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    #[test]
    fn present_file_or_dangling_link_fails() {
        let fx = Fx::new(&[]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = FileAbsent::build(json!({"path":"/etc/ld.so.preload"})).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        std::fs::create_dir_all(fx.host.resolve("/etc")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x.so", fx.host.resolve("/etc/ld.so.preload"))
            .unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["kind"], "symlink");
        assert!(
            matches!(FileAbsent::build(json!({"path":"relative"})), Err(ref e) if e.contains("path must be an absolute path"))
        );
    }
}
