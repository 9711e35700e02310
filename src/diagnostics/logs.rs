//! `logs_upload` (PROTOCOL §9): the journal entries of a window plus the agent's own recent
//! events, as gzip-compressed JSON lines, streamed with one HTTP PUT.
//!
//! Memory stays bounded whatever the window holds: journalctl's output is read, compressed,
//! hashed and sent in small blocks (chunked transfer), never collected. journalctl runs as a
//! child with a deadline and no shell. The upload format: one JSON object per line, first the
//! journal entries exactly as `journalctl -o json` writes them, then one
//! `{"kiosk_agent_event": {…}}` line per agent event.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::events::Event;

/// journalctl is killed past this (a huge window on a slow disk must not run forever).
pub const JOURNAL_DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadArgs {
    pub url: String,
    pub since: Timestamp,
    pub until: Timestamp,
    pub units: Vec<String>,
    pub priority: Option<String>,
}

const PRIORITIES: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug", "0", "1", "2", "3", "4",
    "5", "6", "7",
];

/// A systemd unit name as journalctl `-u` takes it; never an option (no leading `-`).
fn valid_unit(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 256
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\*".contains(c))
}

/// Validates the command's `args`; the message names the argument at fault.
pub fn parse_args(args: &Map<String, Value>) -> Result<UploadArgs, String> {
    let url = args
        .get("url")
        .and_then(Value::as_str)
        .ok_or("args.url is required")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err("args.url must be an http or https URL".into());
    }
    let time = |k: &str| -> Result<Timestamp, String> {
        args.get(k)
            .and_then(Value::as_str)
            .and_then(crate::host::parse_time)
            .ok_or_else(|| format!("args.{k} must be an RFC 3339 time"))
    };
    let (since, until) = (time("since")?, time("until")?);
    if until < since {
        return Err("args.until is before args.since".into());
    }
    let units = match args.get("units") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|u| {
                u.as_str()
                    .filter(|u| valid_unit(u))
                    .map(str::to_string)
                    .ok_or_else(|| format!("args.units: {u} is not a unit name"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("args.units must be a list of unit names".into()),
    };
    if units.len() > 64 {
        return Err("args.units: at most 64 units".into());
    }
    let priority = match args.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if PRIORITIES.contains(&p.as_str()) => Some(p.clone()),
        Some(_) => {
            return Err(
                "args.priority must be one of emerg alert crit err warning notice info debug (or 0-7)"
                    .into(),
            );
        }
    };
    Ok(UploadArgs {
        url: url.to_string(),
        since,
        until,
        units,
        priority,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload server answered HTTP {0}")]
    Status(u16),
    #[error("upload to the URL failed: {0}")]
    Transfer(String),
}

impl UploadError {
    pub fn code(&self) -> &'static str {
        match self {
            UploadError::Status(_) => "upload_status",
            UploadError::Transfer(_) => "upload_failed",
        }
    }
}

/// Whether the journal could be read: it is part of the result so an upload without journal
/// entries says why.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Journal {
    Read,
    Missing(String),
    Failed(String),
}

/// journalctl's output, then the agent's events, one JSON object per line; counts entries.
struct Source {
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    journal_entries: u64,
    events: VecDeque<Vec<u8>>,
    pending: Vec<u8>,
    pos: usize,
    stop_killer: Option<mpsc::Sender<()>>,
    journal: Journal,
}

impl Source {
    fn finish_journal(&mut self) {
        self.stdout = None;
        if let Some(tx) = self.stop_killer.take() {
            let _ = tx.send(());
        }
        if let Some(mut c) = self.child.take() {
            match c.wait() {
                Ok(s) if s.success() => {}
                Ok(s) if self.journal == Journal::Read => {
                    self.journal = Journal::Failed(format!("journalctl ended with {s}"));
                }
                _ => {}
            }
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(out) = self.stdout.as_mut() {
            match out.read(buf) {
                Ok(0) => self.finish_journal(),
                Ok(n) => {
                    self.journal_entries += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.journal = Journal::Failed(e.to_string());
                    self.finish_journal();
                }
            }
        }
        loop {
            if self.pos < self.pending.len() {
                let n = (self.pending.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.events.pop_front() {
                Some(line) => {
                    self.pending = line;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
    }
}

/// Counts and hashes exactly the bytes handed to the HTTP body.
struct Tee<R> {
    inner: R,
    digest: ring::digest::Context,
    bytes: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn journal_argv(journalctl: &[String], a: &UploadArgs) -> Vec<String> {
    let mut argv = journalctl.to_vec();
    argv.extend([
        "-o".to_string(),
        "json".into(),
        "--no-pager".into(),
        "--since".into(),
        format!("@{}", a.since.as_second()),
        "--until".into(),
        format!("@{}", a.until.as_second()),
    ]);
    for u in &a.units {
        argv.push("-u".into());
        argv.push(u.clone());
    }
    if let Some(p) = &a.priority {
        argv.push("-p".into());
        argv.push(p.clone());
    }
    argv
}

fn open_journal(journalctl: &[String], a: &UploadArgs, deadline: Duration) -> Source {
    let mut src = Source {
        child: None,
        stdout: None,
        journal_entries: 0,
        events: VecDeque::new(),
        pending: Vec::new(),
        pos: 0,
        stop_killer: None,
        journal: Journal::Read,
    };
    let argv = journal_argv(journalctl, a);
    let Some((prog, args)) = argv.split_first() else {
        src.journal = Journal::Missing("no journalctl command configured".into());
        return src;
    };
    match Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            src.stdout = child.stdout.take();
            let pid = child.id() as i32;
            let (tx, rx) = mpsc::channel::<()>();
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(deadline) {
                    tracing::warn!(pid, "journalctl ran past its deadline; killed");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            });
            src.stop_killer = Some(tx);
            src.child = Some(child);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            src.journal =
                Journal::Missing(format!("{prog} not found: this terminal has no journal"));
        }
        Err(e) => src.journal = Journal::Failed(format!("cannot start {prog}: {e}")),
    }
    src
}

/// Streams the upload; blocking (run it on a blocking thread). `Ok` is the reply's `result`.
pub fn upload(
    agent: &ureq::Agent,
    journalctl: &[String],
    a: &UploadArgs,
    events: &[Event],
    deadline: Duration,
) -> Result<Value, (UploadError, Value)> {
    let mut src = open_journal(journalctl, a, deadline);
    src.events = events
        .iter()
        .filter_map(|e| {
            let mut line = serde_json::to_vec(&json!({"kiosk_agent_event": e})).ok()?;
            line.push(b'\n');
            Some(line)
        })
        .collect();
    let event_count = src.events.len() as u64;
    let gz = flate2::read::GzEncoder::new(src, flate2::Compression::default());
    let mut tee = Tee {
        inner: gz,
        digest: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let sent = agent
        .put(&a.url)
        .header("Content-Type", "application/gzip")
        .send(ureq::SendBody::from_reader(&mut tee));
    let journal = tee.inner.get_ref().journal.clone();
    let journal_entries = tee.inner.get_ref().journal_entries;
    let sha256 = hex::encode(tee.digest.clone().finish());
    let mut result = json!({
        "bytes": tee.bytes,
        "sha256": sha256,
        "entries": journal_entries + event_count,
        "journal_entries": journal_entries,
        "agent_events": event_count,
        "journal": match &journal {
            Journal::Read => "read".to_string(),
            Journal::Missing(m) => format!("missing: {m}"),
            Journal::Failed(m) => format!("failed: {m}"),
        },
    });
    // Make sure journalctl is gone even when the server stopped reading early.
    let mut src = tee.inner.into_inner();
    if let Some(c) = src.child.as_mut() {
        let _ = c.kill();
    }
    src.finish_journal();
    match sent {
        Ok(resp) if resp.status().is_success() => Ok(result),
        Ok(resp) => {
            let status = resp.status().as_u16();
            result["status"] = json!(status);
            Err((UploadError::Status(status), result))
        }
        Err(e) => Err((UploadError::Transfer(e.to_string()), result)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Result<UploadArgs, String> {
        parse_args(v.as_object().unwrap())
    }

    #[test]
    fn args_are_checked() {
        let ok = args(json!({"url": "https://x/y", "since": "2026-12-01T08:00:00+08:00",
            "until": "2026-12-01T01:00:00Z", "units": ["kiosk-agent.service"], "priority": "warning"}))
        .unwrap();
        assert_eq!(ok.units, vec!["kiosk-agent.service"]);
        assert_eq!(
            journal_argv(&["journalctl".into()], &ok)[4..],
            [
                "--since".to_string(),
                format!("@{}", ok.since.as_second()),
                "--until".into(),
                format!("@{}", ok.until.as_second()),
                "-u".into(),
                "kiosk-agent.service".into(),
                "-p".into(),
                "warning".into()
            ]
        );
        let base = json!({"url": "https://x/y", "since": "2026-12-01T00:00:00Z", "until": "2026-12-01T01:00:00Z"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            args(b).unwrap_err()
        };
        assert_eq!(
            with("url", json!("file:///etc/shadow")),
            "args.url must be an http or https URL"
        );
        assert_eq!(
            with("since", json!("yesterday")),
            "args.since must be an RFC 3339 time"
        );
        assert_eq!(
            with("until", json!("2026-11-30T00:00:00Z")),
            "args.until is before args.since"
        );
        assert!(with("units", json!(["--output=cat"])).contains("not a unit name"));
        assert!(with("priority", json!("loud")).starts_with("args.priority"));
    }
}
