//! Running a configured command (a policy `exec` check, `sshd -t`, `systemctl restart`, a
//! power-off, an update's health check) with a deadline, from blocking code.
//!
//! One implementation for every capability because the details are easy to get wrong: no
//! shell, no stdin, both pipes drained to their end in threads (a chatty child must never
//! block on a full pipe while we wait for it) with only the first bytes kept, the child killed
//! at the deadline, and no wait forever on a grandchild that keeps the pipes open.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no command configured")]
    Empty,
    #[error("cannot start {prog}: {source}")]
    Spawn {
        prog: String,
        source: std::io::Error,
    },
    #[error("waiting for {prog}: {source}")]
    Wait {
        prog: String,
        source: std::io::Error,
    },
    #[error("{prog} timed out after {timeout:?} and was killed")]
    TimedOut { prog: String, timeout: Duration },
}

/// What a finished command left behind. `code` is `None` when a signal ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub code: Option<i32>,
    pub success: bool,
    /// `exit status: 3`, `signal: 9 (SIGKILL)`: for messages.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// How long the output of a finished command is waited for (a background grandchild may hold
/// the pipes open).
const PIPE_GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);

/// Runs `argv` and waits at most `timeout`, keeping the first `keep` bytes of each stream.
pub fn run(argv: &[String], timeout: Duration, keep: usize) -> Result<Finished, RunError> {
    let (prog, args) = argv.split_first().ok_or(RunError::Empty)?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            prog: prog.clone(),
            source,
        })?;
    let out = drain(child.stdout.take(), keep);
    let err = drain(child.stderr.take(), keep);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut {
                    prog: prog.clone(),
                    timeout,
                });
            }
            // std has no wait-with-timeout; the interval only bounds how late a result is seen.
            Ok(None) => std::thread::sleep(POLL),
            Err(source) => {
                return Err(RunError::Wait {
                    prog: prog.clone(),
                    source,
                });
            }
        }
    };
    Ok(Finished {
        code: status.code(),
        success: status.success(),
        status: status.to_string(),
        stdout: out.recv_timeout(PIPE_GRACE).unwrap_or_default(),
        stderr: err.recv_timeout(PIPE_GRACE).unwrap_or_default(),
    })
}

/// `run` for async callers, on tokio's blocking pool.
pub async fn run_async(
    argv: Vec<String>,
    timeout: Duration,
    keep: usize,
) -> Result<Finished, RunError> {
    let prog = argv.first().cloned().unwrap_or_default();
    tokio::task::spawn_blocking(move || run(&argv, timeout, keep))
        .await
        .unwrap_or_else(|e| {
            Err(RunError::Wait {
                prog,
                source: std::io::Error::other(e.to_string()),
            })
        })
}

/// Reads a pipe to its end in a thread, keeping the first `keep` bytes.
fn drain(pipe: Option<impl Read + Send + 'static>, keep: usize) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exit_code_output_and_cap() {
        let f = run(
            &argv(&["sh", "-c", "echo hi; echo oops >&2; exit 3"]),
            Duration::from_secs(5),
            64,
        )
        .unwrap();
        assert_eq!((f.code, f.success), (Some(3), false));
        assert_eq!((f.stdout.as_str(), f.stderr.as_str()), ("hi\n", "oops\n"));
        // A chatty command is drained to its end (it finishes) but only `keep` bytes are kept.
        let f = run(
            &argv(&["sh", "-c", "head -c 1000000 /dev/zero"]),
            Duration::from_secs(10),
            16,
        )
        .unwrap();
        assert!(f.success);
        assert_eq!(f.stdout.len(), 16);
    }

    #[test]
    fn timeout_kills_and_missing_program_is_an_error() {
        let e = run(&argv(&["sleep", "30"]), Duration::from_millis(100), 64).unwrap_err();
        assert!(matches!(e, RunError::TimedOut { .. }), "{e}");
        assert!(matches!(
            run(&argv(&["/nonexistent/x"]), Duration::from_secs(1), 64),
            Err(RunError::Spawn { .. })
        ));
        assert!(matches!(
            run(&[], Duration::from_secs(1), 64),
            Err(RunError::Empty)
        ));
    }
}
