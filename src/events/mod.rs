//! Events: faults, recoveries, security refusals — everything the platform must not miss.
//!
//! Owns the event sequence number and the durable outbox (`{state_dir}/events/`, see
//! [`Outbox`]: the queue and its delivery bookkeeping in one owner). `emit` never waits for the
//! disk; every event is appended (fsync) by the outbox's writer before anyone is told about it,
//! so a broker outage, an agent restart or a crash loses nothing; the transport publishes the
//! unacknowledged tail in order and tells the outbox what the broker confirmed (at least once). The queue is bounded: when it is full
//! the oldest tenth is dropped in one go and an `events.dropped` event says how many and which
//! `seq` range went missing. A torn or corrupt queue file is read as far as it makes sense; the
//! rest is reported in an `events.recovered` event, never a crash loop.
//!
//! It also fans out lines to local-socket subscribers (`subscribe`): every event, plus local
//! notices such as `catalog.updated` or `power.warning` that are not platform events.

mod outbox;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::host::{SharedClock, rfc3339};
use crate::state::StateError;
pub use outbox::{Dropped, Outbox, Producer, Record, Recovery};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[serde(alias = "low")]
    Info,
    #[serde(alias = "medium")]
    Minor,
    #[serde(alias = "high")]
    Major,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Severity {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "critical" => Some(Self::Critical),
            "major" => Some(Self::Major),
            "minor" => Some(Self::Minor),
            "info" => Some(Self::Info),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Major => "major",
            Self::Minor => "minor",
            Self::Info => "info",
        }
    }
}

/// An event exactly as published on `P/t/{id}/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: String,
    pub terminal_id: String,
    pub seq: u64,
    pub ts: String,
    pub severity: Severity,
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Value,
    /// Fault grade P1 (worst) … P4: a device's own grade when the event is about one,
    /// else the grade of the severity (critical P1, major P2, minor P3, info P4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl Record for Event {
    fn seq(&self) -> u64 {
        self.seq
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("event queue {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The handle every capability uses to raise an event or a local notice. Cheap to clone.
///
/// `emit` never waits for the disk: it assigns the seq, queues the event in the outbox and
/// returns; the outbox's writer makes it durable, and only then is it published and shown to
/// local subscribers.
#[derive(Clone)]
pub struct EventSink {
    outbox: Outbox<Event>,
    recent: Arc<Mutex<Recent>>,
    terminal_id: Arc<str>,
    clock: SharedClock,
    local: broadcast::Sender<Arc<str>>,
}

struct Recent {
    events: VecDeque<Event>,
    max: usize,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    pub fn new(
        outbox: Outbox<Event>,
        terminal_id: &str,
        clock: SharedClock,
        recent_max: usize,
    ) -> Self {
        let (local, _) = broadcast::channel(256);
        Self {
            outbox,
            recent: Arc::new(Mutex::new(Recent {
                events: VecDeque::new(),
                max: recent_max.max(1),
            })),
            terminal_id: terminal_id.into(),
            clock,
            local,
        }
    }

    /// The outbox the transport drains.
    pub fn outbox(&self) -> Outbox<Event> {
        self.outbox.clone()
    }

    fn recent_lock(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises an event: queued for disk at once, published once durable and connected. The
    /// journal and socket subscribers (a live view, not a delivery) hear of it at once. Returns
    /// the event with its seq.
    pub fn emit(
        &self,
        severity: Severity,
        code: &str,
        message: impl Into<String>,
        details: Value,
    ) -> Option<Event> {
        let message = message.into();
        let stored = {
            let mut ob = self.outbox.lock();
            let ev = self.make(ob.next_seq(), severity, code, message, details);
            match ob.push(ev.clone()) {
                None => vec![ev],
                Some(Dropped { count, first, last }) => {
                    let dropped = self.make(
                        ob.next_seq(),
                        Severity::Major,
                        "events.dropped",
                        format!(
                            "event queue full: {count} oldest events dropped (seq {first}..={last})"
                        ),
                        json!({"count": count, "first_seq": first, "last_seq": last}),
                    );
                    ob.push(dropped.clone());
                    vec![ev, dropped]
                }
            }
        };
        let mut recent = self.recent_lock();
        for ev in &stored {
            recent.events.push_back(ev.clone());
        }
        while recent.events.len() > recent.max {
            recent.events.pop_front();
        }
        drop(recent);
        for ev in &stored {
            log_event(ev);
            if let Ok(line) = serde_json::to_string(ev) {
                let _ = self.local.send(line.into());
            }
        }
        stored.into_iter().next()
    }

    /// Waits until every event emitted so far is on disk.
    pub async fn flush(&self) {
        self.outbox.flush().await;
    }

    fn make(
        &self,
        seq: u64,
        severity: Severity,
        code: &str,
        message: String,
        details: Value,
    ) -> Event {
        let level = details
            .get("level")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                crate::telemetry::Grade::from_severity(severity)
                    .as_str()
                    .to_string()
            });
        Event {
            level: Some(level),
            id: format!("{}-{}", self.terminal_id, seq),
            terminal_id: self.terminal_id.to_string(),
            seq,
            ts: rfc3339(self.clock.now()),
            severity,
            code: code.to_string(),
            message,
            details: if details.is_null() {
                json!({})
            } else {
                details
            },
        }
    }

    /// A local notice for socket subscribers only (not a platform event, not persisted).
    pub fn notice(&self, code: &str, message: impl Into<String>, details: Value) {
        let line = json!({
            "code": code,
            "ts": rfc3339(self.clock.now()),
            "message": message.into(),
            "details": details,
        });
        let _ = self.local.send(line.to_string().into());
    }

    pub fn subscribe_local(&self) -> broadcast::Receiver<Arc<str>> {
        self.local.subscribe()
    }

    /// The most recent events (newest last), delivered or not.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let r = self.recent_lock();
        let skip = r.events.len().saturating_sub(n);
        r.events.iter().skip(skip).cloned().collect()
    }

    pub fn pending(&self) -> usize {
        self.outbox.pending()
    }

    /// Up to `n` events not yet acknowledged, oldest first.
    pub fn unacked_head(&self, n: usize) -> Vec<Event> {
        self.outbox.unacked_head(n)
    }
}

fn log_event(ev: &Event) {
    match ev.severity {
        Severity::Critical | Severity::Major => {
            tracing::warn!(code = %ev.code, seq = ev.seq, "{}", ev.message)
        }
        _ => tracing::info!(code = %ev.code, seq = ev.seq, "{}", ev.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FixedClock;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::path::Path;

    fn sink(dir: &Path, cap: usize) -> (EventSink, Recovery) {
        let (ob, rec) = Outbox::open(dir, cap).unwrap();
        let clock = Arc::new(FixedClock::new("2026-11-29T08:00:00Z".parse().unwrap()));
        (EventSink::new(ob, "t1", clock, 50), rec)
    }

    #[test]
    fn seq_survives_restart_and_unacked_are_kept_in_order() {
        let d = tempfile::tempdir().unwrap();
        {
            let (s, _) = sink(d.path(), 100);
            for i in 0..5 {
                s.emit(
                    Severity::Minor,
                    "probe.failed",
                    format!("e{i}"),
                    Value::Null,
                );
            }
            s.outbox().delivered(2); // out of order: does not move the prefix
            s.outbox().delivered(1);
        }
        let (s, rec) = sink(d.path(), 100);
        assert_eq!(rec.pending, 3);
        let head: Vec<u64> = s.unacked_head(10).iter().map(|e| e.seq).collect();
        assert_eq!(head, vec![3, 4, 5]);
        let e = s.emit(Severity::Info, "x", "after", Value::Null).unwrap();
        assert_eq!(e.seq, 6);
    }

    #[test]
    fn full_queue_drops_oldest_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = sink(d.path(), 10);
        for i in 0..10 {
            s.emit(
                Severity::Minor,
                "probe.failed",
                format!("e{i}"),
                Value::Null,
            );
        }
        s.emit(Severity::Minor, "probe.failed", "overflow", Value::Null);
        let head = s.unacked_head(100);
        assert_eq!(head.first().unwrap().seq, 3, "oldest dropped");
        let dropped = head.iter().find(|e| e.code == "events.dropped").unwrap();
        assert_eq!(dropped.details["count"], 2);
        assert_eq!(dropped.details["last_seq"], 2);
        assert_eq!(head.len(), 10);
        assert_eq!(dropped.details["first_seq"], 1);
        assert_eq!(head.last().unwrap().seq, 12);
    }

    #[test]
    fn torn_tail_is_survived() {
        let d = tempfile::tempdir().unwrap();
        {
            let (s, _) = sink(d.path(), 100);
            s.emit(Severity::Minor, "a", "one", Value::Null);
            s.emit(Severity::Minor, "b", "two", Value::Null);
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join("queue.jsonl"))
            .unwrap();
        f.write_all(b"{\"id\":\"t1-3\",\"seq\":3,\"ts\"").unwrap();
        drop(f);
        let (s, rec) = sink(d.path(), 100);
        assert_eq!(rec.corrupt_lines, 1);
        assert_eq!(rec.pending, 2);
        assert_eq!(
            s.emit(Severity::Info, "c", "three", Value::Null)
                .unwrap()
                .seq,
            3
        );
        drop(s);
        let (_, rec) = sink(d.path(), 100);
        assert_eq!(
            (rec.pending, rec.corrupt_lines),
            (3, 0),
            "rewritten cleanly"
        );
    }

    /// Figures, not a check: what raising events costs the caller, and how long until they are
    /// on disk. `cargo test --lib events::tests::emit_figures -- --ignored --nocapture`
    #[tokio::test]
    #[ignore]
    async fn emit_figures() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = sink(d.path(), 20_000);
        let n = 5_000u32;
        let t0 = std::time::Instant::now();
        let mut worst = std::time::Duration::ZERO;
        for i in 0..n {
            let t = std::time::Instant::now();
            s.emit(Severity::Info, "bench", format!("e{i}"), Value::Null);
            worst = worst.max(t.elapsed());
        }
        let emitted = t0.elapsed();
        s.flush().await;
        let durable = t0.elapsed();
        println!(
            "{n} events: emit {:.1} µs each on average (worst {} µs), all on disk after {} ms",
            emitted.as_secs_f64() * 1e6 / f64::from(n),
            worst.as_micros(),
            durable.as_millis()
        );
    }
}
