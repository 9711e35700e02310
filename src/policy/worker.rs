//! The policy worker: holds the policy in force, evaluates it on receipt, every
//! `policy.interval_s` and on request, one scan at a time (remediation mutates the host), keeps
//! the compliance `seq` across restarts and hands each report and its transitions to the caller.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{ComplianceReport, Engine, FsRemediator, Policy, Transition, transitions};
use crate::host::{HostPaths, SharedClock};
use crate::state::StateStore;

/// What a finished scan produced: the report and what changed since the previous one.
#[derive(Debug, Clone)]
pub struct Scan {
    pub report: ComplianceReport,
    pub transitions: Vec<Transition>,
}

enum Msg {
    SetPolicy(Box<Policy>, Arc<Vec<u8>>),
    Scan(Option<oneshot::Sender<Option<Scan>>>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    seq: u64,
    last: Option<ComplianceReport>,
}

const FILE: &str = "compliance.json";

#[derive(Clone)]
pub struct PolicyHandle {
    tx: mpsc::UnboundedSender<Msg>,
    last: Arc<Mutex<Option<ComplianceReport>>>,
}

impl PolicyHandle {
    pub fn set_policy(&self, policy: Policy) {
        self.set_signed_policy(policy, Vec::new());
    }

    /// The policy in force with its DSSE envelope as received: the privileged helper
    /// re-verifies it before a remediation.
    pub fn set_signed_policy(&self, policy: Policy, envelope: Vec<u8>) {
        let _ = self
            .tx
            .send(Msg::SetPolicy(Box::new(policy), Arc::new(envelope)));
    }

    /// Runs a scan now and waits for it; `None` when no policy is in force.
    pub async fn scan(&self) -> Option<Scan> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Scan(Some(tx))).ok()?;
        rx.await.ok().flatten()
    }

    pub fn last(&self) -> Option<ComplianceReport> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub struct PolicyWorker<F> {
    rx: mpsc::UnboundedReceiver<Msg>,
    host: HostPaths,
    store: StateStore,
    clock: SharedClock,
    interval: Duration,
    policy: Option<Arc<Policy>>,
    envelope: Arc<Vec<u8>>,
    helper: Option<crate::helper::Client>,
    persisted: Persisted,
    last: Arc<Mutex<Option<ComplianceReport>>>,
    on_scan: F,
    deadlines: super::engine::Deadlines,
}

impl<F: FnMut(&Scan) + Send + 'static> PolicyWorker<F> {
    /// `on_scan` publishes the report and raises events; it runs on the worker's task.
    pub fn new(
        host: HostPaths,
        store: StateStore,
        clock: SharedClock,
        interval: Duration,
        on_scan: F,
    ) -> (Self, PolicyHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let persisted: Persisted = match store.load(FILE) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "compliance record unreadable; seq restarts from the last known value");
                Persisted::default()
            }
        };
        let last = Arc::new(Mutex::new(persisted.last.clone()));
        (
            Self {
                rx,
                host,
                store,
                clock,
                interval,
                policy: None,
                envelope: Arc::new(Vec::new()),
                helper: None,
                persisted,
                last: last.clone(),
                on_scan,
                deadlines: Default::default(),
            },
            PolicyHandle { tx, last },
        )
    }

    /// Per-check and per-scan deadlines (config `policy.check_timeout_s`, `scan_timeout_s`).
    pub fn with_deadlines(mut self, deadlines: super::engine::Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Remediations and the accounts rule's root-only read go to the privileged helper.
    pub fn with_helper(mut self, helper: Option<crate::helper::Client>) -> Self {
        self.helper = helper;
        self
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let reply = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => None,
                msg = self.rx.recv() => match msg {
                    None => break,
                    Some(Msg::SetPolicy(p, envelope)) => {
                        self.policy = Some(Arc::new(*p));
                        self.envelope = envelope;
                        tick.reset();
                        None
                    }
                    Some(Msg::Scan(reply)) => reply,
                },
            };
            let scan = self.scan().await;
            if let Some(r) = reply {
                let _ = r.send(scan);
            }
        }
    }

    async fn scan(&mut self) -> Option<Scan> {
        let policy = self.policy.clone()?;
        let seq = self.persisted.seq + 1;
        let host = self.host.clone();
        let now = self.clock.now();
        let deadlines = self.deadlines;
        let helper = self.helper.clone();
        let envelope = self.envelope.clone();
        let report = tokio::task::spawn_blocking(move || {
            let mut engine = Engine::new(host.clone()).with_deadlines(deadlines);
            if let Some(c) = helper {
                engine = engine
                    .with_runner(Arc::new(crate::helper::HelperRunner::new(c.clone())))
                    .with_fixer(Arc::new(crate::helper::HelperFixer::new(c, envelope)));
            }
            let remediator = FsRemediator::new(host);
            engine.evaluate(&policy, &remediator, true, seq, now)
        })
        .await
        .ok()?;
        let scan = Scan {
            transitions: transitions(self.persisted.last.as_ref(), &report),
            report,
        };
        self.persisted.seq = seq;
        self.persisted.last = Some(scan.report.clone());
        if let Err(e) = self.store.save(FILE, &self.persisted) {
            tracing::error!(error = %e, "cannot persist the compliance seq");
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(scan.report.clone());
        (self.on_scan)(&scan);
        Some(scan)
    }
}
