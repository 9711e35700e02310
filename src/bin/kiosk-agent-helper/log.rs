//! The helper's logger: a minimal `tracing` subscriber, so the root process links and touches
//! none of `tracing-subscriber` (its registry, filter parser and formatter are most of what a
//! resident helper would otherwise map). The helper logs a few flat events per request and
//! opens no spans, which is all this handles.
//!
//! Under systemd (`JOURNAL_STREAM` set) each event goes to the journal's native socket with its
//! fields as `KIOSK_`-prefixed journal fields, as the daemon's do (`journalctl -u
//! kiosk-agent-helper KIOSK_CODE=unit_not_allowed`); otherwise, or when the socket refuses a
//! record, one line on stderr: `TIMESTAMP LEVEL message key=value...`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Where journald listens for native records (sd_journal_sendv(3)).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

pub struct HelperLog {
    max: Level,
    identifier: &'static str,
    journal: Option<UnixDatagram>,
}

/// Installs the logger for the process at `log.level`.
pub fn init(level: kiosk_agent::config::LogLevel, identifier: &'static str) {
    let max = level.as_str().parse::<Level>().unwrap_or(Level::INFO);
    let journal = kiosk_agent::logging::under_journald()
        .then(UnixDatagram::unbound)
        .and_then(Result::ok);
    let _ = tracing::subscriber::set_global_default(HelperLog {
        max,
        identifier,
        journal,
    });
}

/// An event's fields: the message (and any field named `message`) apart, the rest in order.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String, bool)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: String, quoted: bool) {
        if field.name() == "message" {
            if !self.message.is_empty() {
                self.message.push(' ');
            }
            self.message.push_str(&value);
        } else {
            self.pairs.push((field.name(), value, quoted));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string(), true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}"), false);
    }
}

fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// `KEY=value\n`, or the length-prefixed form when the value holds a newline.
fn journal_field(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// A tracing field name as a journal field name: upper case, `[A-Z0-9_]` only.
fn journal_key(name: &str) -> String {
    let mut k = format!("{}_", kiosk_agent::logging::JOURNAL_FIELD_PREFIX);
    k.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    k
}

impl HelperLog {
    fn to_journal(&self, meta: &Metadata<'_>, f: &Fields) -> bool {
        let Some(sock) = &self.journal else {
            return false;
        };
        let mut buf = Vec::with_capacity(256);
        journal_field(&mut buf, "PRIORITY", priority(meta.level()));
        journal_field(&mut buf, "SYSLOG_IDENTIFIER", self.identifier);
        journal_field(&mut buf, "MESSAGE", &f.message);
        journal_field(&mut buf, "TARGET", meta.target());
        if let Some(file) = meta.file() {
            journal_field(&mut buf, "CODE_FILE", file);
        }
        if let Some(line) = meta.line() {
            journal_field(&mut buf, "CODE_LINE", &line.to_string());
        }
        for (k, v, _) in &f.pairs {
            journal_field(&mut buf, &journal_key(k), v);
        }
        sock.send_to(&buf, JOURNAL_SOCKET).is_ok()
    }

    fn to_stderr(meta: &Metadata<'_>, f: &Fields) {
        let mut line = format!(
            "{:.6} {:>5} {}",
            jiff::Timestamp::now(),
            meta.level(),
            f.message
        );
        for (k, v, quoted) in &f.pairs {
            let _ = if *quoted {
                write!(line, " {k}={v:?}")
            } else {
                write!(line, " {k}={v}")
            };
        }
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

impl Subscriber for HelperLog {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.level() <= &self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        if !self.to_journal(meta, &f) {
            Self::to_stderr(meta, &f);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
