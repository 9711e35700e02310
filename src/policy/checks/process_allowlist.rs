//! `process_allowlist`: every process's executable (`/proc/<pid>/exe`) matches an allowed path or
//! glob. A deleted executable (`… (deleted)`) is always a violation: something replaced or
//! removed the binary it runs. Kernel threads have no `exe` and are skipped; so are processes
//! whose `exe` cannot be read (another user's, without CAP_SYS_PTRACE): their count is reported
//! so an auditor can tell a clean scan from a blind one. Never remediated: reported, never killed.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    allow: Vec<String>,
}

#[derive(Debug)]
pub struct ProcessAllowlist {
    allow: Vec<glob::Pattern>,
}

impl ProcessAllowlist {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        let allow = s
            .allow
            .iter()
            .map(|p| {
                if !p.starts_with('/') {
                    return Err(format!(
                        "allow entry {p:?} must be an absolute path or glob"
                    ));
                }
                glob::Pattern::new(p).map_err(|e| format!("allow entry {p:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }
}

impl Check for ProcessAllowlist {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let proc_dir = ctx.host.resolve("/proc");
        let rd = match std::fs::read_dir(&proc_dir) {
            Ok(rd) => rd,
            Err(e) => return Outcome::error(format!("cannot list /proc: {e}")),
        };
        let mut pids: Vec<u32> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        let (mut seen, mut unreadable) = (0usize, 0usize);
        let mut bad = Vec::new();
        for pid in pids {
            let exe = match std::fs::read_link(proc_dir.join(pid.to_string()).join("exe")) {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            seen += 1;
            let deleted = exe.ends_with(" (deleted)");
            if deleted || !self.allow.iter().any(|p| p.matches_with(&exe, opts)) {
                bad.push(format!("{pid} {exe}"));
            }
        }
        let observed = json!({"checked": seen, "unreadable": unreadable, "not_allowed": bad});
        if bad.is_empty() {
            Outcome::pass(
                observed,
                format!("{seen} process(es) allowed, {unreadable} unreadable"),
            )
        } else {
            Outcome::fail(observed, format!("{} process(es) not allowed", bad.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn globs_match_and_deleted_or_unknown_fail() {
        let fx = Fx::new(&[("/proc/2/comm", "kthreadd\n"), ("/proc/self/x", "")]);
        for (pid, exe) in [
            (1, "/usr/lib/systemd/systemd"),
            (300, "/opt/kiosk/apps/ui/current/bin/ui"),
            (301, "/tmp/x (deleted)"),
        ] {
            std::fs::create_dir_all(fx.host.resolve(format!("/proc/{pid}"))).unwrap();
            symlink(exe, fx.host.resolve(format!("/proc/{pid}/exe"))).unwrap();
        }
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = ProcessAllowlist::build(
            json!({"allow":["/usr/lib/systemd/*","/opt/kiosk/apps/*/current/bin/*","/tmp/*"]}),
        )
        .unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["not_allowed"], json!(["301 /tmp/x (deleted)"]));
        assert_eq!(o.observed["checked"], 3);
        let narrow = ProcessAllowlist::build(json!({"allow":["/usr/*"]})).unwrap();
        // `*` does not cross `/`: /usr/lib/systemd/systemd is not under /usr/* directly
        assert_eq!(
            narrow.evaluate(&ctx).observed["not_allowed"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert!(
            matches!(ProcessAllowlist::build(json!({"allow":["relative"]})), Err(ref e) if e.contains("must be an absolute path or glob"))
        );
        assert!(
            matches!(ProcessAllowlist::build(json!({"allow":["/a/[b"]})), Err(ref e) if e.contains("Pattern syntax error"))
        );
    }
}
