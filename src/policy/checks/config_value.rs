//! `config_value`: a key's effective value in a config file satisfies a comparison.
//!
//! Two reading styles, because the owners of these files disagree: `last` (default; login.defs,
//! journald.conf, logind.conf: the last uncommented line wins, and `dropin_dir/*.conf` override
//! the main file) and `sshd` (case-insensitive keys, `Include` followed, first value wins, `Match`
//! blocks ignored). Remediation rewrites the line that is in effect (or adds one) atomically with
//! the file's mode kept; with `dropin_dir` it writes the agent's own `90-kiosk-agent.conf` there
//! instead of touching the vendor file. sshd candidates are validated with `sshd -t` first.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};
use crate::policy::remediate::{RemediateError, Remediator, Validator};
use crate::policy::text::{self, Found, Op, Separator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
    key: String,
    value: Value,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    separator: Option<String>,
    #[serde(default)]
    style: Option<String>,
    #[serde(default)]
    dropin_dir: Option<String>,
    /// `[Section]` header for a drop-in the agent writes (journald needs `[Journal]`).
    #[serde(default)]
    section: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Last,
    Sshd,
}

#[derive(Debug)]
pub struct ConfigValue {
    path: String,
    key: String,
    op: Op,
    sep: Separator,
    style: Style,
    dropin_dir: Option<String>,
    section: Option<String>,
}

/// The agent's own drop-in name: sorts late so its value wins under last-value-wins.
pub const DROPIN_NAME: &str = "90-kiosk-agent.conf";

impl ConfigValue {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("path", &s.path)?;
        if s.key.trim().is_empty() || s.key.contains(char::is_whitespace) {
            return Err("key must be one word".into());
        }
        let style = match s.style.as_deref() {
            None | Some("last") => Style::Last,
            Some("sshd") => Style::Sshd,
            Some(o) => return Err(format!("unknown style {o:?} (last, sshd)")),
        };
        if let Some(d) = &s.dropin_dir {
            abs_path("dropin_dir", d)?;
            if style == Style::Sshd {
                return Err("dropin_dir is for style last; sshd follows Include".into());
            }
        }
        let sep = Separator::from_option(s.separator.as_deref());
        if let Separator::Str(x) = &sep {
            if x.contains('\n') {
                return Err("separator must not contain a newline".into());
            }
        }
        let op = Op::from_json(s.op.as_deref(), &s.value)?;
        if op.target().contains('\n') {
            return Err("value must not contain a newline".into());
        }
        Ok(Self {
            path: s.path,
            key: s.key,
            op,
            sep,
            style,
            dropin_dir: s.dropin_dir,
            section: s.section,
        })
    }

    fn lookup(&self, ctx: &Ctx<'_>) -> std::io::Result<Option<Found>> {
        match self.style {
            Style::Sshd => text::lookup_sshd(ctx.host, &self.path, &self.key),
            Style::Last => text::lookup_last(
                ctx.host,
                &self.path,
                self.dropin_dir.as_deref(),
                &self.key,
                &self.sep,
            ),
        }
    }

    fn line(&self) -> String {
        match self.style {
            Style::Sshd => format!("{} {}", self.key, self.op.target()),
            Style::Last => self.sep.join(&self.key, self.op.target()),
        }
    }
}

fn rewrite_err(path: &str) -> impl FnOnce(std::io::Error) -> RemediateError + '_ {
    move |source| RemediateError::Io {
        op: "read for rewrite",
        path: path.to_string(),
        source,
    }
}

impl Check for ConfigValue {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        match self.lookup(ctx) {
            Ok(Some(f)) => {
                let ok = self.op.holds(&f.value, self.style == Style::Sshd);
                Outcome::verdict(
                    ok,
                    json!({"key": self.key, "value": f.value, "file": f.file, "line": f.line + 1}),
                    format!(
                        "{} is {:?}; expected {}",
                        self.key,
                        f.value,
                        self.op.describe()
                    ),
                )
            }
            Ok(None) => Outcome::fail(
                json!({"key": self.key, "value": null}),
                format!("{} is not set; expected {}", self.key, self.op.describe()),
            ),
            Err(e) => Outcome::error(format!("cannot read {}: {e}", self.path)),
        }
    }

    fn can_remediate(&self) -> bool {
        true
    }

    fn remediate(&self, ctx: &Ctx<'_>, rem: &dyn Remediator) -> Result<String, RemediateError> {
        let new_line = self.line();
        if let Some(dir) = &self.dropin_dir {
            let file = format!("{}/{DROPIN_NAME}", dir.trim_end_matches('/'));
            let current = text::read_for_rewrite(&ctx.host.resolve(&file))
                .map_err(rewrite_err(&file))?
                .unwrap_or_default();
            let idx = current
                .lines()
                .position(|l| text::split_kv(l, &self.sep).is_some_and(|(k, _)| k == self.key));
            let mut body = current.clone();
            if let Some(sec) = &self.section {
                let header = format!("[{sec}]");
                if !body.lines().any(|l| l.trim() == header) {
                    body = format!("{header}\n{body}");
                }
            }
            let idx = idx.map(|i| if body.len() > current.len() { i + 1 } else { i });
            let out = text::set_line(&body, idx, &new_line);
            rem.write_file(&file, out.as_bytes(), None)?;
            return Ok(format!("set {new_line:?} in {file}"));
        }
        let found = self.lookup(ctx).map_err(rewrite_err(&self.path))?;
        let (file, index) = match &found {
            Some(f) => (f.file.clone(), Some(f.line)),
            None => (self.path.clone(), None),
        };
        let current = text::read_for_rewrite(&ctx.host.resolve(&file))
            .map_err(rewrite_err(&file))?
            .unwrap_or_default();
        let out = match (self.style, index) {
            // Appending after a Match block would make the line conditional: insert before it.
            (Style::Sshd, None) => {
                let at = current.lines().position(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case("match"))
                });
                match at {
                    Some(i) => {
                        let mut lines: Vec<&str> = current.lines().collect();
                        lines.insert(i, &new_line);
                        format!("{}\n", lines.join("\n"))
                    }
                    None => text::set_line(&current, None, &new_line),
                }
            }
            _ => text::set_line(&current, index, &new_line),
        };
        let validator = (self.style == Style::Sshd).then_some(Validator::Sshd);
        let note = rem.write_file(&file, out.as_bytes(), validator)?;
        let mut action = match index {
            Some(i) => format!("rewrote line {} of {file} to {new_line:?}", i + 1),
            None => format!("added {new_line:?} to {file}"),
        };
        if !note.is_empty() {
            action.push_str(&format!(" ({note})"));
        }
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;
    use crate::policy::remediate::FsRemediator;
    use std::os::unix::fs::PermissionsExt;

    fn check(v: Value) -> ConfigValue {
        ConfigValue::build(v).unwrap()
    }

    #[test]
    fn login_defs_last_value_wins_and_le_compares_numbers() {
        let fx = Fx::new(&[(
            "/etc/login.defs",
            "PASS_MAX_DAYS\t30\nPASS_MAX_DAYS\t99999\n",
        )]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = check(
            json!({"type":"config_value","path":"/etc/login.defs","key":"PASS_MAX_DAYS","value":"90","op":"le"}),
        );
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed["value"], "99999");
        assert_eq!(o.observed["line"], 2);
    }

    #[test]
    fn remediation_rewrites_the_effective_line_and_keeps_mode() {
        let fx = Fx::new(&[("/etc/login.defs", "# c\nPASS_MAX_DAYS\t99999\nUMASK 022\n")]);
        let p = fx.host.resolve("/etc/login.defs");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let rem = FsRemediator::new(fx.host.clone());
        let c =
            check(json!({"path":"/etc/login.defs","key":"PASS_MAX_DAYS","value":"90","op":"le"}));
        c.remediate(&ctx, &rem).unwrap();
        assert_eq!(
            fx.read("/etc/login.defs"),
            "# c\nPASS_MAX_DAYS 90\nUMASK 022\n"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        // absent key: appended
        let c =
            check(json!({"path":"/etc/login.defs","key":"PASS_MIN_DAYS","value":"1","op":"ge"}));
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Fail);
        c.remediate(&ctx, &rem).unwrap();
        assert!(
            fx.read("/etc/login.defs")
                .ends_with("UMASK 022\nPASS_MIN_DAYS 1\n")
        );
    }

    #[test]
    fn dropin_remediation_writes_the_agents_own_file_with_section() {
        let fx = Fx::new(&[("/etc/systemd/journald.conf", "[Journal]\n#Storage=auto\n")]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let rem = FsRemediator::new(fx.host.clone());
        let c = check(
            json!({"path":"/etc/systemd/journald.conf","dropin_dir":"/etc/systemd/journald.conf.d",
            "section":"Journal","key":"Storage","value":"persistent","separator":"="}),
        );
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Fail);
        c.remediate(&ctx, &rem).unwrap();
        assert_eq!(
            fx.read("/etc/systemd/journald.conf"),
            "[Journal]\n#Storage=auto\n"
        );
        assert_eq!(
            fx.read("/etc/systemd/journald.conf.d/90-kiosk-agent.conf"),
            "[Journal]\nStorage=persistent\n"
        );
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        let c2 = check(
            json!({"path":"/etc/systemd/journald.conf","dropin_dir":"/etc/systemd/journald.conf.d",
            "section":"Journal","key":"Storage","value":"volatile","separator":"="}),
        );
        c2.remediate(&ctx, &rem).unwrap();
        assert_eq!(
            fx.read("/etc/systemd/journald.conf.d/90-kiosk-agent.conf"),
            "[Journal]\nStorage=volatile\n"
        );
    }

    #[test]
    fn sshd_remediation_edits_the_winning_include_or_inserts_before_match() {
        let fx = Fx::new(&[
            (
                "/etc/ssh/sshd_config",
                "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\nMatch User x\n  X11Forwarding yes\n",
            ),
            (
                "/etc/ssh/sshd_config.d/50-cloud.conf",
                "PasswordAuthentication yes\n",
            ),
        ]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let rem = FsRemediator::new(fx.host.clone());
        let pa = check(
            json!({"path":"/etc/ssh/sshd_config","style":"sshd","key":"PasswordAuthentication","value":"no"}),
        );
        assert_eq!(pa.evaluate(&ctx).status, CheckStatus::Fail);
        pa.remediate(&ctx, &rem).unwrap();
        assert_eq!(
            fx.read("/etc/ssh/sshd_config.d/50-cloud.conf"),
            "PasswordAuthentication no\n"
        );
        let x11 = check(
            json!({"path":"/etc/ssh/sshd_config","style":"sshd","key":"X11Forwarding","value":"no"}),
        );
        assert_eq!(x11.evaluate(&ctx).status, CheckStatus::Fail);
        x11.remediate(&ctx, &rem).unwrap();
        assert_eq!(
            fx.read("/etc/ssh/sshd_config"),
            "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\nX11Forwarding no\nMatch User x\n  X11Forwarding yes\n"
        );
        assert_eq!(x11.evaluate(&ctx).status, CheckStatus::Pass);
    }

    #[test]
    fn bad_specs_are_refused_and_missing_files_are_handled() {
        assert!(
            matches!(ConfigValue::build(json!({"path":"etc/x","key":"a","value":"1"})), Err(ref e) if e.contains("path must be an absolute path"))
        );
        assert!(
            matches!(ConfigValue::build(json!({"path":"/etc/x","key":"a b","value":"1"})), Err(ref e) if e.contains("key must be one word"))
        );
        assert!(
            ConfigValue::build(json!({"path":"/etc/x","key":"a","value":"1","style":"toml"}))
                .is_err()
        );
        assert!(
            ConfigValue::build(json!({"path":"/etc/x","key":"a","value":"1","bogus":1})).is_err()
        );
        let fx = Fx::new(&[]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = check(json!({"path":"/etc/login.defs","key":"A","value":"1"}));
        assert_eq!(
            c.evaluate(&ctx).status,
            CheckStatus::Fail,
            "missing file sets nothing"
        );
        let sshd =
            check(json!({"path":"/etc/ssh/sshd_config","style":"sshd","key":"A","value":"1"}));
        assert_eq!(sshd.evaluate(&ctx).status, CheckStatus::Error);
    }
}
