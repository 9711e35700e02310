//! `mount_options`: a mount point (from `/proc/self/mountinfo`) carries every required option,
//! e.g. `/tmp` and `/dev/shm` with `nodev,nosuid,noexec`. A mount point that is not a separate
//! mount fails (its options are the root file system's). When a path is mounted over, the last
//! entry is the one in effect. Not remediated: a runtime remount is lost at boot and fstab is
//! never edited by the agent; the rule reports.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};
use crate::policy::text;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    mount_point: String,
    options: Vec<String>,
}

#[derive(Debug)]
pub struct MountOptions {
    mount_point: String,
    options: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl MountOptions {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("mount_point", &s.mount_point)?;
        if s.options.is_empty() {
            return Err("options must not be empty".into());
        }
        Ok(Self {
            mount_point: s.mount_point,
            options: s.options,
        })
    }
}

impl Check for MountOptions {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let t = match text::read_host(ctx.host, "/proc/self/mountinfo") {
            Ok(t) => t,
            Err(e) => return Outcome::error(format!("cannot read /proc/self/mountinfo: {e}")),
        };
        let mut found: Option<(Vec<String>, String)> = None;
        for l in t.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || unescape(f[4]) != self.mount_point {
                continue;
            }
            let fstype = f
                .iter()
                .position(|x| *x == "-")
                .and_then(|i| f.get(i + 1))
                .unwrap_or(&"?")
                .to_string();
            found = Some((f[5].split(',').map(String::from).collect(), fstype));
        }
        let Some((opts, fstype)) = found else {
            return Outcome::fail(
                json!({"mounted": false}),
                format!("{} is not a separate mount", self.mount_point),
            );
        };
        let missing: Vec<&String> = self.options.iter().filter(|o| !opts.contains(o)).collect();
        let observed = json!({"mounted": true, "fstype": fstype, "options": opts.join(",")});
        if missing.is_empty() {
            Outcome::pass(
                observed,
                format!("{} has {}", self.mount_point, self.options.join(",")),
            )
        } else {
            let m: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            Outcome::fail(
                observed,
                format!("{} lacks {}", self.mount_point, m.join(",")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    const MI: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
        25 22 0:21 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw\n\
        26 22 0:22 / /tmp rw,nosuid,nodev shared:4 - tmpfs tmpfs rw\n\
        27 26 0:23 / /tmp rw,nosuid,nodev,noexec shared:5 - tmpfs tmpfs rw\n\
        28 22 0:24 / /media/my\\040usb rw - vfat /dev/sdb1 rw\n\
        short line\n";

    #[test]
    fn last_entry_wins_and_missing_options_fail() {
        let fx = Fx::new(&[("/proc/self/mountinfo", MI)]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let want = json!(["nodev", "nosuid", "noexec"]);
        let tmp = MountOptions::build(json!({"mount_point":"/tmp","options":want})).unwrap();
        assert_eq!(tmp.evaluate(&ctx).status, CheckStatus::Pass);
        let shm = MountOptions::build(json!({"mount_point":"/dev/shm","options":want})).unwrap();
        let o = shm.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert!(o.message.contains("noexec"));
        assert_eq!(o.observed["options"], "rw,nosuid,nodev");
        let vt = MountOptions::build(json!({"mount_point":"/var/tmp","options":want})).unwrap();
        assert_eq!(vt.evaluate(&ctx).observed, json!({"mounted": false}));
        let usb =
            MountOptions::build(json!({"mount_point":"/media/my usb","options":["ro"]})).unwrap();
        assert_eq!(usb.evaluate(&ctx).status, CheckStatus::Fail);
        assert!(
            matches!(MountOptions::build(json!({"mount_point":"/tmp","options":[]})), Err(ref e) if e.contains("options must not be empty"))
        );
    }
}
