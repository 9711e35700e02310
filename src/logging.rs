//! Logs: one `tracing` subscriber for both ways the agent runs, with one reloadable filter
//! (`log.level`, the `set_log_level` command).
//!
//! Under systemd (`JOURNAL_STREAM` set) records go straight to the journal's native socket
//! with every structured field as a journal field prefixed `KIOSK_` (`code` becomes
//! `KIOSK_CODE`, so `journalctl -u kiosk-agent KIOSK_CODE=security.rejected` finds every
//! refusal); otherwise readable text on stderr, coloured only on a terminal. The
//! dependencies' `log` records (rumqttc, rustls, ureq) are bridged into the same subscriber in
//! both modes, so the same filter decides what they show.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload;

use crate::config::LogLevel;

type ReloadHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;
static RELOAD: OnceLock<ReloadHandle> = OnceLock::new();

/// The journal field prefix for the agent's structured fields.
pub const JOURNAL_FIELD_PREFIX: &str = "KIOSK";

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM`).
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// The MQTT client logs every reconnect attempt at info; the agent says it once, better.
fn filter(level: &str) -> Option<EnvFilter> {
    level.parse::<tracing::Level>().ok()?;
    EnvFilter::try_new(format!("{level},rumqttc=warn")).ok()
}

pub fn init(level: LogLevel) {
    init_as(level, "kiosk-agent");
}

/// As [`init`], under another syslog identifier (the privileged helper logs as itself).
pub fn init_as(level: LogLevel, identifier: &str) {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = reload::Layer::new(
        filter(level.as_str()).unwrap_or_else(|| EnvFilter::new("info,rumqttc=warn")),
    );
    let _ = RELOAD.set(handle);
    let journald = if under_journald() {
        match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_syslog_identifier(identifier.to_string())
                    .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string()))
                    // info is routine (6), not notice (5): `journalctl -p notice` stays
                    // a list of what needs a look.
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    }),
            ),
            Err(e) => {
                eprintln!("{identifier}: journal socket unavailable ({e}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let stderr = journald.is_none().then(|| {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .with_target(false)
    });
    // try_init also installs the `log` bridge.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
}

/// Changes the log level at run time (`set_log_level` command). Returns false for a bad level.
pub fn set_level(level: &str) -> bool {
    let Some(f) = filter(level) else {
        return false;
    };
    let Some(h) = RELOAD.get() else {
        return false;
    };
    if h.modify(|cur| *cur = f).is_err() {
        return false;
    }
    // The `log` bridge skips records above the level it was installed with; open it up to
    // what the new filter may let through.
    log::set_max_level(
        level
            .parse::<log::LevelFilter>()
            .unwrap_or(log::LevelFilter::Info),
    );
    true
}
