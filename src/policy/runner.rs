//! Running host commands (`exec` checks, a unit's active state, `sshd -t`) behind a trait.
//!
//! Commands act on the real machine whatever `paths.root` says, so tests inject a fake runner
//! instead of letting a fixture scan ask the build machine's systemd.

use std::time::Duration;

/// What a finished command left behind. `code` is `None` when it was killed by a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub trait CommandRunner: Send + Sync + std::fmt::Debug {
    /// Runs `argv` (no shell) and waits at most `timeout`; a command still running then is
    /// killed and reported as an error, as is one that cannot be started.
    fn run(&self, argv: &[String], timeout: Duration) -> Result<CommandOutput, String>;

    /// Accounts whose `/etc/shadow` hash is empty, when a privileged helper answers for the
    /// root-only file; `None` means "read it directly".
    fn empty_password_accounts(&self) -> Option<Result<Vec<String>, String>> {
        None
    }
}

/// Runs real processes. Output is capped so a chatty command cannot grow the report.
#[derive(Debug, Default, Clone)]
pub struct SystemRunner;

const OUTPUT_CAP: usize = 64 * 1024;

impl CommandRunner for SystemRunner {
    fn run(&self, argv: &[String], timeout: Duration) -> Result<CommandOutput, String> {
        let f = crate::process::run(argv, timeout, OUTPUT_CAP).map_err(|e| e.to_string())?;
        Ok(CommandOutput {
            code: f.code,
            stdout: f.stdout,
            stderr: f.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_and_reports_exit_code_and_output() {
        let r = SystemRunner;
        let o = r
            .run(
                &argv(&["sh", "-c", "echo hi; exit 3"]),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout.trim(), "hi");
    }

    #[test]
    fn missing_program_and_timeout_are_errors() {
        let r = SystemRunner;
        assert!(
            r.run(&argv(&["/nonexistent/prog"]), Duration::from_secs(1))
                .is_err()
        );
        let e = r
            .run(&argv(&["sleep", "5"]), Duration::from_millis(50))
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(
            matches!(r.run(&[], Duration::from_secs(1)), Err(ref e) if e.contains("no command configured"))
        );
    }
}
