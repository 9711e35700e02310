//! `kernel_module` (`state: "blocked"`): the module is not loaded (`/proc/modules`) and modprobe is
//! told to run `/bin/false` instead of loading it (an `install <name> /bin/false` line in
//! `/etc/modprobe.d`, `/run/modprobe.d`, `/usr/lib/modprobe.d` or `/lib/modprobe.d`).
//!
//! Remediation writes the agent's own `/etc/modprobe.d/kiosk-agent-<name>.conf` with the install
//! and blacklist lines. It does not unload a loaded module (a mounted USB disk may depend on it):
//! the re-check then still fails and says so, and the next boot completes the fix.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};
use crate::policy::remediate::{RemediateError, Remediator};
use crate::policy::text;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    state: String,
}

#[derive(Debug)]
pub struct KernelModule {
    name: String,
}

/// modprobe treats `-` and `_` in module names alike; `/proc/modules` uses `_`.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

const MODPROBE_DIRS: [&str; 4] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

impl KernelModule {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        if s.state != "blocked" {
            return Err(format!("state must be \"blocked\", got {:?}", s.state));
        }
        if s.name.is_empty()
            || s.name.len() > 64
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!("name {:?} is not a module name", s.name));
        }
        Ok(Self { name: s.name })
    }

    fn dropin(&self) -> String {
        format!("/etc/modprobe.d/kiosk-agent-{}.conf", self.name)
    }
}

impl Check for KernelModule {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let want = norm(&self.name);
        let loaded = match text::read_host(ctx.host, "/proc/modules") {
            Ok(t) => t
                .lines()
                .any(|l| l.split_whitespace().next().map(norm).as_deref() == Some(&want)),
            Err(e) => return Outcome::error(format!("cannot read /proc/modules: {e}")),
        };
        let mut install_false = None;
        let mut blacklisted = false;
        for dir in MODPROBE_DIRS {
            for f in text::list_dir_sorted(ctx.host, dir, "conf") {
                let Ok(t) = text::read_host(ctx.host, &text::host_path_of(ctx.host, &f)) else {
                    continue;
                };
                for l in t.lines() {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    match w.as_slice() {
                        ["install", m, cmd, ..] if norm(m) == want => {
                            if matches!(*cmd, "/bin/false" | "/usr/bin/false") {
                                install_false = Some(text::host_path_of(ctx.host, &f));
                            }
                        }
                        ["blacklist", m] if norm(m) == want => blacklisted = true,
                        _ => {}
                    }
                }
            }
        }
        let observed = json!({
            "loaded": loaded,
            "install_false": install_false,
            "blacklisted": blacklisted,
        });
        let ok = !loaded && install_false.is_some();
        let msg = match (loaded, install_false.is_some()) {
            (false, true) => format!("{} is blocked", self.name),
            (true, true) => format!(
                "{} is blocked but still loaded (unload or reboot)",
                self.name
            ),
            (false, false) => format!("{} is not loaded but may be loaded on demand", self.name),
            (true, false) => format!("{} is loaded and not blocked", self.name),
        };
        Outcome::verdict(ok, observed, msg)
    }

    fn can_remediate(&self) -> bool {
        true
    }

    fn remediate(&self, _ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        let path = self.dropin();
        let body = format!(
            "# Written by kiosk-agent from the security policy; do not edit.\ninstall {n} /bin/false\nblacklist {n}\n",
            n = self.name
        );
        rem.write_file(&path, body.as_bytes(), None)?;
        Ok(format!("wrote {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;

    #[test]
    fn blocked_needs_install_false_and_not_loaded() {
        let fx = Fx::new(&[
            (
                "/proc/modules",
                "uas 32768 0 - Live 0x0\nusb_storage 81920 1 uas, Live 0x0\n",
            ),
            ("/etc/modprobe.d/other.conf", "blacklist pcspkr\n"),
        ]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = KernelModule::build(json!({"name":"usb-storage","state":"blocked"})).unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["loaded"], true);
        c.remediate(&ctx, &FsRemediator::new(fx.host.clone()))
            .unwrap();
        assert!(
            fx.read("/etc/modprobe.d/kiosk-agent-usb-storage.conf")
                .contains("install usb-storage /bin/false")
        );
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail, "still loaded");
        assert!(o.message.contains("still loaded"));
        fx.write("/proc/modules", "uas 32768 0 - Live 0x0\n");
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
    }

    #[test]
    fn bad_specs_refused_and_garbage_modules_file_is_harmless() {
        assert!(
            matches!(KernelModule::build(json!({"name":"x","state":"loaded"})), Err(ref e) if e.contains("state must be \"blocked\""))
        );
        assert!(
            matches!(KernelModule::build(json!({"name":"../x","state":"blocked"})), Err(ref e) if e.contains("is not a module name"))
        );
        let fx = Fx::new(&[("/proc/modules", "\u{0}\u{1}garbage\n\n  \n")]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = KernelModule::build(json!({"name":"uas","state":"blocked"})).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Fail);
    }
}
