//! The daemon's side of the helper socket: blocking, one request per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{MAX_REQUEST_BYTES, Reply, Request, codes};

/// Where the helper listens. Cheap to clone; every call opens its own connection, so a helper
/// restarted by systemd in between is simply reached again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// Longest a call waits for its reply: a power command or unit restart the helper runs is
/// itself bounded (two minutes), plus slack.
const CALL_TIMEOUT: Duration = Duration::from_secs(150);

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: CALL_TIMEOUT,
        }
    }

    /// The helper named by `helper.socket`, if any.
    pub fn from_config(cfg: &crate::config::Config) -> Option<Self> {
        Self::from_section(&cfg.helper)
    }

    /// As [`Client::from_config`], for a part handed only the `[helper]` section.
    pub fn from_section(helper: &crate::config::Helper) -> Option<Self> {
        helper.socket.as_ref().map(Self::new)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; a helper that cannot be reached is a [`codes::UNAVAILABLE`] reply,
    /// so callers handle one shape of outcome.
    pub fn call(&self, req: &Request) -> Reply {
        match serde_json::to_vec(req) {
            Ok(mut line) => {
                line.push(b'\n');
                self.call_raw(&line)
            }
            Err(e) => Reply::refuse(codes::MALFORMED, e.to_string()),
        }
    }

    /// Sends `line` as is (it should end with a newline) and parses the reply line.
    pub fn call_raw(&self, line: &[u8]) -> Reply {
        let unavailable = |what: &str, e: std::io::Error| {
            Reply::refuse(
                codes::UNAVAILABLE,
                format!("helper at {}: {what}: {e}", self.socket.display()),
            )
        };
        let mut s = match UnixStream::connect(&self.socket) {
            Ok(s) => s,
            Err(e) => return unavailable("connect", e),
        };
        let _ = s.set_read_timeout(Some(self.timeout));
        let _ = s.set_write_timeout(Some(self.timeout));
        // The helper may refuse (and close) before reading everything; its reply still counts.
        let written = s.write_all(line).and_then(|_| s.flush());
        let mut reply = Vec::new();
        let read = BufReader::new(&mut s)
            .take(MAX_REQUEST_BYTES as u64)
            .read_until(b'\n', &mut reply);
        match (read, written) {
            (Ok(n), _) if n > 0 => serde_json::from_slice(&reply).unwrap_or_else(|e| {
                Reply::refuse(codes::UNAVAILABLE, format!("unreadable helper reply: {e}"))
            }),
            (Err(e), _) => unavailable("read reply", e),
            (Ok(_), Err(e)) => unavailable("send request", e),
            (Ok(_), Ok(())) => Reply::refuse(codes::UNAVAILABLE, "helper closed without a reply"),
        }
    }
}

use std::io::Read as _;

/// Restarts `unit` the one way this terminal allows: through the privileged helper when there
/// is one (it checks the unit against its own allow list), else with `commands.systemctl`.
/// Blocking; the error names the unit and what failed.
pub fn restart_unit(
    helper: Option<&Client>,
    systemctl: &[String],
    unit: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(h) = helper {
        let r = h.call(&Request::RestartUnit {
            unit: unit.to_string(),
        });
        return if r.ok {
            Ok(())
        } else {
            Err(format!("{unit}: helper ({}): {}", r.code, r.message))
        };
    }
    let mut argv = systemctl.to_vec();
    argv.extend(["restart".to_string(), unit.to_string()]);
    match crate::process::run(&argv, timeout, 4096) {
        Ok(f) if f.success => Ok(()),
        Ok(f) => Err(format!(
            "{unit}: `{}` exited with {}: {}",
            argv.join(" "),
            f.status,
            f.stderr.trim()
        )),
        Err(e) => Err(format!("{unit}: `{}`: {e}", argv.join(" "))),
    }
}
