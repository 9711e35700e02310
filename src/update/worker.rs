//! The update worker: one install per app at a time, apps side by side, each downloaded and
//! verified at once and switched over only inside its maintenance window (in the schedule's
//! time zone).
//! Progress and outcomes go back to the caller as `Report`s; it never publishes by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::tz::TimeZone;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    AppDoc, Installer, InstallerConfig, Outcome, Progress, Recovery, in_window, next_opening,
};
use crate::host::SharedClock;

#[derive(Debug, Clone)]
pub enum Report {
    Progress(Progress),
    Done(Outcome),
}

#[derive(Clone, Debug)]
pub struct UpdateHandle {
    tx: mpsc::UnboundedSender<AppDoc>,
}

impl UpdateHandle {
    pub fn install(&self, doc: AppDoc) {
        let _ = self.tx.send(doc);
    }
}

/// The zone a window is read in: the power schedule's when one is in force.
pub type ZoneFn = Arc<dyn Fn() -> TimeZone + Send + Sync>;

pub struct UpdateWorker {
    installer: Arc<Installer>,
    rx: mpsc::UnboundedReceiver<AppDoc>,
    reports: mpsc::UnboundedSender<Report>,
    clock: SharedClock,
    zone: ZoneFn,
}

/// Longest single sleep while waiting for a window, so a clock step is noticed.
const WINDOW_STEP: Duration = Duration::from_secs(30);

/// The install of one app in flight.
struct Running {
    /// Cancelled when a newer document for the app arrives (or on shutdown).
    token: CancellationToken,
    /// Seen by the blocking download between reads.
    stop: Arc<AtomicBool>,
}

impl UpdateWorker {
    pub fn new(
        cfg: InstallerConfig,
        clock: SharedClock,
        zone: ZoneFn,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<(Self, UpdateHandle), super::InstallError> {
        let installer = Arc::new(Installer::new(cfg, clock.clone())?);
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                installer,
                rx,
                reports,
                clock,
                zone,
            },
            UpdateHandle { tx },
        ))
    }

    pub fn installer(&self) -> Arc<Installer> {
        self.installer.clone()
    }

    /// One install per app at a time, apps side by side: a stalled download of one app never
    /// holds back another's. A newer document for an app cancels the install in flight (at
    /// the next read of its download, or while it waits for its window) and starts once that
    /// one has stopped; a newer one still replaces the waiting one. On shutdown every download
    /// is told to stop and nothing waits for it: the journal and the partial file resume it.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut start: Vec<AppDoc> = Vec::new();
        // Finish or undo whatever a crash interrupted before taking new work.
        let inst = self.installer.clone();
        let tx = self.reports.clone();
        let recovered = tokio::task::spawn_blocking(move || {
            inst.resume_or_recover(&mut |p| {
                let _ = tx.send(Report::Progress(p));
            })
        });
        let recovered = tokio::select! {
            _ = cancel.cancelled() => return,
            r = recovered => r,
        };
        match recovered {
            Ok(Ok(list)) => {
                for r in list {
                    match r {
                        Recovery::Finished(o) => {
                            let _ = self.reports.send(Report::Done(o));
                        }
                        Recovery::Resume(doc) => start.push(doc),
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "update recovery failed"),
            Err(e) => tracing::error!(error = %e, "update recovery task failed"),
        }
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut waiting: HashMap<String, AppDoc> = HashMap::new();
        let mut tasks: JoinSet<String> = JoinSet::new();
        for doc in start {
            self.spawn(doc, &mut running, &mut tasks, &cancel);
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                d = self.rx.recv() => match d {
                    None => break,
                    Some(doc) => match running.get(&doc.name) {
                        Some(r) => {
                            tracing::info!(app = %doc.name, release = %doc.release, "a newer document supersedes the install in flight");
                            r.token.cancel();
                            r.stop.store(true, Ordering::Relaxed);
                            waiting.insert(doc.name.clone(), doc);
                        }
                        None => self.spawn(doc, &mut running, &mut tasks, &cancel),
                    },
                },
                Some(done) = tasks.join_next() => {
                    let name = match done {
                        Ok(name) => name,
                        Err(e) => {
                            tracing::error!(error = %e, "update task failed");
                            continue;
                        }
                    };
                    running.remove(&name);
                    if let Some(doc) = waiting.remove(&name) {
                        self.spawn(doc, &mut running, &mut tasks, &cancel);
                    }
                }
            }
        }
        for r in running.values() {
            r.stop.store(true, Ordering::Relaxed);
        }
        tasks.abort_all();
    }

    fn spawn(
        &self,
        doc: AppDoc,
        running: &mut HashMap<String, Running>,
        tasks: &mut JoinSet<String>,
        cancel: &CancellationToken,
    ) {
        let r = Running {
            token: cancel.child_token(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let job = Job {
            installer: self.installer.clone(),
            reports: self.reports.clone(),
            clock: self.clock.clone(),
            zone: self.zone.clone(),
            token: r.token.clone(),
            stop: r.stop.clone(),
        };
        running.insert(doc.name.clone(), r);
        tasks.spawn(async move {
            let name = doc.name.clone();
            job.process(doc).await;
            name
        });
    }
}

/// What one app's install task works with.
struct Job {
    installer: Arc<Installer>,
    reports: mpsc::UnboundedSender<Report>,
    clock: SharedClock,
    zone: ZoneFn,
    token: CancellationToken,
    stop: Arc<AtomicBool>,
}

impl Job {
    async fn process(self, doc: AppDoc) {
        let inst = self.installer.clone();
        let tx = self.reports.clone();
        let d = doc.clone();
        let stop = self.stop.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            inst.prepare_with(&d, Some(stop), &mut |p| {
                let _ = tx.send(Report::Progress(p));
            })
        });
        // Superseded: the download stops at its next read; wait for that, so the newer
        // document never shares the partial file with a writer.
        let prepared = prepared.await;
        if self.token.is_cancelled() {
            return;
        }
        match prepared {
            Ok(Ok(())) => {}
            Ok(Err(outcome)) => {
                let _ = self.reports.send(Report::Done(*outcome));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "update task failed");
                return;
            }
        }
        if let Some(w) = &doc.window {
            let mut announced = false;
            loop {
                let tz = (self.zone)();
                let now = self.clock.now();
                if in_window(w, now, &tz) {
                    break;
                }
                let opens = next_opening(w, now, &tz);
                if !announced {
                    let _ = self
                        .reports
                        .send(Report::Progress(Progress::waiting_window(&doc, opens)));
                    announced = true;
                }
                let wait = opens
                    .duration_since(now)
                    .try_into()
                    .unwrap_or(WINDOW_STEP)
                    .min(WINDOW_STEP)
                    .max(Duration::from_millis(100));
                tokio::select! {
                    _ = self.token.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        let inst = self.installer.clone();
        let tx = self.reports.clone();
        let name = doc.name.clone();
        match tokio::task::spawn_blocking(move || {
            inst.activate(&name, &mut |p| {
                let _ = tx.send(Report::Progress(p));
            })
        })
        .await
        {
            Ok(outcome) => {
                let _ = self.reports.send(Report::Done(outcome));
            }
            Err(e) => tracing::error!(error = %e, "update task failed"),
        }
    }
}
