//! `file_mode`: no permission bit beyond `max_mode`, and the owner (and group, if given) match.
//!
//! Remediation clears the extra bits (never adds any) and chowns; both go through the
//! remediator, which refuses a path whose symlinks lead out of the root.

use std::os::unix::fs::MetadataExt;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};
use crate::policy::remediate::{RemediateError, Remediator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
    max_mode: String,
    #[serde(default)]
    owner_uid: Option<u32>,
    #[serde(default)]
    owner_gid: Option<u32>,
}

#[derive(Debug)]
pub struct FileMode {
    path: String,
    max_mode: u32,
    owner_uid: Option<u32>,
    owner_gid: Option<u32>,
}

pub(crate) fn parse_octal(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    let m = u32::from_str_radix(t, 8).map_err(|_| format!("max_mode {s:?} is not octal"))?;
    if m > 0o7777 {
        return Err(format!("max_mode {s:?} is out of range"));
    }
    Ok(m)
}

impl FileMode {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("path", &s.path)?;
        Ok(Self {
            max_mode: parse_octal(&s.max_mode)?,
            path: s.path,
            owner_uid: s.owner_uid,
            owner_gid: s.owner_gid,
        })
    }

    fn stat(&self, ctx: &Ctx<'_>) -> std::io::Result<(u32, u32, u32)> {
        let m = std::fs::metadata(crate::policy::text::confined(ctx.host, &self.path)?)?;
        Ok((m.mode() & 0o7777, m.uid(), m.gid()))
    }
}

impl Check for FileMode {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let (mode, uid, gid) = match self.stat(ctx) {
            Ok(s) => s,
            Err(e) => return Outcome::error(format!("cannot stat {}: {e}", self.path)),
        };
        let extra = mode & !self.max_mode;
        let uid_ok = self.owner_uid.is_none_or(|u| u == uid);
        let gid_ok = self.owner_gid.is_none_or(|g| g == gid);
        let mut problems = Vec::new();
        if extra != 0 {
            problems.push(format!("mode {mode:04o} exceeds {:04o}", self.max_mode));
        }
        if !uid_ok {
            problems.push(format!("owner uid {uid}, expected {:?}", self.owner_uid));
        }
        if !gid_ok {
            problems.push(format!("group gid {gid}, expected {:?}", self.owner_gid));
        }
        let observed = json!({"mode": format!("{mode:04o}"), "uid": uid, "gid": gid});
        if problems.is_empty() {
            Outcome::pass(observed, format!("{} is {mode:04o} {uid}:{gid}", self.path))
        } else {
            Outcome::fail(observed, format!("{}: {}", self.path, problems.join("; ")))
        }
    }

    fn can_remediate(&self) -> bool {
        true
    }

    fn remediate(&self, ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        let (mode, uid, gid) = self.stat(ctx).map_err(|source| RemediateError::Io {
            op: "stat",
            path: self.path.clone(),
            source,
        })?;
        let mut actions = Vec::new();
        // Ownership first: chown clears setuid bits, so the mode is set last.
        if let Some(u) = self.owner_uid.filter(|u| *u != uid) {
            rem.set_owner(&self.path, u)?;
            actions.push(format!("chown {u}"));
        }
        if let Some(g) = self.owner_gid.filter(|g| *g != gid) {
            return Err(RemediateError::Refused {
                path: self.path.clone(),
                message: format!("group {g} differs; group changes are reported, not made"),
            });
        }
        let new_mode = mode & self.max_mode;
        if new_mode != mode {
            rem.set_mode(&self.path, new_mode)?;
            actions.push(format!("chmod {mode:04o} -> {new_mode:04o}"));
        }
        Ok(format!("{}: {}", self.path, actions.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn extra_bits_fail_and_are_cleared() {
        let fx = Fx::new(&[("/etc/shadow", "root:*:1::::::\n")]);
        let p = fx.host.resolve("/etc/shadow");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let me = nix::unistd::getuid().as_raw();
        let c = FileMode::build(json!({"path":"/etc/shadow","max_mode":"0640","owner_uid":me}))
            .unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["mode"], "0644");
        c.remediate(&ctx, &FsRemediator::new(fx.host.clone()))
            .unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        let other =
            FileMode::build(json!({"path":"/etc/shadow","max_mode":"0640","owner_uid":me + 1}))
                .unwrap();
        assert_eq!(other.evaluate(&ctx).status, CheckStatus::Fail);
    }

    #[test]
    fn bad_modes_are_refused_and_missing_is_error() {
        assert!(
            matches!(FileMode::build(json!({"path":"/x","max_mode":"0899"})), Err(ref e) if e.contains("is not octal"))
        );
        assert!(
            matches!(FileMode::build(json!({"path":"/x","max_mode":"77777"})), Err(ref e) if e.contains("is out of range"))
        );
        assert_eq!(parse_octal("0o600").unwrap(), 0o600);
        let fx = Fx::new(&[]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = FileMode::build(json!({"path":"/etc/none","max_mode":"600"})).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Error);
    }
}
