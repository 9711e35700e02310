//! `accounts`: `/etc/passwd` and `/etc/shadow` agree with the account rules: no account with an
//! empty password hash, and no account other than root with UID 0. Never remediated: changing
//! accounts on a serving kiosk is for a person, not for the agent.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};
use crate::policy::text;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    no_empty_passwords: bool,
    #[serde(default)]
    only_root_uid0: bool,
}

#[derive(Debug)]
pub struct Accounts {
    no_empty_passwords: bool,
    only_root_uid0: bool,
}

impl Accounts {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        if !s.no_empty_passwords && !s.only_root_uid0 {
            return Err("enable at least one of no_empty_passwords, only_root_uid0".into());
        }
        Ok(Self {
            no_empty_passwords: s.no_empty_passwords,
            only_root_uid0: s.only_root_uid0,
        })
    }
}

impl Check for Accounts {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let passwd = match text::read_host(ctx.host, "/etc/passwd") {
            Ok(t) => t,
            Err(e) => return Outcome::error(format!("cannot read /etc/passwd: {e}")),
        };
        let mut empty = Vec::new();
        let mut uid0 = Vec::new();
        for l in passwd.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            // "00" is UID 0 too: compare the number, not the text.
            if self.only_root_uid0 && f[2].trim().parse::<u32>() == Ok(0) && f[0] != "root" {
                uid0.push(f[0].to_string());
            }
            // A passwd field left empty (no `x`) also means "no password".
            if self.no_empty_passwords && f[1].is_empty() {
                empty.push(f[0].to_string());
            }
        }
        if self.no_empty_passwords
            && let Some(verdict) = ctx.runner.empty_password_accounts()
        {
            match verdict {
                Ok(names) => {
                    for n in names {
                        if !empty.contains(&n) {
                            empty.push(n);
                        }
                    }
                }
                Err(e) => return Outcome::error(format!("cannot check /etc/shadow: {e}")),
            }
        } else if self.no_empty_passwords {
            let shadow = match text::read_host(ctx.host, "/etc/shadow") {
                Ok(t) => t,
                Err(e) => return Outcome::error(format!("cannot read /etc/shadow: {e}")),
            };
            for l in shadow.lines() {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() >= 2
                    && !f[0].is_empty()
                    && f[1].is_empty()
                    && !empty.iter().any(|u| u == f[0])
                {
                    empty.push(f[0].to_string());
                }
            }
        }
        let ok = empty.is_empty() && uid0.is_empty();
        let mut msg = Vec::new();
        if !empty.is_empty() {
            msg.push(format!("empty password: {}", empty.join(", ")));
        }
        if !uid0.is_empty() {
            msg.push(format!("UID 0 besides root: {}", uid0.join(", ")));
        }
        let message = if ok {
            "accounts comply".to_string()
        } else {
            msg.join("; ")
        };
        Outcome::verdict(
            ok,
            json!({"empty_password": empty, "extra_uid0": uid0}),
            message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    #[test]
    fn empty_hash_and_second_uid0_fail() {
        let fx = Fx::new(&[
            (
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/bash\ntoor:x:00:0::/:/bin/sh\nkiosk:x:1000:1000::/home/kiosk:/bin/bash\ngarbage\n",
            ),
            (
                "/etc/shadow",
                "root:*:19000:0:99999:7:::\nkiosk::19000:0:99999:7:::\n",
            ),
        ]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = Accounts::build(json!({"no_empty_passwords":true,"only_root_uid0":true})).unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(
            o.observed,
            json!({"empty_password":["kiosk"],"extra_uid0":["toor"]})
        );
        fx.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
        fx.write("/etc/shadow", "root:!:19000::::::\n");
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        std::fs::remove_file(fx.host.resolve("/etc/shadow")).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Error);
        assert!(
            matches!(Accounts::build(json!({})), Err(ref e) if e.contains("enable at least one of"))
        );
    }
}
