//! The update worker: one install at a time, in arrival order, each downloaded and verified
//! at once and switched over only inside its maintenance window (in the schedule's time zone).
//! Progress and outcomes go back to the caller as `Report`s; it never publishes by itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::tz::TimeZone;
use tokio::sync::mpsc;
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
    stop: Arc<AtomicBool>,
}

/// Longest single sleep while waiting for a window, so a clock step is noticed.
const WINDOW_STEP: Duration = Duration::from_secs(30);

impl UpdateWorker {
    pub fn new(
        mut cfg: InstallerConfig,
        clock: SharedClock,
        zone: ZoneFn,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<(Self, UpdateHandle), super::InstallError> {
        let stop = Arc::new(AtomicBool::new(false));
        cfg.fetch.cancel = Some(stop.clone());
        let installer = Arc::new(Installer::new(cfg, clock.clone())?);
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                installer,
                rx,
                reports,
                clock,
                zone,
                stop,
            },
            UpdateHandle { tx },
        ))
    }

    pub fn installer(&self) -> Arc<Installer> {
        self.installer.clone()
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut queue: VecDeque<AppDoc> = VecDeque::new();
        // Finish or undo whatever a crash interrupted before taking new work.
        let inst = self.installer.clone();
        let tx = self.reports.clone();
        let recovered = tokio::task::spawn_blocking(move || {
            inst.resume_or_recover(&mut |p| {
                let _ = tx.send(Report::Progress(p));
            })
        })
        .await;
        match recovered {
            Ok(Ok(list)) => {
                for r in list {
                    match r {
                        Recovery::Finished(o) => {
                            let _ = self.reports.send(Report::Done(o));
                        }
                        Recovery::Resume(doc) => queue.push_back(doc),
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "update recovery failed"),
            Err(e) => tracing::error!(error = %e, "update recovery task failed"),
        }
        loop {
            let doc = match queue.pop_front() {
                Some(d) => d,
                None => tokio::select! {
                    _ = cancel.cancelled() => break,
                    d = self.rx.recv() => match d { Some(d) => d, None => break },
                },
            };
            // A newer document for the same app replaces a queued older one.
            queue.retain(|q| q.name != doc.name);
            if let Some(newer) = self.process(doc, &mut queue, &cancel).await {
                queue.push_front(newer);
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Runs one install. Returns a newer document for the same app that arrived while this one
    /// waited for its window (it supersedes this one).
    async fn process(
        &mut self,
        doc: AppDoc,
        queue: &mut VecDeque<AppDoc>,
        cancel: &CancellationToken,
    ) -> Option<AppDoc> {
        let inst = self.installer.clone();
        let tx = self.reports.clone();
        let d = doc.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            inst.prepare(&d, &mut |p| {
                let _ = tx.send(Report::Progress(p));
            })
        })
        .await;
        match prepared {
            Ok(Ok(())) => {}
            Ok(Err(outcome)) => {
                let _ = self.reports.send(Report::Done(*outcome));
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "update task failed");
                return None;
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
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                    d = self.rx.recv() => match d {
                        Some(d) if d.name == doc.name => return Some(d),
                        Some(d) => queue.push_back(d),
                        None => return None,
                    },
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
        None
    }
}
