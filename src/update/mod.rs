//! App updates: owns downloads, the releases under `paths.apps_dir`, the install journal, the
//! `current` switch, the health check and rollback.
//!
//! It never installs a document that was not verified: it receives an `AppDoc` that `trust`
//! has already authenticated and `control` has already ordered (anti-rollback, precedence).
//! It never publishes anything either; it reports `Progress` through a callback and returns an
//! `Outcome`, which the daemon maps to `reported/app/{name}` and the `update.*` events.
//!
//! Layout on disk, per app: `{apps_dir}/{name}/releases/{release}/` (complete releases only),
//! `{apps_dir}/{name}/current` (relative symlink, switched by rename), and transient
//! `{apps_dir}/{name}/.staging-{release}/`. Under the state directory: `update/downloads/`
//! (partial downloads, kept across restarts to resume), `update/journal/{name}.json` (the
//! step in flight), `update/outcomes/{name}.json` (the last outcome, for `kioskctl updates`)
//! and `update/history/{name}.json` (install order, for pruning).
//!
//! The work is blocking (file system, child processes, network); the daemon runs it in
//! `tokio::task::spawn_blocking` from its single mutating worker.

pub mod doc;
pub mod fetch;
pub mod install;
pub mod journal;
pub mod unpack;
pub mod window;
pub mod worker;

use serde::{Deserialize, Serialize};

pub use doc::{AppDoc, ArtifactFormat, DocError, HealthCheck, Window};
pub use install::{
    AppReleases, InstallError, Installer, InstallerConfig, Recovery, last_outcomes, list_releases,
};
pub use window::{in_window, next_opening};

/// The `status` of `reported/app/{name}` while and after an install runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    WaitingWindow,
    Applied,
    Failed,
    RolledBack,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::WaitingWindow => "waiting_window",
            Status::Applied => "applied",
            Status::Failed => "failed",
            Status::RolledBack => "rolled_back",
        }
    }
}

/// The step an in-progress install is on, for `reported/app/{name}.details.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Downloading,
    Verifying,
    Installing,
    HealthCheck,
}

/// One progress report. `percent` is meaningful while downloading; other steps report 0 at
/// their start and 100 at their end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub name: String,
    pub release: String,
    pub version: u64,
    pub status: Status,
    pub step: Option<Step>,
    pub percent: u8,
    pub message: String,
}

impl Progress {
    /// The report for an install that is ready but held until its window opens; the daemon
    /// sends it while it waits, so the platform sees why nothing has happened yet.
    pub fn waiting_window(doc: &AppDoc, opens_at: jiff::Timestamp) -> Self {
        let window = doc
            .window
            .as_ref()
            .map(|w| format!("{}-{}", w.start, w.end))
            .unwrap_or_default();
        Progress {
            name: doc.name.clone(),
            release: doc.release.clone(),
            version: doc.version,
            status: Status::WaitingWindow,
            step: None,
            percent: 0,
            message: format!(
                "release {} waits for the maintenance window {window}; it opens at {}",
                doc.release,
                crate::host::rfc3339(opens_at)
            ),
        }
    }
}

/// The final result of an install, persisted as the app's last outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub release: String,
    pub version: u64,
    /// `Applied`, `Failed` or `RolledBack`.
    pub status: Status,
    /// Stable machine-readable reason: `applied`, `already_current`, `download_failed`,
    /// `size_mismatch`, `hash_mismatch`, `disk_space`, `unpack_refused`, `too_large`,
    /// `restart_failed`, `health_failed`, `internal`.
    pub code: String,
    /// What happened and what a person can do about it.
    pub message: String,
    /// The release `current` points at after this outcome.
    pub current: Option<String>,
    /// The release in force before the install began.
    pub previous: Option<String>,
    /// True when the failure was the network's, the partial download is kept and the same
    /// document can simply be tried again later.
    #[serde(default)]
    pub retryable: bool,
    pub ts: String,
}

impl Outcome {
    /// The event code the platform receives for this outcome.
    pub fn event_code(&self) -> &'static str {
        match self.status {
            Status::Applied => "update.applied",
            Status::RolledBack => "update.rolled_back",
            Status::Failed | Status::InProgress | Status::WaitingWindow => "update.failed",
        }
    }
}
