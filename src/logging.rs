//! Logs: journald (through systemd-journal-logger) when systemd started us, readable text on
//! stderr otherwise. `tracing` is used throughout; under journald its events reach the
//! journal through the `log` facade, with structured fields kept as message text.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload;

type ReloadHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;
static RELOAD: OnceLock<ReloadHandle> = OnceLock::new();

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM`).
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

pub fn init(level: &str) {
    if under_journald()
        && let Ok(logger) = systemd_journal_logger::JournalLog::new()
    {
        let logger = logger.with_syslog_identifier("kiosk-agent".to_string());
        if logger.install().is_ok() {
            log::set_max_level(to_log_level(level));
            return;
        }
    }
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_new(format!("{level},rumqttc=warn"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = RELOAD.set(handle);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}

fn to_log_level(level: &str) -> log::LevelFilter {
    level.parse().unwrap_or(log::LevelFilter::Info)
}

/// Changes the log level at run time (`set_log_level` command). Returns false for a bad level.
pub fn set_level(level: &str) -> bool {
    if level.parse::<tracing::Level>().is_err() {
        return false;
    }
    if under_journald() {
        log::set_max_level(to_log_level(level));
        return true;
    }
    match RELOAD.get() {
        Some(h) => h
            .modify(|f| *f = EnvFilter::new(format!("{level},rumqttc=warn")))
            .is_ok(),
        None => false,
    }
}
