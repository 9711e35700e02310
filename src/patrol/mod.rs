//! The daily patrol (巡检, docs/protocol.md §3): one report of every device, the compliance summary and
//! the power schedule, produced before opening hours so a fault is found before a citizen
//! finds it.
//!
//! Owns the report's shape and `seq`, when the next patrol is due (`next_patrol`, pure), the
//! 30-day history under `{state_dir}/patrol/` and the technician's checklist in Chinese or
//! English. The report itself (`build`, `next_patrol`) is pure: it is handed probe results,
//! compliance and schedule figures and the current instant. The runner (`PatrolRunner`) is the
//! task that gathers them from the running parts, on time and on request, and publishes the
//! report retained on `patrol`; the socket and commands reach it through `PatrolHandle`.

mod history;
mod render;
mod report;
mod runner;
mod schedule;

pub use history::{PatrolStore, RETENTION_DAYS};
pub use render::{Lang, render_checklist, render_checklist_in};
pub use report::{
    AgentSummary, Compliance, PatrolInputs, PatrolItem, PatrolReport, PatrolSummary,
    ScheduleSummary, build, cert_item, clock_item,
};
pub use runner::PatrolRunner;
pub use schedule::{DEFAULT_AT, LEAD_BEFORE_ON_MINUTES, next_patrol};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PatrolError {
    #[error("patrol time {0:?} is not HH:MM")]
    BadTime(String),
    #[error("patrol time cannot be placed in the time zone: {0}")]
    Zone(#[from] jiff::Error),
    #[error("patrol history {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("patrol report {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Asks the daemon's patrol runner for a report now (`inspect`, `kioskctl inspect`); with
/// `publish` the report is recorded in the history and published on `patrol`.
#[derive(Clone, Debug)]
pub struct PatrolHandle {
    tx: tokio::sync::mpsc::UnboundedSender<PatrolRequest>,
}

/// One request to the runner, which alone owns the history directory.
pub enum PatrolRequest {
    /// Make a report now; with `publish` record and publish it.
    Run {
        publish: bool,
        reply: tokio::sync::oneshot::Sender<Option<PatrolReport>>,
    },
    /// Summaries of the last `days` days, newest first.
    History {
        days: u32,
        reply: tokio::sync::oneshot::Sender<Result<Vec<PatrolSummary>, String>>,
    },
}

impl PatrolHandle {
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<PatrolRequest>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    pub async fn run(&self, publish: bool) -> Option<PatrolReport> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.send(PatrolRequest::Run { publish, reply }).ok()?;
        rx.await.ok().flatten()
    }

    pub async fn history(&self, days: u32) -> Result<Vec<PatrolSummary>, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let gone = || "the patrol runner has stopped".to_string();
        self.tx
            .send(PatrolRequest::History { days, reply })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
