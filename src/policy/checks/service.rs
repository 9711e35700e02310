//! `service`: a systemd unit's state. `masked` and `enabled` are read from the file system under
//! the root, the way systemctl decides them: `/etc/systemd/system/<unit>` (or `/run/systemd/system`)
//! linking to `/dev/null` is masked; a link in `/etc/systemd/system/*.{wants,requires}/` is
//! enabled. `active` needs the running manager, so it asks `systemctl is-active <unit>` through
//! the injected runner (on a fixture root, tests answer for it).
//!
//! Only masking is remediated (ctrl-alt-del.target on a public kiosk); systemd picks it up at its
//! next reload or boot. Disabling or stopping units is reported, not done.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};
use crate::policy::remediate::{RemediateError, Remediator, valid_unit_name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    unit: String,
    #[serde(default)]
    masked: Option<bool>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    active: Option<bool>,
}

#[derive(Debug)]
pub struct Service {
    unit: String,
    masked: Option<bool>,
    enabled: Option<bool>,
    active: Option<bool>,
}

impl Service {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        if !valid_unit_name(&s.unit) {
            return Err(format!("unit {:?} is not a unit name", s.unit));
        }
        if s.masked.is_none() && s.enabled.is_none() && s.active.is_none() {
            return Err("give at least one of masked, enabled, active".into());
        }
        Ok(Self {
            unit: s.unit,
            masked: s.masked,
            enabled: s.enabled,
            active: s.active,
        })
    }

    fn is_masked(&self, ctx: &Ctx<'_>) -> bool {
        ["/etc/systemd/system", "/run/systemd/system"]
            .iter()
            .any(|d| {
                std::fs::read_link(ctx.host.resolve(format!("{d}/{}", self.unit)))
                    .is_ok_and(|t| t == std::path::Path::new("/dev/null"))
            })
    }

    fn enabled_by(&self, ctx: &Ctx<'_>) -> Vec<String> {
        let dir = ctx.host.resolve("/etc/systemd/system");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut by: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n.ends_with(".wants") || n.ends_with(".requires"))
            .filter(|n| std::fs::symlink_metadata(dir.join(n).join(&self.unit)).is_ok())
            .collect();
        by.sort();
        by
    }
}

impl Check for Service {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let masked = self.is_masked(ctx);
        let enabled_by = self.enabled_by(ctx);
        let enabled = !enabled_by.is_empty();
        let mut observed = json!({"masked": masked, "enabled": enabled, "wanted_by": enabled_by});
        let mut problems = Vec::new();
        if self.masked.is_some_and(|m| m != masked) {
            problems.push(if masked { "masked" } else { "not masked" }.to_string());
        }
        if self.enabled.is_some_and(|e| e != enabled) {
            problems.push(if enabled { "enabled" } else { "not enabled" }.to_string());
        }
        if let Some(want) = self.active {
            let argv = ["systemctl", "is-active", self.unit.as_str()].map(String::from);
            match ctx.runner.run(&argv, std::time::Duration::from_secs(10)) {
                Ok(o) => {
                    let state = o.stdout.lines().next().unwrap_or("").trim().to_string();
                    let active = matches!(state.as_str(), "active" | "reloading");
                    observed["active"] = json!(state);
                    if active != want {
                        problems.push(format!("active state {state:?}"));
                    }
                }
                Err(e) => {
                    return Outcome::error(format!("cannot ask systemd about {}: {e}", self.unit));
                }
            }
        }
        if problems.is_empty() {
            Outcome::pass(observed, format!("{} is as required", self.unit))
        } else {
            Outcome::fail(observed, format!("{}: {}", self.unit, problems.join(", ")))
        }
    }

    fn can_remediate(&self) -> bool {
        self.masked == Some(true)
    }

    fn remediate(&self, _ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        if self.masked != Some(true) {
            return Err(RemediateError::Unsupported);
        }
        rem.mask_unit(&self.unit)?;
        Ok(format!(
            "masked {} (effective at the next systemd reload or boot)",
            self.unit
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;
    use std::os::unix::fs::symlink;

    #[test]
    fn masked_enabled_and_active_are_read_and_mask_is_remediated() {
        let fx = Fx::new(&[("/etc/systemd/system/multi-user.target.wants/.keep", "")]);
        symlink(
            "/lib/systemd/system/ssh.service",
            fx.host
                .resolve("/etc/systemd/system/multi-user.target.wants/ssh.service"),
        )
        .unwrap();
        let r = FakeRunner::default()
            .answer(
                &["systemctl", "is-active", "auditd.service"],
                3,
                "inactive\n",
            )
            .answer(&["systemctl", "is-active", "ssh.service"], 0, "active\n");
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let cad = Service::build(json!({"unit":"ctrl-alt-del.target","masked":true})).unwrap();
        assert_eq!(cad.evaluate(&ctx).status, CheckStatus::Fail);
        cad.remediate(&ctx, &FsRemediator::new(fx.host.clone()))
            .unwrap();
        assert_eq!(cad.evaluate(&ctx).status, CheckStatus::Pass);
        let ssh = Service::build(json!({"unit":"ssh.service","enabled":false})).unwrap();
        let o = ssh.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["wanted_by"], json!(["multi-user.target.wants"]));
        assert!(!ssh.can_remediate());
        let audit = Service::build(json!({"unit":"auditd.service","active":true})).unwrap();
        let o = audit.evaluate(&ctx);
        assert_eq!(
            (o.status, o.observed["active"].clone()),
            (CheckStatus::Fail, json!("inactive"))
        );
        let unknown = Service::build(json!({"unit":"x.service","active":true})).unwrap();
        assert_eq!(unknown.evaluate(&ctx).status, CheckStatus::Error);
        assert!(
            matches!(Service::build(json!({"unit":"../x.service","masked":true})), Err(ref e) if e.contains("is not a unit name"))
        );
        assert!(
            matches!(Service::build(json!({"unit":"x.service"})), Err(ref e) if e.contains("give at least one of masked, enabled, active"))
        );
    }
}
