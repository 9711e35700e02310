//! Events: faults, recoveries, security refusals — everything the platform must not miss.
//!
//! Owns the event sequence number and the durable outbox (`{state_dir}/events/`). Every event is
//! appended to disk (fsync) before anyone is told about it, so a broker outage, an agent restart
//! or a crash loses nothing; the transport publishes the unacknowledged tail in order and
//! acknowledges what the broker confirmed (at least once). The queue is bounded: when it is full
//! the oldest tenth is dropped in one go and an `events.dropped` event says how many and which
//! `seq` range went missing. A torn or corrupt queue file is read as far as it makes sense; the
//! rest is reported in an `events.recovered` event, never a crash loop.
//!
//! It also fans out lines to local-socket subscribers (`subscribe`): every event, plus local
//! notices such as `catalog.updated` or `power.warning` that are not platform events.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use crate::host::{SharedClock, rfc3339};
use crate::state::{StateError, write_atomic};

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

/// What an outbox can hold: a JSON line with a sequence number assigned at push time. Events
/// and usage statistics share the same durability and delivery machinery.
pub trait Record: Serialize + DeserializeOwned + Clone {
    fn seq(&self) -> u64;
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    /// Highest seq the broker acknowledged (everything up to it is delivered).
    acked_seq: u64,
    /// Highest seq ever assigned; survives compaction so seq never goes backwards.
    last_seq: u64,
}

/// The durable, bounded, ordered queue. Single owner: `EventSink` (behind a mutex) for events,
/// the usage recorder for statistics.
#[derive(Debug)]
pub struct Outbox<T = Event> {
    dir: PathBuf,
    log: File,
    queue: VecDeque<T>,
    meta: Meta,
    capacity: usize,
    /// Lines in the log file that are already acknowledged (compaction trigger).
    stale_lines: usize,
}

/// What opening the outbox found, for the `agent.started`/`events.recovered` events.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub pending: usize,
    pub corrupt_lines: usize,
    pub meta_reset: bool,
}

const LOG: &str = "queue.jsonl";
const META: &str = "meta.json";

impl<T: Record> Outbox<T> {
    pub fn open(dir: &Path, capacity: usize) -> Result<(Self, Recovery), EventsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EventsError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut rec = Recovery::default();
        let meta_path = dir.join(META);
        let meta: Meta = match fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| {
                rec.meta_reset = true;
                Meta::default()
            }),
            Err(_) => Meta::default(),
        };
        let log_path = dir.join(LOG);
        let mut queue = VecDeque::new();
        let mut last_seq = meta.last_seq;
        let mut stale = 0;
        if let Ok(f) = File::open(&log_path) {
            for line in BufReader::new(f).split(b'\n') {
                let Ok(line) = line else {
                    rec.corrupt_lines += 1;
                    break;
                };
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<T>(&line) {
                    // Keep order strictly increasing: a line that goes backwards is corrupt.
                    Ok(ev)
                        if ev.seq() > meta.acked_seq
                            && queue.back().is_none_or(|b: &T| ev.seq() > b.seq()) =>
                    {
                        last_seq = last_seq.max(ev.seq());
                        queue.push_back(ev);
                    }
                    Ok(ev) if ev.seq() <= meta.acked_seq => {
                        last_seq = last_seq.max(ev.seq());
                        stale += 1;
                    }
                    _ => rec.corrupt_lines += 1,
                }
            }
        }
        while queue.len() > capacity {
            queue.pop_front();
        }
        rec.pending = queue.len();
        let meta = Meta {
            acked_seq: meta.acked_seq,
            last_seq,
        };
        let mut ob = Self {
            dir: dir.to_path_buf(),
            log: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io(&log_path))?,
            queue,
            meta,
            capacity,
            stale_lines: stale,
        };
        if rec.corrupt_lines > 0 || stale > 0 {
            // Rewrite so the torn tail is gone and appends start on a clean line.
            ob.compact()?;
        }
        Ok((ob, rec))
    }

    pub fn next_seq(&self) -> u64 {
        self.meta.last_seq + 1
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Highest seq ever assigned (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.meta.last_seq
    }

    /// Appends a record (seq must be `next_seq()`); returns the (count, first, last) dropped
    /// to make room, if any.
    pub fn push(&mut self, ev: T) -> Result<Option<(usize, u64, u64)>, EventsError> {
        let mut dropped = None;
        if self.queue.len() >= self.capacity {
            // At least two, so the `events.dropped` event that follows always fits.
            let n = (self.capacity / 10).max(2);
            let first = self.queue.front().map(Record::seq).unwrap_or(0);
            let mut last = first;
            for _ in 0..n {
                if let Some(e) = self.queue.pop_front() {
                    last = e.seq();
                }
            }
            // Dropped events count as acknowledged: they will never be sent.
            self.meta.acked_seq = self.meta.acked_seq.max(last);
            dropped = Some((n, first, last));
        }
        let mut line = serde_json::to_vec(&ev).map_err(encode_error(&self.dir))?;
        line.push(b'\n');
        let log_path = self.dir.join(LOG);
        self.log
            .write_all(&line)
            .and_then(|_| self.log.sync_data())
            .map_err(|source| EventsError::Io {
                path: log_path,
                source,
            })?;
        self.meta.last_seq = ev.seq();
        self.queue.push_back(ev);
        if dropped.is_some() {
            self.compact()?;
        }
        Ok(dropped)
    }

    /// The first `n` unacknowledged records, oldest first.
    pub fn head(&self, n: usize) -> Vec<T> {
        self.queue.iter().take(n).cloned().collect()
    }

    /// Marks one event delivered. Acks may arrive out of order; only the contiguous prefix moves
    /// `acked_seq`, so a crash never skips an undelivered event.
    pub fn ack(
        &mut self,
        seq: u64,
        delivered: &mut std::collections::BTreeSet<u64>,
    ) -> Result<(), EventsError> {
        delivered.insert(seq);
        let mut moved = false;
        while let Some(front) = self.queue.front() {
            if delivered.remove(&front.seq()) {
                self.meta.acked_seq = front.seq();
                self.queue.pop_front();
                self.stale_lines += 1;
                moved = true;
            } else {
                break;
            }
        }
        if moved {
            self.save_meta()?;
            if self.stale_lines >= 256 && self.stale_lines >= self.queue.len() {
                self.compact()?;
            }
        }
        Ok(())
    }

    fn save_meta(&self) -> Result<(), EventsError> {
        let bytes = serde_json::to_vec(&self.meta).map_err(encode_error(&self.dir))?;
        write_atomic(&self.dir.join(META), &bytes, Some(0o640))?;
        Ok(())
    }

    fn compact(&mut self) -> Result<(), EventsError> {
        let mut buf = Vec::new();
        for ev in &self.queue {
            if let Ok(l) = serde_json::to_vec(ev) {
                buf.extend_from_slice(&l);
                buf.push(b'\n');
            }
        }
        self.save_meta()?;
        let log_path = self.dir.join(LOG);
        write_atomic(&log_path, &buf, Some(0o640))?;
        self.log = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(|source| EventsError::Io {
                path: log_path,
                source,
            })?;
        self.stale_lines = 0;
        Ok(())
    }
}

/// An outbox shared by its one producer and the transport that drains it (usage statistics
/// use one beside the events'): same durability, same in-order, at-least-once delivery.
pub struct SharedOutbox<T> {
    inner: Arc<Mutex<Outbox<T>>>,
    /// Woken when there is something new to publish.
    pub wakeup: Arc<Notify>,
}

impl<T> Clone for SharedOutbox<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            wakeup: self.wakeup.clone(),
        }
    }
}

impl<T> std::fmt::Debug for SharedOutbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedOutbox").finish_non_exhaustive()
    }
}

impl<T: Record> SharedOutbox<T> {
    pub fn new(outbox: Outbox<T>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(outbox)),
            wakeup: Arc::new(Notify::new()),
        }
    }

    /// The queue itself, for its producer. Every write is append+fsync or atomic, so a panic
    /// while holding the lock leaves a usable state.
    pub fn lock(&self) -> MutexGuard<'_, Outbox<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pending(&self) -> usize {
        self.lock().pending()
    }

    /// Up to `n` records not yet acknowledged, oldest first.
    pub fn unacked_head(&self, n: usize) -> Vec<T> {
        self.lock().head(n)
    }

    /// Records the broker's acknowledgement of `seq`.
    pub fn ack(&self, seq: u64, delivered: &mut std::collections::BTreeSet<u64>) {
        if let Err(e) = self.lock().ack(seq, delivered) {
            tracing::error!(error = %e, seq, "cannot record an acknowledgement; it will be sent again");
        }
    }
}

fn encode_error(dir: &Path) -> impl FnOnce(serde_json::Error) -> StateError + '_ {
    move |source| StateError::Encode {
        path: dir.to_path_buf(),
        source,
    }
}

struct Inner {
    outbox: Outbox,
    recent: VecDeque<Event>,
    recent_max: usize,
}

/// The handle every capability uses to raise an event or a local notice. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Mutex<Inner>>,
    terminal_id: Arc<str>,
    clock: SharedClock,
    local: broadcast::Sender<Arc<str>>,
    /// Woken when the outbox has something new to publish.
    pub publish_wakeup: Arc<Notify>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    pub fn new(outbox: Outbox, terminal_id: &str, clock: SharedClock, recent_max: usize) -> Self {
        let (local, _) = broadcast::channel(256);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                outbox,
                recent: VecDeque::new(),
                recent_max: recent_max.max(1),
            })),
            terminal_id: terminal_id.into(),
            clock,
            local,
            publish_wakeup: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the queue half-updated on disk (every
        // write is append+fsync or atomic), so the in-memory state is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises an event: persisted, then published when connected, then shown to subscribers.
    /// Returns the event (with its seq) or logs and returns `None` when the disk refuses it.
    pub fn emit(
        &self,
        severity: Severity,
        code: &str,
        message: impl Into<String>,
        details: Value,
    ) -> Option<Event> {
        let message = message.into();
        let mut inner = self.lock();
        let ev = self.make(&inner.outbox, severity, code, message, details);
        let stored = match inner.outbox.push(ev.clone()) {
            Ok(None) => vec![ev],
            Ok(Some((n, first, last))) => {
                let dropped = self.make(
                    &inner.outbox,
                    Severity::Major,
                    "events.dropped",
                    format!("event queue full: {n} oldest events dropped (seq {first}..={last})"),
                    json!({"count": n, "first_seq": first, "last_seq": last}),
                );
                if let Err(e) = inner.outbox.push(dropped.clone()) {
                    tracing::error!(error = %e, "cannot record events.dropped");
                }
                vec![ev, dropped]
            }
            Err(e) => {
                tracing::error!(error = %e, code, "event could not be stored; it is logged only");
                return None;
            }
        };
        for ev in &stored {
            log_event(ev);
            inner.recent.push_back(ev.clone());
            while inner.recent.len() > inner.recent_max {
                inner.recent.pop_front();
            }
            if let Ok(line) = serde_json::to_string(ev) {
                let _ = self.local.send(line.into());
            }
        }
        drop(inner);
        self.publish_wakeup.notify_one();
        stored.into_iter().next()
    }

    fn make(
        &self,
        outbox: &Outbox,
        severity: Severity,
        code: &str,
        message: String,
        details: Value,
    ) -> Event {
        let seq = outbox.next_seq();
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
        let inner = self.lock();
        let skip = inner.recent.len().saturating_sub(n);
        inner.recent.iter().skip(skip).cloned().collect()
    }

    pub fn pending(&self) -> usize {
        self.lock().outbox.pending()
    }

    /// Up to `n` events not yet acknowledged, oldest first.
    pub fn unacked_head(&self, n: usize) -> Vec<Event> {
        self.lock().outbox.head(n)
    }

    /// Records the broker's acknowledgement of `seq`.
    pub fn ack(&self, seq: u64, delivered: &mut std::collections::BTreeSet<u64>) {
        if let Err(e) = self.lock().outbox.ack(seq, delivered) {
            tracing::error!(error = %e, seq, "cannot record event acknowledgement; it will be sent again");
        }
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
    use std::collections::BTreeSet;

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
            let mut del = BTreeSet::new();
            s.ack(2, &mut del); // out of order: does not move the prefix
            s.ack(1, &mut del);
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
            .open(d.path().join(LOG))
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
}
