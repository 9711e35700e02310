//! The patrol runner: gathers the report from the running parts through their handles (probes
//! from telemetry, compliance, schedule, identity), daily at `patrol.at` (or before opening)
//! and on request (`PatrolHandle`), records it and publishes it retained. It alone owns the
//! history directory.

use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Compliance, PatrolInputs, PatrolItem, PatrolReport, PatrolRequest, PatrolStore, build,
    next_patrol,
};
use crate::host::{SharedClock, parse_time};
use crate::policy::worker::PolicyHandle;
use crate::power::PowerHandle;
use crate::telemetry::TelemetryHandle;
use crate::transport::Publisher;

pub struct PatrolRunner {
    pub store: PatrolStore,
    pub telemetry: TelemetryHandle,
    pub policy: PolicyHandle,
    pub power: PowerHandle,
    pub publisher: Publisher,
    pub clock: SharedClock,
    pub started: Instant,
    pub at: Option<String>,
    pub rx: mpsc::UnboundedReceiver<PatrolRequest>,
    pub identity: crate::identity::IdentityHandle,
}

/// Longest sleep before the clock is read again (NTP steps, resume).
const STEP: Duration = Duration::from_secs(60);

impl PatrolRunner {
    fn zone(&self) -> TimeZone {
        self.power
            .schedule()
            .and_then(|s| TimeZone::get(s.timezone()).ok())
            .unwrap_or_else(TimeZone::system)
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut last_due = None;
        loop {
            let now = self.clock.now();
            let next_on = self.power.status().next_on.as_deref().and_then(parse_time);
            let due = match next_patrol(now, self.at.as_deref(), &self.zone(), next_on) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot plan the daily patrol");
                    now + jiff::SignedDuration::from_hours(24)
                }
            };
            let wait = due
                .duration_since(now)
                .try_into()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(200), STEP);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {
                    if self.clock.now() >= due && last_due != Some(due) {
                        last_due = Some(due);
                        self.patrol(true).await;
                    }
                }
                req = self.rx.recv() => match req {
                    Some(PatrolRequest::Run { publish, reply }) => {
                        let r = self.patrol(publish).await;
                        let _ = reply.send(r);
                    }
                    Some(PatrolRequest::History { days, reply }) => {
                        let h = self.store.history(self.clock.now(), days).map_err(|e| e.to_string());
                        let _ = reply.send(h);
                    }
                    None => break,
                },
            }
        }
    }

    async fn patrol(&mut self, publish: bool) -> Option<PatrolReport> {
        let probes = self.telemetry.run_probes().await;
        let status = self.power.status();
        let now = self.clock.now();
        let mut items: Vec<PatrolItem> = probes
            .iter()
            .map(|r| PatrolItem::from_probe(r, r.level))
            .collect();
        let cert = self.identity.status();
        if let Some(na) = cert.not_after.as_deref().and_then(parse_time) {
            items.push(super::cert_item(na, cert.renewal.is_some(), now));
        }
        if let Some(t) = self.telemetry.last_time() {
            items.push(super::clock_item(t.synchronized, t.max_error_ms));
        }
        let inputs = PatrolInputs {
            ts: now,
            items,
            compliance: self.policy.last().map(|r| Compliance {
                version: r.version.to_string(),
                passed: u32::try_from(r.passed).unwrap_or(u32::MAX),
                failed: u32::try_from(r.failed).unwrap_or(u32::MAX),
            }),
            next_on: status.next_on.as_deref().and_then(parse_time),
            next_off: status.next_off.as_deref().and_then(parse_time),
            agent_version: crate::VERSION.to_string(),
            uptime_s: self.started.elapsed().as_secs(),
        };
        if !publish {
            return Some(build(inputs, self.store.next_seq()));
        }
        match self.store.record(inputs) {
            Ok(report) => {
                match serde_json::to_value(&report) {
                    Ok(v) => {
                        self.publisher.patrol(&v);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode the patrol report"),
                }
                tracing::info!(seq = report.seq, "patrol report recorded");
                Some(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the patrol report");
                None
            }
        }
    }
}
