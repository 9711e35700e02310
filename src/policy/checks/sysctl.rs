//! `sysctl`: a kernel parameter's live value (`/proc/sys/<key as path>`) satisfies a comparison.
//!
//! Remediation persists the value in the agent's own `/etc/sysctl.d/90-kiosk-agent.conf` first
//! and then writes it live; if the live write fails the drop-in is put back as it was, so a
//! half-done fix never leaves a boot-time setting nobody saw take effect.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};
use crate::policy::remediate::{RemediateError, Remediator, valid_sysctl_key};
use crate::policy::text::{self, Op, Separator};

/// The agent's own sysctl drop-in (docs/protocol.md §4).
pub const DROPIN: &str = "/etc/sysctl.d/90-kiosk-agent.conf";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    key: String,
    value: Value,
    #[serde(default)]
    op: Option<String>,
}

#[derive(Debug)]
pub struct Sysctl {
    key: String,
    op: Op,
}

impl Sysctl {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        if !valid_sysctl_key(&s.key) {
            return Err(format!("key {:?} is not a dotted sysctl name", s.key));
        }
        let op = Op::from_json(s.op.as_deref(), &s.value)?;
        if op.target().contains('\n') {
            return Err("value must not contain a newline".into());
        }
        Ok(Self { key: s.key, op })
    }

    fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.key.replace('.', "/"))
    }
}

impl Check for Sysctl {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let path = self.proc_path();
        match text::read_host(ctx.host, &path) {
            Ok(v) => {
                let v = text::norm_ws(&v);
                Outcome::verdict(
                    self.op.holds(&v, false),
                    json!(v),
                    format!("{} = {v}; expected {}", self.key, self.op.describe()),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Outcome::error(format!("{} does not exist on this kernel", self.key))
            }
            Err(e) => Outcome::error(format!("cannot read {path}: {e}")),
        }
    }

    fn can_remediate(&self) -> bool {
        true
    }

    fn remediate(&self, ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        let value = self.op.target();
        let sep = Separator::Str("=".into());
        let before = text::read_for_rewrite(&ctx.host.resolve(DROPIN)).map_err(|source| {
            RemediateError::Io {
                op: "read",
                path: DROPIN.into(),
                source,
            }
        })?;
        let current = before.clone().unwrap_or_else(|| {
            "# Written by kiosk-agent from the security policy; do not edit.\n".into()
        });
        let idx = current
            .lines()
            .position(|l| text::split_kv(l, &sep).is_some_and(|(k, _)| k == self.key));
        let body = text::set_line(&current, idx, &format!("{} = {value}", self.key));
        rem.write_file(DROPIN, body.as_bytes(), None)?;
        if let Err(e) = rem.write_sysctl(&self.key, value) {
            let restored = match &before {
                Some(old) => rem.write_file(DROPIN, old.as_bytes(), None).map(|_| ()),
                None => rem.remove_file(DROPIN),
            };
            if let Err(r) = restored {
                tracing::warn!(error = %r, "could not restore {DROPIN} after a failed sysctl write");
            }
            return Err(e);
        }
        Ok(format!("wrote {} = {value} live and to {DROPIN}", self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;

    #[test]
    fn reads_live_value_and_remediates_live_and_persistent() {
        let fx = Fx::new(&[
            ("/proc/sys/kernel/sysrq", "438\n"),
            ("/proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n"),
        ]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = Sysctl::build(json!({"key":"kernel.sysrq","value":0})).unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(
            (o.status, o.observed.clone()),
            (CheckStatus::Fail, json!("438"))
        );
        let rem = FsRemediator::new(fx.host.clone());
        c.remediate(&ctx, &rem).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        assert!(fx.read(DROPIN).contains("\nkernel.sysrq = 0\n"));
        let range =
            Sysctl::build(json!({"key":"net.ipv4.ip_local_port_range","value":"32768 60999"}))
                .unwrap();
        assert_eq!(range.evaluate(&ctx).status, CheckStatus::Pass);
        let ge = Sysctl::build(json!({"key":"kernel.sysrq","value":"0","op":"ge"})).unwrap();
        assert_eq!(ge.evaluate(&ctx).status, CheckStatus::Pass);
    }

    #[test]
    fn failed_live_write_restores_the_dropin() {
        let fx = Fx::new(&[("/etc/sysctl.d/90-kiosk-agent.conf", "kernel.sysrq = 0\n")]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = Sysctl::build(json!({"key":"kernel.kptr_restrict","value":1})).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Error);
        let rem = FsRemediator::new(fx.host.clone());
        assert!(matches!(
            c.remediate(&ctx, &rem),
            Err(RemediateError::Io { op: "open", .. })
        ));
        assert_eq!(fx.read(DROPIN), "kernel.sysrq = 0\n");
        // and with no drop-in before, none after
        let fx = Fx::new(&[]);
        let rem = FsRemediator::new(fx.host.clone());
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        assert!(matches!(
            c.remediate(&ctx, &rem),
            Err(RemediateError::Io { op: "open", .. })
        ));
        assert!(!fx.host.resolve(DROPIN).exists());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(
            matches!(Sysctl::build(json!({"key":"../../etc/passwd","value":1})), Err(ref e) if e.contains("is not a dotted sysctl name"))
        );
        assert!(
            matches!(Sysctl::build(json!({"key":"kernel..x","value":1})), Err(ref e) if e.contains("is not a dotted sysctl name"))
        );
        assert!(
            matches!(Sysctl::build(json!({"key":"kernel.x","value":[1]})), Err(ref e) if e.contains("value must be a string or number"))
        );
    }
}
