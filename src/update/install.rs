//! The install flow: download → verify → unpack → switch → restart → health → done, or back.
//!
//! Every step that changes what the kiosk runs is preceded by a journal record, so
//! `resume_or_recover` can finish or undo it after a crash. The only change visible to the
//! application is the rename of the `current` symlink, which is atomic; the previous release
//! stays on disk until a later install has succeeded, so switching back is always possible.

use std::fs;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::host::{SharedClock, rfc3339};
use crate::state::{StateError, StateStore};
use crate::update::doc::{AppDoc, HealthCheck};
use crate::update::fetch::{self, FetchError, FetchOptions};
use crate::update::journal::{Journal, JournalError, JournalStore, Phase};
use crate::update::unpack::{self, UnpackError};
use crate::update::{Outcome, Progress, Status, Step};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot switch {path}: {source}")]
    Switch { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no install of {name} is ready to activate")]
    NotPrepared { name: String },
}

/// Everything the installer needs from the configuration, so tests can build one directly.
#[derive(Debug, Clone)]
pub struct InstallerConfig {
    pub apps_dir: PathBuf,
    pub state_dir: PathBuf,
    pub fetch: FetchOptions,
    /// Releases kept per app, counting the current one; the previous release is always kept.
    pub keep_releases: usize,
    pub max_unpacked_bytes: u64,
    /// argv prefix for systemd: `restart UNIT` and `is-active --quiet UNIT` are appended.
    pub systemctl: Vec<String>,
    /// Longest a `restart` may take before it counts as failed.
    pub command_timeout: Duration,
    /// Pause between two health attempts.
    pub health_retry_interval: Duration,
    /// Restarts go to the privileged helper when set (`helper.socket`).
    pub helper: Option<crate::helper::Client>,
}

impl InstallerConfig {
    /// From the `[updates]` section, where the apps and the state live (`[paths]`), how
    /// systemd is invoked (`commands.systemctl`) and the privileged helper, if any.
    pub fn from_sections(
        updates: &crate::config::Updates,
        paths: &crate::config::Paths,
        systemctl: &[String],
        helper: Option<crate::helper::Client>,
    ) -> Self {
        Self {
            apps_dir: paths.apps_dir.clone(),
            state_dir: paths.state_dir.clone(),
            fetch: FetchOptions::from_config(updates),
            keep_releases: updates.keep_releases,
            max_unpacked_bytes: updates.max_unpacked_bytes,
            systemctl: systemctl.to_vec(),
            command_timeout: Duration::from_secs(120),
            health_retry_interval: Duration::from_secs(2),
            helper,
        }
    }
}

/// What recovery did with one interrupted install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The switch had happened: the install was finished (applied) or undone (rolled back).
    Finished(Outcome),
    /// Nothing the kiosk runs had changed: the caller runs the install again (honouring the
    /// window); the download resumes from its partial file, a complete unpack is reused.
    Resume(AppDoc),
}

/// One app's releases on disk, for `kioskctl updates`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppReleases {
    pub name: String,
    pub current: Option<String>,
    pub releases: Vec<String>,
}

pub struct Installer {
    cfg: InstallerConfig,
    store: StateStore,
    journal: JournalStore,
    clock: SharedClock,
}

type ProgressFn<'a> = &'a mut dyn FnMut(Progress);

/// A failure before the switch, already phrased for the person reading the report.
struct Failure {
    code: &'static str,
    message: String,
    retryable: bool,
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        let (code, retryable) = match &e {
            FetchError::SizeMismatch { .. } => ("size_mismatch", false),
            FetchError::HashMismatch { .. } => ("hash_mismatch", false),
            FetchError::DiskSpace { .. } => ("disk_space", true),
            FetchError::Cancelled => ("cancelled", true),
            e if matches!(
                e.root(),
                FetchError::Stalled { .. } | FetchError::Deadline { .. }
            ) =>
            {
                ("download_timeout", true)
            }
            e if e.is_transient() => ("download_failed", true),
            _ => ("download_failed", false),
        };
        Failure {
            code,
            message: e.to_string(),
            retryable,
        }
    }
}

impl From<UnpackError> for Failure {
    fn from(e: UnpackError) -> Self {
        let code = match &e {
            UnpackError::Refused { .. } | UnpackError::Corrupt(_) => "unpack_refused",
            UnpackError::TooLarge { .. } => "too_large",
            UnpackError::Io { .. } => "internal",
        };
        Failure {
            code,
            message: e.to_string(),
            retryable: false,
        }
    }
}

impl From<InstallError> for Failure {
    fn from(e: InstallError) -> Self {
        Failure {
            code: "internal",
            message: e.to_string(),
            retryable: false,
        }
    }
}

impl Installer {
    pub fn new(cfg: InstallerConfig, clock: SharedClock) -> Result<Self, InstallError> {
        let store = StateStore::open(cfg.state_dir.clone())?;
        Ok(Self {
            journal: JournalStore::new(store.clone()),
            store,
            cfg,
            clock,
        })
    }

    fn app_dir(&self, name: &str) -> PathBuf {
        self.cfg.apps_dir.join(name)
    }

    fn release_dir(&self, name: &str, release: &str) -> PathBuf {
        self.app_dir(name).join("releases").join(release)
    }

    fn partial_path(&self, doc: &AppDoc) -> PathBuf {
        self.cfg.state_dir.join("update/downloads").join(format!(
            "{}-{}.part",
            doc.name,
            doc.artifact.sha256.to_ascii_lowercase()
        ))
    }

    fn now(&self) -> String {
        rfc3339(self.clock.now())
    }

    fn report(&self, p: ProgressFn<'_>, doc: &AppDoc, step: Step, percent: u8, message: String) {
        p(Progress {
            name: doc.name.clone(),
            release: doc.release.clone(),
            version: doc.version,
            status: Status::InProgress,
            step: Some(step),
            percent,
            message,
        });
    }

    fn set_phase(&self, j: &mut Journal, phase: Phase) -> Result<(), InstallError> {
        j.phase = phase;
        j.updated_at = self.now();
        self.journal.save(j)?;
        Ok(())
    }

    /// Downloads, verifies and installs then switches, restarts and checks health. The caller
    /// decides about the window beforehand (`in_window`), or calls `prepare` first and
    /// `activate` once the window opens so the download does not wait for it.
    pub fn install(&self, doc: &AppDoc, progress: ProgressFn<'_>) -> Outcome {
        if let Some(outcome) = self.already_current(doc) {
            return self.finish_outcome(outcome);
        }
        match self.prepare(doc, progress) {
            Ok(()) => self.activate(&doc.name, progress),
            Err(outcome) => *outcome,
        }
    }

    /// Everything up to, not including, the switch: after `Ok` the release is complete on
    /// disk and `activate` may run, typically once the window opens. On failure the outcome
    /// (already recorded) says why; `current` is untouched, and a network failure keeps the
    /// partial download and the journal so the next attempt resumes.
    pub fn prepare(&self, doc: &AppDoc, progress: ProgressFn<'_>) -> Result<(), Box<Outcome>> {
        self.prepare_with(doc, self.cfg.fetch.cancel.clone(), progress)
    }

    /// [`Installer::prepare`] with its own cancel flag: setting it stops the download at the
    /// next read (a newer document for the app, shutdown); the journal and the partial file
    /// stay, so a later attempt resumes.
    pub fn prepare_with(
        &self,
        doc: &AppDoc,
        cancel: Option<Arc<AtomicBool>>,
        progress: ProgressFn<'_>,
    ) -> Result<(), Box<Outcome>> {
        self.prepare_inner(doc, cancel, progress).map_err(|f| {
            let current = current_release(&self.app_dir(&doc.name));
            Box::new(self.finish_outcome(self.outcome(
                doc,
                Status::Failed,
                f.code,
                f.message,
                current.clone(),
                current,
                f.retryable,
            )))
        })
    }

    fn already_current(&self, doc: &AppDoc) -> Option<Outcome> {
        let current = current_release(&self.app_dir(&doc.name))?;
        let pending = self.journal.load(&doc.name).ok().flatten();
        (current == doc.release && pending.is_none()).then(|| {
            self.outcome(
                doc,
                Status::Applied,
                "already_current",
                format!("release {} is already in force; nothing to do", doc.release),
                Some(current.clone()),
                Some(current),
                false,
            )
        })
    }

    fn prepare_inner(
        &self,
        doc: &AppDoc,
        cancel: Option<Arc<AtomicBool>>,
        progress: ProgressFn<'_>,
    ) -> Result<(), Failure> {
        let app_dir = self.app_dir(&doc.name);
        let release_dir = self.release_dir(&doc.name, &doc.release);
        if let Some(j) = self.journal.load(&doc.name).map_err(InstallError::from)? {
            let same = j.doc.release == doc.release
                && j.doc
                    .artifact
                    .sha256
                    .eq_ignore_ascii_case(&doc.artifact.sha256);
            if same && j.phase == Phase::Unpacked && release_dir.is_dir() {
                return Ok(());
            }
            if !same {
                // A newer document replaces one that never switched: its download is useless.
                let _ = fs::remove_file(self.partial_path(&j.doc));
                let _ = fs::remove_dir_all(staging_dir(&app_dir, &j.doc.release));
            }
        }
        let previous = current_release(&app_dir);
        let mut j = Journal {
            doc: doc.clone(),
            phase: Phase::Downloading,
            previous,
            started_at: self.now(),
            updated_at: self.now(),
        };
        self.journal.save(&j).map_err(InstallError::from)?;

        self.report(
            progress,
            doc,
            Step::Downloading,
            0,
            format!(
                "downloading {} ({} bytes)",
                doc.artifact.url, doc.artifact.size
            ),
        );
        let partial = self.partial_path(doc);
        let result = {
            let mut pct = |p: u8| {
                self.report(
                    progress,
                    doc,
                    Step::Downloading,
                    p,
                    format!("downloading release {}", doc.release),
                );
            };
            fetch::fetch(
                &doc.artifact.url,
                &doc.artifact.sha256,
                doc.artifact.size,
                &partial,
                &FetchOptions {
                    cancel,
                    ..self.cfg.fetch.clone()
                },
                &mut pct,
            )
        };
        let fetched = match result {
            Ok(f) => f,
            Err(e) => {
                let f = Failure::from(e);
                if !f.retryable {
                    self.journal.remove(&doc.name).map_err(InstallError::from)?;
                }
                return Err(f);
            }
        };
        self.report(
            progress,
            doc,
            Step::Verifying,
            100,
            format!("sha256 {} verified", doc.artifact.sha256),
        );

        self.report(
            progress,
            doc,
            Step::Installing,
            0,
            format!("unpacking into releases/{}", doc.release),
        );
        // The unpacked release is at least as large as the artifact; refuse early rather than
        // fill the disk the running release lives on.
        fs::create_dir_all(&app_dir).map_err(|source| InstallError::Read {
            path: app_dir.clone(),
            source,
        })?;
        if let Err(e) = fetch::check_space(&app_dir, doc.artifact.size) {
            let _ = self.journal.remove(&doc.name);
            return Err(e.into());
        }
        if let Err(e) = unpack::unpack_release(
            &fetched.path,
            doc.artifact.format,
            &doc.file_name(),
            &staging_dir(&app_dir, &doc.release),
            &release_dir,
            self.cfg.max_unpacked_bytes,
        ) {
            let _ = fs::remove_file(&partial);
            self.journal.remove(&doc.name).map_err(InstallError::from)?;
            return Err(e.into());
        }
        self.record_history(&doc.name, &doc.release)
            .map_err(InstallError::from)?;
        self.set_phase(&mut j, Phase::Unpacked)?;
        let _ = fs::remove_file(&partial);
        self.report(
            progress,
            doc,
            Step::Installing,
            100,
            format!("release {} unpacked", doc.release),
        );
        Ok(())
    }

    /// Switches to a prepared release, restarts its units and checks its health, rolling back
    /// on failure.
    pub fn activate(&self, name: &str, progress: ProgressFn<'_>) -> Outcome {
        let j = match self.journal.load(name) {
            Ok(Some(j)) if j.phase == Phase::Unpacked => j,
            Ok(_) => {
                return self
                    .internal_failure(name, InstallError::NotPrepared { name: name.into() });
            }
            Err(e) => return self.internal_failure(name, e.into()),
        };
        self.switch_and_check(j, progress)
    }

    fn internal_failure(&self, name: &str, e: InstallError) -> Outcome {
        tracing::error!(app = name, error = %e, "update could not proceed");
        let current = current_release(&self.app_dir(name));
        Outcome {
            name: name.to_string(),
            release: String::new(),
            version: 0,
            status: Status::Failed,
            code: "internal".into(),
            message: e.to_string(),
            current: current.clone(),
            previous: current,
            retryable: false,
            ts: self.now(),
        }
    }

    fn switch_and_check(&self, mut j: Journal, progress: ProgressFn<'_>) -> Outcome {
        let doc = j.doc.clone();
        let app_dir = self.app_dir(&doc.name);
        self.report(
            progress,
            &doc,
            Step::Installing,
            100,
            format!("switching current to {}", doc.release),
        );
        if let Err(e) = switch_current(&app_dir, &doc.release) {
            let _ = self.journal.remove(&doc.name);
            return self.finish_outcome(self.outcome(
                &doc,
                Status::Failed,
                "internal",
                format!("{e}; current was left at {:?}", j.previous),
                current_release(&app_dir),
                j.previous.clone(),
                false,
            ));
        }
        if let Err(e) = self.set_phase(&mut j, Phase::Switched) {
            tracing::error!(app = %doc.name, error = %e, "cannot record switch; continuing");
        }
        self.check_and_settle(j, progress)
    }

    /// From `Switched`: restart, health, then done or rolled back.
    fn check_and_settle(&self, mut j: Journal, progress: ProgressFn<'_>) -> Outcome {
        let doc = j.doc.clone();
        let app_dir = self.app_dir(&doc.name);
        self.report(
            progress,
            &doc,
            Step::HealthCheck,
            0,
            if doc.restart_units.is_empty() {
                "checking health (no units to restart)".to_string()
            } else {
                format!(
                    "restarting {} and checking health",
                    doc.restart_units.join(", ")
                )
            },
        );
        let mut verdict = self.restart_units(&doc.restart_units);
        if let Err(e) = self.set_phase(&mut j, Phase::Health) {
            tracing::error!(app = %doc.name, error = %e, "cannot record health phase; continuing");
        }
        if verdict.is_ok() {
            if let Some(h) = &doc.health {
                verdict = self.health_check(h).map_err(|m| ("health_failed", m));
            }
        }
        match verdict {
            Ok(()) => {
                let _ = self.set_phase(&mut j, Phase::Done);
                self.prune(&doc.name, j.previous.as_deref());
                let outcome = self.outcome(
                    &doc,
                    Status::Applied,
                    "applied",
                    format!("release {} is in force", doc.release),
                    Some(doc.release.clone()),
                    j.previous.clone(),
                    false,
                );
                self.finish_journal(outcome)
            }
            Err((code, why)) => match j.previous.clone() {
                Some(prev) if prev != doc.release => {
                    let _ = self.set_phase(&mut j, Phase::RollingBack);
                    self.roll_back(&j, &prev, code, &why)
                }
                _ => {
                    let outcome = self.outcome(
                        &doc,
                        Status::Failed,
                        code,
                        format!(
                            "{why}; there is no previous release to return to, so {} stays in place",
                            doc.release
                        ),
                        current_release(&app_dir),
                        j.previous.clone(),
                        false,
                    );
                    self.finish_journal(outcome)
                }
            },
        }
    }

    fn roll_back(&self, j: &Journal, prev: &str, code: &str, why: &str) -> Outcome {
        let doc = &j.doc;
        let app_dir = self.app_dir(&doc.name);
        let mut message = format!(
            "{why}; switched back to release {prev}, release {} is kept for inspection",
            doc.release
        );
        if let Err(e) = switch_current(&app_dir, prev) {
            message = format!("{why}; switching back to {prev} FAILED: {e}");
            tracing::error!(app = %doc.name, error = %e, "rollback switch failed");
        } else if let Err((_, e)) = self.restart_units(&doc.restart_units) {
            message.push_str(&format!("; restarting after the rollback failed: {e}"));
        }
        let outcome = self.outcome(
            doc,
            Status::RolledBack,
            code,
            message,
            current_release(&app_dir),
            Some(prev.to_string()),
            false,
        );
        self.finish_journal(outcome)
    }

    /// Records the outcome, then drops the journal: in that order, so a crash in between
    /// leaves a `Done`/`RollingBack` journal that recovery settles without repeating work.
    fn finish_journal(&self, outcome: Outcome) -> Outcome {
        let outcome = self.finish_outcome(outcome);
        if let Err(e) = self.journal.remove(&outcome.name) {
            tracing::error!(app = %outcome.name, error = %e, "cannot remove install journal");
        }
        outcome
    }

    fn finish_outcome(&self, outcome: Outcome) -> Outcome {
        if let Err(e) = self
            .store
            .save(&format!("update/outcomes/{}.json", outcome.name), &outcome)
        {
            tracing::error!(app = %outcome.name, error = %e, "cannot record update outcome");
        }
        tracing::info!(app = %outcome.name, release = %outcome.release, status = outcome.status.as_str(), code = %outcome.code, "{}", outcome.message);
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &self,
        doc: &AppDoc,
        status: Status,
        code: &str,
        message: String,
        current: Option<String>,
        previous: Option<String>,
        retryable: bool,
    ) -> Outcome {
        Outcome {
            name: doc.name.clone(),
            release: doc.release.clone(),
            version: doc.version,
            status,
            code: code.to_string(),
            message,
            current,
            previous,
            retryable,
            ts: self.now(),
        }
    }

    /// Finishes or undoes every install a crash interrupted. Call once at start, before any
    /// new install, from the same worker.
    pub fn resume_or_recover(
        &self,
        progress: ProgressFn<'_>,
    ) -> Result<Vec<Recovery>, InstallError> {
        let mut out = vec![];
        for name in self.journal.names()? {
            let Some(j) = self.journal.load(&name)? else {
                continue;
            };
            let app_dir = self.app_dir(&name);
            let current = current_release(&app_dir);
            tracing::info!(app = %name, release = %j.doc.release, phase = ?j.phase, "recovering interrupted install");
            let _ = fs::remove_dir_all(staging_dir(&app_dir, &j.doc.release));
            let release_complete = self.release_dir(&name, &j.doc.release).is_dir();
            match j.phase {
                Phase::Downloading => out.push(Recovery::Resume(j.doc)),
                Phase::Unpacked if current.as_deref() != Some(j.doc.release.as_str()) => {
                    out.push(Recovery::Resume(j.doc))
                }
                Phase::Unpacked | Phase::Switched | Phase::Health if release_complete => {
                    out.push(Recovery::Finished(self.check_and_settle(j, progress)));
                }
                Phase::Unpacked | Phase::Switched | Phase::Health | Phase::RollingBack => {
                    // RollingBack, or a switched release that vanished: go back.
                    match j.previous.clone() {
                        Some(prev) => out.push(Recovery::Finished(self.roll_back(
                            &j,
                            &prev,
                            "health_failed",
                            "the install was interrupted while rolling back",
                        ))),
                        None => {
                            let outcome = self.outcome(
                                &j.doc,
                                Status::Failed,
                                "internal",
                                "the install was interrupted and there is no previous release"
                                    .into(),
                                current,
                                None,
                                false,
                            );
                            out.push(Recovery::Finished(self.finish_journal(outcome)));
                        }
                    }
                }
                Phase::Done => {
                    self.prune(&name, j.previous.as_deref());
                    let outcome = match self.last_outcome(&name) {
                        Some(o) if o.release == j.doc.release => o,
                        _ => self.finish_outcome(self.outcome(
                            &j.doc,
                            Status::Applied,
                            "applied",
                            format!("release {} is in force", j.doc.release),
                            current,
                            j.previous.clone(),
                            false,
                        )),
                    };
                    self.journal.remove(&name)?;
                    out.push(Recovery::Finished(outcome));
                }
            }
        }
        Ok(out)
    }

    pub fn last_outcome(&self, name: &str) -> Option<Outcome> {
        self.store
            .load(&format!("update/outcomes/{name}.json"))
            .ok()
            .flatten()
    }

    fn record_history(&self, name: &str, release: &str) -> Result<(), StateError> {
        let rel = format!("update/history/{name}.json");
        let mut h: Vec<String> = self.store.load(&rel).ok().flatten().unwrap_or_default();
        h.retain(|r| r != release);
        h.push(release.to_string());
        self.store.save(&rel, &h)
    }

    /// Removes releases beyond `keep_releases`, oldest install first; never the current or the
    /// previous one. Failures only cost disk space, so they are logged, not raised.
    fn prune(&self, name: &str, previous: Option<&str>) {
        let app_dir = self.app_dir(name);
        let current = current_release(&app_dir);
        let history: Vec<String> = self
            .store
            .load(&format!("update/history/{name}.json"))
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut on_disk = release_names(&app_dir.join("releases"));
        // Unknown releases (installed by hand, or before history existed) count as oldest.
        on_disk.sort_by_key(|r| history.iter().position(|h| h == r).map_or(0, |p| p + 1));
        let keep = self.cfg.keep_releases.max(1);
        let mut count = on_disk.len();
        for r in on_disk {
            if count <= keep {
                break;
            }
            if Some(r.as_str()) == current.as_deref() || Some(r.as_str()) == previous {
                continue;
            }
            let dir = app_dir.join("releases").join(&r);
            match fs::remove_dir_all(&dir) {
                Ok(()) => {
                    count -= 1;
                    tracing::info!(app = name, release = %r, "pruned old release");
                }
                Err(e) => {
                    tracing::warn!(app = name, release = %r, error = %e, "cannot prune release")
                }
            }
        }
        if let Ok(rd) = fs::read_dir(&app_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".staging-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    fn systemctl(&self, args: &[&str]) -> Result<(), String> {
        let Some((prog, prefix)) = self.cfg.systemctl.split_first() else {
            return Err("commands.systemctl is empty".into());
        };
        let argv: Vec<String> = std::iter::once(prog)
            .chain(prefix)
            .cloned()
            .chain(args.iter().map(|a| a.to_string()))
            .collect();
        run_with_timeout(&argv, self.cfg.command_timeout)
            .map_err(|e| format!("`{} {}` {e}", self.cfg.systemctl.join(" "), args.join(" ")))
    }

    fn restart_units(&self, units: &[String]) -> Result<(), (&'static str, String)> {
        for u in units {
            crate::helper::restart_unit(
                self.cfg.helper.as_ref(),
                &self.cfg.systemctl,
                u,
                self.cfg.command_timeout,
            )
            .map_err(|e| ("restart_failed", e))?;
        }
        Ok(())
    }

    /// Retries until the first success or until `timeout_s` has passed; always at least one
    /// attempt, so `timeout_s: 0` means "check once".
    fn health_check(&self, h: &HealthCheck) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(h.timeout_s());
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let r = match h {
                HealthCheck::Exec { cmd, .. } => match cmd.split_first() {
                    Some(_) => {
                        run_with_timeout(cmd, left).map_err(|e| format!("`{}` {e}", cmd.join(" ")))
                    }
                    None => Err("empty health command".into()),
                },
                HealthCheck::Tcp { addr, .. } => tcp_check(addr, left.min(Duration::from_secs(5))),
                HealthCheck::Unit { unit, .. } => self.systemctl(&["is-active", "--quiet", unit]),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "health check failed after {attempts} attempt(s) in {}s: {e}",
                        h.timeout_s()
                    ));
                }
                Err(_) => std::thread::sleep(self.cfg.health_retry_interval),
            }
        }
    }
}

fn tcp_check(addr: &str, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

/// Runs a command, killing it at `timeout`; success is exit status 0.
fn run_with_timeout(argv: &[String], timeout: Duration) -> Result<(), String> {
    match crate::process::run(argv, timeout, 4096) {
        Ok(f) if f.success => Ok(()),
        Ok(f) => Err(format!("exited with {}", f.status)),
        Err(e) => Err(e.to_string()),
    }
}

fn staging_dir(app_dir: &Path, release: &str) -> PathBuf {
    app_dir.join(format!(".staging-{release}"))
}

/// The release `current` points at, if it is a symlink to `releases/{release}`.
pub fn current_release(app_dir: &Path) -> Option<String> {
    let target = fs::read_link(app_dir.join("current")).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    crate::update::doc::safe_component(&name).then_some(name)
}

/// Points `current` at `releases/{release}` by renaming a fresh symlink over it: readers see
/// the old target or the new, never a missing link.
fn switch_current(app_dir: &Path, release: &str) -> Result<(), InstallError> {
    let link = app_dir.join("current");
    let tmp = app_dir.join(format!(".current.tmp-{}", std::process::id()));
    let err = |source| InstallError::Switch {
        path: link.clone(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("releases").join(release), &tmp).map_err(err)?;
    if let Err(e) = fs::rename(&tmp, &link) {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    crate::state::sync_dir(app_dir).map_err(err)
}

fn release_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| crate::update::doc::safe_component(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every app under `apps_dir` with its releases and the one in force.
pub fn list_releases(apps_dir: &Path) -> Result<Vec<AppReleases>, InstallError> {
    let rd = match fs::read_dir(apps_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(InstallError::Read {
                path: apps_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut apps: Vec<AppReleases> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !crate::config::valid_id(&name) || !e.path().is_dir() {
                return None;
            }
            Some(AppReleases {
                current: current_release(&e.path()),
                releases: release_names(&e.path().join("releases")),
                name,
            })
        })
        .collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(apps)
}

/// The last recorded outcome of every app, for `kioskctl updates`.
pub fn last_outcomes(state_dir: &Path) -> Vec<Outcome> {
    let dir = state_dir.join("update/outcomes");
    let mut v: Vec<Outcome> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a: &Outcome, b| a.name.cmp(&b.name));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_replaces_link_atomically() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("releases/1.0")).unwrap();
        fs::create_dir_all(d.path().join("releases/2.0")).unwrap();
        switch_current(d.path(), "1.0").unwrap();
        assert_eq!(current_release(d.path()).as_deref(), Some("1.0"));
        switch_current(d.path(), "2.0").unwrap();
        assert_eq!(current_release(d.path()).as_deref(), Some("2.0"));
        assert!(d.path().join("current").join(".").is_dir());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary link left: {names:?}");
    }

    #[test]
    fn command_timeout_kills() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = run_with_timeout(&argv(&["sleep", "30"]), Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(run_with_timeout(&argv(&["true"]), Duration::from_secs(5)).is_ok());
        assert!(
            matches!(run_with_timeout(&argv(&["false"]), Duration::from_secs(5)), Err(ref e) if e.contains("exited with exit status: 1"))
        );
    }
}
