//! Blocking client for the local socket, used by `kioskctl` and tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The OS error is the source, not part of the message, so a cause chain names it once.
    #[error("cannot connect to {path} ({hint})")]
    Connect {
        path: String,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent closed the connection without answering")]
    Closed,
    #[error("unreadable answer from the agent: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What a technician should check, by what went wrong.
fn connect_hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind::*;
    match kind {
        NotFound | ConnectionRefused => "is kiosk-agent running? systemctl status kiosk-agent",
        PermissionDenied => "are you in the technicians' group? log in again after adding it",
        _ => "is kiosk-agent running? are you in the technicians' group?",
    }
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            hint: connect_hint(source.kind()),
            source,
        })?;
        Ok(Self {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    pub fn send(&mut self, req: &Value) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Reads the next line (a response or, after `subscribe`, an event).
    pub fn next_line(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    pub fn call(&mut self, req: &Value) -> Result<Value, ClientError> {
        self.send(req)?;
        self.next_line()
    }
}
