//! `exec`: a command exits 0 within `timeout_s`. It runs on the machine itself, whatever
//! `paths.root` says, through the injected runner. Never remediated.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    cmd: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout_s: u64,
}

fn default_timeout() -> u64 {
    10
}

#[derive(Debug)]
pub struct Exec {
    cmd: Vec<String>,
    timeout: Duration,
}

impl Exec {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        if s.cmd.is_empty() || s.cmd[0].is_empty() {
            return Err("cmd must be a non-empty argv".into());
        }
        if s.timeout_s == 0 || s.timeout_s > 600 {
            return Err("timeout_s must be 1..600".into());
        }
        Ok(Self {
            cmd: s.cmd,
            timeout: Duration::from_secs(s.timeout_s),
        })
    }
}

impl Check for Exec {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        match ctx.runner.run(&self.cmd, self.timeout) {
            Ok(o) => {
                let first = o
                    .stdout
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                Outcome::verdict(
                    o.code == Some(0),
                    json!({"exit": o.code, "output": first}),
                    format!("{} exited {:?}", self.cmd[0], o.code),
                )
            }
            Err(e) => Outcome::error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    #[test]
    fn exit_status_decides() {
        let fx = Fx::new(&[]);
        let r = FakeRunner::default()
            .answer(&["aa-enabled"], 0, "Yes\n")
            .answer(&["fapolicyd-cli", "--check"], 1, "");
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let ok = Exec::build(json!({"cmd":["aa-enabled"],"timeout_s":5})).unwrap();
        let o = ok.evaluate(&ctx);
        assert_eq!(
            (o.status, o.observed["output"].clone()),
            (CheckStatus::Pass, json!("Yes"))
        );
        let bad = Exec::build(json!({"cmd":["fapolicyd-cli","--check"]})).unwrap();
        assert_eq!(bad.evaluate(&ctx).status, CheckStatus::Fail);
        let missing = Exec::build(json!({"cmd":["nope"]})).unwrap();
        assert_eq!(missing.evaluate(&ctx).status, CheckStatus::Error);
        assert!(
            matches!(Exec::build(json!({"cmd":[]})), Err(ref e) if e.contains("cmd must be a non-empty argv"))
        );
        assert!(
            matches!(Exec::build(json!({"cmd":["x"],"timeout_s":0})), Err(ref e) if e.contains("timeout_s must be 1..600"))
        );
    }
}
