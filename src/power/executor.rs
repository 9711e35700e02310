//! The only place where power decisions touch the machine: configured commands and the RTC.
//!
//! Kept behind `PowerActions` so the planner can be exercised end to end against a temp tree
//! and harmless commands, while production runs `systemctl poweroff` and writes sysfs.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;

use crate::host::HostPaths;
use crate::process::RunError;

/// Where the kernel exposes the first RTC's alarm; resolved under `paths.root`.
pub const WAKEALARM: &str = "/sys/class/rtc/rtc0/wakealarm";

/// How much of a command's output is kept for the log line.
const OUTPUT_KEEP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{label}: no command configured")]
    NotConfigured { label: &'static str },
    #[error("{label}: cannot start {cmd:?}: {source}")]
    Spawn {
        label: &'static str,
        cmd: String,
        source: std::io::Error,
    },
    #[error("{label}: waiting for {cmd:?}: {source}")]
    Wait {
        label: &'static str,
        cmd: String,
        source: std::io::Error,
    },
    #[error("{label}: {cmd:?} did not finish within {secs} s and was killed")]
    Timeout {
        label: &'static str,
        cmd: String,
        secs: u64,
    },
    #[error("{label}: {cmd:?} failed ({status}): {stderr}")]
    Failed {
        label: &'static str,
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{label}: the command runner stopped: {reason}")]
    Runner { label: &'static str, reason: String },
    #[error("writing RTC wake alarm {path}: {source}")]
    WakeAlarm {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a finished command printed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Side effects of the planner.
pub trait PowerActions: Send + Sync + 'static {
    /// Arms the RTC to wake the machine at `at`, or disarms it with `None`.
    fn set_wake_alarm(&self, at: Option<Timestamp>) -> Result<(), ExecError>;

    /// Runs a configured argv to completion (bounded in time).
    fn run(
        &self,
        label: &'static str,
        argv: &[String],
    ) -> impl Future<Output = Result<CommandOutput, ExecError>> + Send;
}

/// The real machine, under `paths.root`: in-process, or through the privileged helper when one
/// is configured (the daemon then has no right to the RTC or to power the machine off).
#[derive(Debug, Clone)]
pub struct HostActions {
    wakealarm: PathBuf,
    timeout: Duration,
    helper: Option<crate::helper::Client>,
}

impl HostActions {
    pub fn new(host: &HostPaths, timeout: Duration) -> Self {
        Self {
            wakealarm: host.resolve(WAKEALARM),
            timeout,
            helper: None,
        }
    }

    /// Power actions and the RTC go to `helper`; it runs its own configured commands.
    pub fn with_helper(mut self, helper: Option<crate::helper::Client>) -> Self {
        self.helper = helper;
        self
    }
}

fn helper_err(label: &'static str, r: crate::helper::Reply) -> ExecError {
    ExecError::Failed {
        label,
        cmd: "kiosk-agent-helper".into(),
        status: r.code,
        stderr: r.message,
    }
}

impl PowerActions for HostActions {
    fn set_wake_alarm(&self, at: Option<Timestamp>) -> Result<(), ExecError> {
        if let Some(helper) = &self.helper {
            let r = helper.call(&crate::helper::Request::WakeAlarm {
                at: at.map(|t| t.as_second()),
            });
            return if r.ok {
                tracing::info!(wake_at = ?at.map(crate::host::rfc3339), "RTC wake alarm set through the helper");
                Ok(())
            } else {
                Err(helper_err("wake_alarm", r))
            };
        }
        let write = |v: &str| {
            // sysfs attributes are written in place (no temp file and rename there).
            std::fs::write(&self.wakealarm, v).map_err(|source| ExecError::WakeAlarm {
                path: self.wakealarm.clone(),
                source,
            })
        };
        // The kernel refuses a new alarm while one is armed (EBUSY) until it is cleared.
        write("0")?;
        if let Some(at) = at {
            write(&at.as_second().to_string())?;
            tracing::info!(wake_at = %crate::host::rfc3339(at), path = %self.wakealarm.display(), "RTC wake alarm set");
        }
        Ok(())
    }

    async fn run(&self, label: &'static str, argv: &[String]) -> Result<CommandOutput, ExecError> {
        if let Some(helper) = self.helper.clone() {
            let Some(action) = crate::helper::PowerAction::from_label(label) else {
                return Err(ExecError::NotConfigured { label });
            };
            let r = tokio::task::spawn_blocking(move || {
                helper.call(&crate::helper::Request::Power { action })
            })
            .await
            .map_err(|e| ExecError::Runner {
                label,
                reason: e.to_string(),
            })?;
            return if r.ok {
                tracing::info!(label, message = %r.message, "power action done by the helper");
                Ok(CommandOutput::default())
            } else {
                Err(helper_err(label, r))
            };
        }
        let argv = argv.to_vec();
        let timeout = self.timeout;
        // A blocking thread with a wall-clock deadline: the command's timeout is real time, and
        // a paused test clock must not expire it while the child is still running.
        tokio::task::spawn_blocking(move || run_blocking(label, &argv, timeout))
            .await
            .map_err(|e| ExecError::Runner {
                label,
                reason: e.to_string(),
            })?
    }
}

fn run_blocking(
    label: &'static str,
    argv: &[String],
    timeout: Duration,
) -> Result<CommandOutput, ExecError> {
    let cmd = argv.join(" ");
    let f = crate::process::run(argv, timeout, OUTPUT_KEEP).map_err(|e| match e {
        RunError::Empty => ExecError::NotConfigured { label },
        RunError::Spawn { source, .. } => ExecError::Spawn {
            label,
            cmd: cmd.clone(),
            source,
        },
        RunError::Wait { source, .. } => ExecError::Wait {
            label,
            cmd: cmd.clone(),
            source,
        },
        RunError::TimedOut { timeout, .. } => {
            tracing::warn!(label, cmd = %cmd, "command timed out and was killed");
            ExecError::Timeout {
                label,
                cmd: cmd.clone(),
                secs: timeout.as_secs(),
            }
        }
    })?;
    let output = CommandOutput {
        stdout: f.stdout.trim_end().to_string(),
        stderr: f.stderr.trim_end().to_string(),
    };
    tracing::info!(
        label,
        cmd = %cmd,
        status = %f.status,
        stdout = %output.stdout,
        stderr = %output.stderr,
        "power command finished"
    );
    if f.success {
        Ok(output)
    } else {
        Err(ExecError::Failed {
            label,
            cmd,
            status: f.status,
            stderr: output.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn runs_commands_and_reports_failures() {
        let d = tempfile::tempdir().unwrap();
        let a = HostActions::new(&HostPaths::new(d.path()), Duration::from_secs(5));
        let out = a
            .run("poweroff", &sh("echo hello; echo warn >&2"))
            .await
            .unwrap();
        assert_eq!(
            out,
            CommandOutput {
                stdout: "hello".into(),
                stderr: "warn".into()
            }
        );

        let e = a
            .run("poweroff", &sh("echo nope >&2; exit 3"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ExecError::Failed { stderr, .. } if stderr == "nope"),
            "{e}"
        );
        assert!(matches!(
            a.run("display_off", &[]).await,
            Err(ExecError::NotConfigured { .. })
        ));
        let missing = vec!["/nonexistent/kiosk-poweroff".to_string()];
        assert!(matches!(
            a.run("poweroff", &missing).await,
            Err(ExecError::Spawn { .. })
        ));
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let a = HostActions::new(&HostPaths::new(d.path()), Duration::from_millis(200));
        let e = a.run("poweroff", &sh("sleep 30")).await.unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
    }

    #[test]
    fn wake_alarm_is_written_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        let host = HostPaths::new(d.path());
        let a = HostActions::new(&host, Duration::from_secs(1));
        // No RTC in the tree: a clear error naming the path.
        let e = a.set_wake_alarm(None).unwrap_err();
        assert!(e.to_string().contains("rtc0/wakealarm"), "{e}");

        let file = host.resolve(WAKEALARM);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let at: Timestamp = "2026-10-12T00:55:00Z".parse().unwrap();
        a.set_wake_alarm(Some(at)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            at.as_second().to_string()
        );
        a.set_wake_alarm(None).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "0");
    }
}
