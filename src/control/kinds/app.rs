//! `app/{name}`: an application release. The installer worker does the work and reports the
//! final state later; this capability owns the rollout waves (docs/protocol.md §8): a release
//! whose wave has not opened for this terminal waits here, downloading nothing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Applied, ApplyError, At, Capability, Restore, Status};
use crate::control::Deps;
use crate::host::rfc3339;
use crate::state::StateStore;
use crate::trust::Role;
use crate::update::worker::Report as UpdateReport;
use crate::update::{AppDoc, Status as UpdateStatus};

const ROLLOUTS: &str = "control/rollouts.json";
/// A wait for a rollout wave re-reads the clock at least this often, so a step is noticed.
const WAVE_STEP: std::time::Duration = std::time::Duration::from_secs(30);

/// An application release held back until this terminal's rollout wave opens (PROTOCOL §8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaveWait {
    pub name: String,
    pub release: String,
    pub version: u64,
    pub target: String,
    /// 1-based wave that includes this terminal; `None` when no wave does.
    pub wave: Option<usize>,
    pub waves: usize,
    pub position: f64,
    /// When that wave opens (UTC, RFC 3339); `None` when no wave includes this terminal.
    pub not_before: Option<String>,
}

impl WaveWait {
    fn details(&self) -> Value {
        json!({
            "release": self.release,
            "wave": self.wave,
            "waves": self.waves,
            "position": self.position,
            "not_before": self.not_before,
        })
    }

    fn opens(&self) -> Option<jiff::Timestamp> {
        self.not_before.as_deref().and_then(|t| t.parse().ok())
    }
}

/// Releases waiting for their wave, for `kioskctl updates` (read from the control record).
pub fn waiting_rollouts(state_dir: &std::path::Path) -> Vec<WaveWait> {
    StateStore::open(state_dir)
        .ok()
        .and_then(|s| {
            s.load::<BTreeMap<String, WaveWait>>(ROLLOUTS)
                .ok()
                .flatten()
        })
        .map(|m| m.into_values().collect())
        .unwrap_or_default()
}

pub struct Apps {
    /// `app/{name}` → release waiting for its rollout wave.
    rollouts: BTreeMap<String, WaveWait>,
}

impl Apps {
    pub fn load(d: &Deps) -> Self {
        let rollouts = match d.store.load(ROLLOUTS) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "rollout waits unreadable; waits are planned again");
                BTreeMap::new()
            }
        };
        Self { rollouts }
    }

    fn save(&self, d: &Deps) {
        if let Err(e) = d.store.save(ROLLOUTS, &self.rollouts) {
            tracing::error!(error = %e, "cannot persist rollout waits");
        }
    }
}

impl Capability for Apps {
    type Doc = AppDoc;
    const ROLE: Role = Role::App;

    fn parse(&self, _d: &Deps, at: &At, payload: &[u8]) -> Result<AppDoc, String> {
        let doc = AppDoc::parse(payload).map_err(|e| e.to_string())?;
        if doc.name != at.name {
            return Err(format!(
                "name {:?} does not match the topic's app {:?}",
                doc.name, at.name
            ));
        }
        Ok(doc)
    }

    /// Hands the release to the installer, unless its rollout wave has not opened for this
    /// terminal yet: then nothing is downloaded and the release waits (a newer document for
    /// the same app replaces the wait).
    fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        a: &AppDoc,
        _fresh: bool,
    ) -> Result<Applied, ApplyError> {
        let now = d.clock.now();
        if let Some(r) = &a.rollout {
            let p = r.place(&d.cfg.terminal.id, &a.name, &a.release);
            if p.not_before.is_none_or(|t| t > now) {
                let w = WaveWait {
                    name: a.name.clone(),
                    release: a.release.clone(),
                    version: at.version,
                    target: at.target.to_string(),
                    wave: p.wave.map(|i| i + 1),
                    waves: r.waves.len(),
                    position: p.position,
                    not_before: p.not_before.map(rfc3339),
                };
                let msg = match (&w.wave, &w.not_before) {
                    (Some(n), Some(t)) => format!(
                        "release {} waits for rollout wave {n} of {}, opening {t}",
                        a.release, w.waves
                    ),
                    _ => format!(
                        "release {}: no rollout wave includes this terminal (position {:.4})",
                        a.release, w.position
                    ),
                };
                let details = w.details();
                self.rollouts.insert(at.kind.to_string(), w);
                self.save(d);
                return Ok(Applied::new(Status::WaitingWave, msg, details));
            }
        }
        if self.rollouts.remove(at.kind).is_some() {
            self.save(d);
        }
        d.updates.install(a.clone());
        Ok(Applied::new(
            Status::InProgress,
            format!("release {} queued for installation", a.release),
            json!({"release": a.release, "phase": "queued"}),
        ))
    }

    /// An installed release is what the installer's journal says; one held for its wave never
    /// reached the installer, so it is planned again.
    fn restore(&self, at: &At) -> Restore {
        if self.rollouts.contains_key(at.kind) {
            Restore::Apply
        } else {
            Restore::Adopt
        }
    }

    /// Until the earliest wave opens, in capped steps.
    fn next_due(&self, d: &Deps) -> Option<std::time::Duration> {
        if self.rollouts.is_empty() {
            return None;
        }
        let now = d.clock.now();
        let wait = self
            .rollouts
            .values()
            .filter_map(WaveWait::opens)
            .map(|t| {
                std::time::Duration::try_from(t.duration_since(now))
                    .unwrap_or(std::time::Duration::ZERO)
            })
            .min()
            .unwrap_or(WAVE_STEP)
            .clamp(std::time::Duration::from_millis(50), WAVE_STEP);
        Some(wait)
    }

    fn due(&mut self, d: &Deps) -> Vec<String> {
        let now = d.clock.now();
        self.rollouts
            .iter()
            .filter(|(_, w)| w.opens().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn forget(&mut self, d: &Deps, kind: &str) {
        if self.rollouts.remove(kind).is_some() {
            self.save(d);
        }
    }
}

/// An installer report turned into `reported/app`, thinned: download progress comes per
/// percent, the platform needs a step every 10 % (and every phase change), not a hundred
/// retained messages per install.
#[derive(Default)]
pub struct Progress {
    /// (app, phase) → last percent reported.
    last: HashMap<(String, Option<crate::update::Step>), u8>,
}

/// What control reports for an installer message.
pub struct AppReport {
    pub kind: String,
    pub version: u64,
    pub status: &'static str,
    pub message: String,
    pub details: Value,
    /// The final outcome, when this report ends the install.
    pub done: Option<crate::update::Outcome>,
}

impl Progress {
    /// `None`: too small a step to report.
    pub fn report(&mut self, r: UpdateReport) -> Option<AppReport> {
        match r {
            UpdateReport::Progress(p) => {
                let key = (p.name.clone(), p.step);
                let last = self.last.get(&key).copied();
                if p.status == UpdateStatus::InProgress
                    && p.percent != 100
                    && last.is_some_and(|l| p.percent < l.saturating_add(10))
                {
                    return None;
                }
                self.last.insert(key, p.percent);
                Some(AppReport {
                    kind: format!("app/{}", p.name),
                    version: p.version,
                    status: p.status.as_str(),
                    details: json!({"release": p.release, "phase": p.step, "percent": p.percent}),
                    message: p.message,
                    done: None,
                })
            }
            UpdateReport::Done(o) => {
                self.last.retain(|(name, _), _| *name != o.name);
                Some(AppReport {
                    kind: format!("app/{}", o.name),
                    version: o.version,
                    status: o.status.as_str(),
                    message: o.message.clone(),
                    details: json!({"release": o.release, "code": o.code, "current": o.current, "previous": o.previous}),
                    done: Some(o),
                })
            }
        }
    }
}
