//! Usage statistics of the service items (数据报送, DB4403/T 503.1 6.2).
//!
//! Owns `{state_dir}/usage/current.json` (the open period and today's totals, rewritten
//! atomically on every record, so a restart or a power cut loses nothing) and the statistics
//! outbox `{state_dir}/stats/` (an `events::Outbox` of its own with its own `seq`, drained by the
//! transport in order onto `P/t/{id}/stats` exactly like events, kept while offline). Periods
//! are local hours of the schedule's time zone (UTC without a schedule).
//!
//! It accepts exactly `item`, `outcome` and `duration_s` from the kiosk UI: any other field is
//! refused, so no citizen data can ever be handed to it, and an item must be in the catalog
//! in force. It never publishes by itself and never reads the MQTT client.

pub mod period;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::events::{Dropped, EventSink, EventsError, Outbox, Record, Severity};
use crate::host::{SharedClock, rfc3339};
use crate::state::{StateError, write_atomic};
pub use period::{Aggregate, Closed, Counts, ItemCounts, Outcome};

pub const SCHEMA: &str = "kiosk.usage/1";
/// Closed periods kept while offline: about 80 days of hours.
pub const QUEUE_MAX: usize = 2000;
/// Longest session a record may claim; anything longer is a UI bug, not a citizen.
pub const MAX_DURATION_S: u64 = 86_400;
const CURRENT: &str = "current.json";
/// Longest sleep before the clock is read again (NTP steps, suspend).
const STEP: Duration = Duration::from_secs(60);

/// One closed period exactly as published on `P/t/{id}/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRecord {
    pub schema: String,
    pub terminal_id: String,
    pub seq: u64,
    pub period_start: String,
    pub period_end: String,
    pub items: Vec<ItemCounts>,
}

impl Record for StatsRecord {
    fn seq(&self) -> u64 {
        self.seq
    }
}

pub type StatsOutbox = Outbox<StatsRecord>;

/// The `usage` socket op, field for field. Nothing else is accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageRequest {
    #[allow(dead_code)]
    op: String,
    item: String,
    outcome: Outcome,
    duration_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The request is not exactly `{op, item, outcome, duration_s}` with valid values.
    #[error("{0}")]
    Invalid(String),
    #[error("{0:?} is not an item of the catalog in force")]
    UnknownItem(String),
    #[error("no service-item catalog is in force, so no item can be counted")]
    NoCatalog,
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Queue(#[from] EventsError),
}

impl UsageError {
    /// The socket error code.
    pub fn code(&self) -> &'static str {
        match self {
            UsageError::Invalid(_) => "invalid",
            UsageError::UnknownItem(_) | UsageError::NoCatalog => "unknown_item",
            UsageError::State(_) | UsageError::Queue(_) => "state_error",
        }
    }
}

/// What `current.json` holds: the aggregate and a period being handed to the outbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Current {
    #[serde(flatten)]
    agg: Aggregate,
    /// The last closed period with its seq, written before it is queued: after a crash in
    /// between it is queued at start (once: only when the outbox has not reached its seq).
    #[serde(default)]
    closing: Option<StatsRecord>,
}

pub type ZoneFn = Arc<dyn Fn() -> TimeZone + Send + Sync>;

struct Inner {
    current: Current,
}

/// The handle the socket, the `stats_flush` command and the hourly timer share. Cheap to clone.
#[derive(Clone)]
pub struct Usage {
    inner: Arc<Mutex<Inner>>,
    outbox: StatsOutbox,
    dir: PathBuf,
    catalog: PathBuf,
    terminal_id: Arc<str>,
    clock: SharedClock,
    zone: ZoneFn,
    events: EventSink,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage").finish_non_exhaustive()
    }
}

fn read_current(path: &Path) -> Result<Option<Current>, StateError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Usage {
    /// Opens the counts (`usage_dir`) and the statistics outbox (`stats_dir`). A damaged
    /// counts file is reported and started afresh rather than stopping the agent.
    pub fn open(
        usage_dir: &Path,
        stats_dir: &Path,
        catalog: PathBuf,
        terminal_id: &str,
        clock: SharedClock,
        zone: ZoneFn,
        events: EventSink,
    ) -> Result<Self, UsageError> {
        std::fs::create_dir_all(usage_dir).map_err(|source| StateError::Write {
            path: usage_dir.to_path_buf(),
            source,
        })?;
        let (ob, rec) = Outbox::<StatsRecord>::open(stats_dir, QUEUE_MAX)?;
        if rec.corrupt_lines > 0 || rec.meta_reset {
            events.emit(
                Severity::Major,
                "stats.recovered",
                format!(
                    "statistics queue was damaged: {} unreadable line(s) skipped, {} period(s) kept",
                    rec.corrupt_lines, rec.pending
                ),
                json!({"corrupt_lines": rec.corrupt_lines, "kept": rec.pending}),
            );
        }
        let current = match read_current(&usage_dir.join(CURRENT)) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                events.emit(
                    Severity::Major,
                    "stats.recovered",
                    format!("usage counts unreadable, started afresh: {e}"),
                    json!({}),
                );
                Current::default()
            }
        };
        let u = Self {
            inner: Arc::new(Mutex::new(Inner { current })),
            outbox: ob,
            dir: usage_dir.to_path_buf(),
            catalog,
            terminal_id: terminal_id.into(),
            clock,
            zone,
            events,
        };
        {
            let inner = u.lock();
            if let Some(rec) = inner.current.closing.clone() {
                u.enqueue(rec);
            }
        }
        Ok(u)
    }

    /// The outbox the transport drains.
    pub fn outbox(&self) -> StatsOutbox {
        self.outbox.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every write below is atomic on disk before memory changes.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, c: &Current) -> Result<(), UsageError> {
        let bytes = serde_json::to_vec(c).map_err(|source| StateError::Encode {
            path: self.dir.join(CURRENT),
            source,
        })?;
        write_atomic(&self.dir.join(CURRENT), &bytes, Some(0o640))?;
        Ok(())
    }

    /// Queues a closed period unless the outbox already holds its seq (crash between the two
    /// writes). Logged, not fatal: the record stays in `closing` and is retried at start.
    fn enqueue(&self, rec: StatsRecord) {
        let mut ob = self.outbox.lock();
        if ob.last_seq() >= rec.seq {
            return;
        }
        if ob.next_seq() != rec.seq {
            tracing::warn!(
                seq = rec.seq,
                expected = ob.next_seq(),
                "statistics seq out of step"
            );
        }
        if let Some(Dropped {
            count: n,
            first,
            last,
        }) = ob.push(rec)
        {
            drop(ob);
            self.events.emit(
                Severity::Major,
                "stats.dropped",
                format!("statistics queue full: {n} oldest periods dropped (seq {first}..={last})"),
                json!({"count": n, "first_seq": first, "last_seq": last}),
            );
        }
    }

    /// Closes `closed` durably: written to `current.json` as `closing` with the next seq, then
    /// queued. Returns the record.
    fn close(&self, next: &mut Current, closed: Closed) -> Result<StatsRecord, UsageError> {
        let seq = {
            let ob = self.outbox.lock();
            // A `closing` record not yet queued keeps its seq; this one comes after it.
            let pending = next.closing.as_ref().map(|c| c.seq).unwrap_or(0);
            ob.next_seq().max(pending + 1)
        };
        let rec = StatsRecord {
            schema: SCHEMA.into(),
            terminal_id: self.terminal_id.to_string(),
            seq,
            period_start: rfc3339(closed.start),
            period_end: rfc3339(closed.end),
            items: closed.items,
        };
        next.closing = Some(rec.clone());
        self.save(next)?;
        self.enqueue(rec.clone());
        Ok(rec)
    }

    /// Closes the open period if its hour is over. Returns what was queued.
    pub fn tick(&self) -> Result<Option<StatsRecord>, UsageError> {
        let now = self.clock.now();
        let tz = (self.zone)();
        let mut inner = self.lock();
        let mut next = inner.current.clone();
        let closed = next.agg.roll(now, &tz);
        let rec = match closed {
            Some(c) => Some(self.close(&mut next, c)?),
            None if next.agg != inner.current.agg => {
                self.save(&next)?;
                None
            }
            None => None,
        };
        inner.current = next;
        Ok(rec)
    }

    /// The `usage` op: validates, counts, persists. Returns the item's counts in the open period.
    pub fn record(&self, req: &Value) -> Result<Value, UsageError> {
        let r: UsageRequest = serde_json::from_value(req.clone())
            .map_err(|e| UsageError::Invalid(format!("usage: {e}")))?;
        if r.duration_s > MAX_DURATION_S {
            return Err(UsageError::Invalid(format!(
                "usage: duration_s must be at most {MAX_DURATION_S}"
            )));
        }
        if !self.catalog_items()?.contains(&r.item) {
            return Err(UsageError::UnknownItem(r.item));
        }
        let now = self.clock.now();
        let tz = (self.zone)();
        let mut inner = self.lock();
        let mut next = inner.current.clone();
        let closed = next.agg.roll(now, &tz);
        next.agg.add(&r.item, r.outcome, r.duration_s);
        match closed {
            Some(c) => {
                // The closed period goes out without this record; `close` saves both.
                self.close(&mut next, c)?;
            }
            None => self.save(&next)?,
        }
        let counts = next.agg.period.get(&r.item).copied().unwrap_or_default();
        let period_start = next.agg.period_start.map(rfc3339);
        inner.current = next;
        Ok(json!({"item": r.item, "period_start": period_start, "counts": counts}))
    }

    /// The `stats_flush` command: closes the open period now and queues it.
    pub fn flush(&self) -> Result<StatsRecord, UsageError> {
        let now = self.clock.now();
        let tz = (self.zone)();
        let mut inner = self.lock();
        let mut next = inner.current.clone();
        let closed = next.agg.roll(now, &tz);
        if let Some(c) = closed {
            self.close(&mut next, c)?;
        }
        let c = next.agg.flush(now, &tz);
        let rec = self.close(&mut next, c)?;
        inner.current = next;
        Ok(rec)
    }

    /// Today's counts per item (local date), with the catalog's names, for `kioskctl usage`.
    pub fn today(&self) -> Value {
        let now = self.clock.now();
        let tz = (self.zone)();
        let inner = self.lock();
        let mut agg = inner.current.agg.clone();
        drop(inner);
        let _ = agg.roll(now, &tz);
        let names = self.catalog_names();
        let items: Vec<Value> = agg
            .today
            .iter()
            .map(|(id, c)| {
                json!({"id": id, "name": names.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone()),
                    "completed": c.completed, "abandoned": c.abandoned, "failed": c.failed,
                    "duration_s_total": c.duration_s_total})
            })
            .collect();
        json!({
            "date": agg.day,
            "timezone": tz.iana_name().unwrap_or("UTC"),
            "period_start": agg.period_start.map(rfc3339),
            "items": items,
            "stats_pending": self.outbox.pending(),
        })
    }

    fn catalog_doc(&self) -> Option<Value> {
        let bytes = std::fs::read(&self.catalog).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn catalog_items(&self) -> Result<Vec<String>, UsageError> {
        let doc = self.catalog_doc().ok_or(UsageError::NoCatalog)?;
        Ok(doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str().map(str::to_string))
            .collect())
    }

    fn catalog_names(&self) -> Vec<(String, String)> {
        self.catalog_doc()
            .map(|d| {
                d["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| {
                        Some((
                            i["id"].as_str()?.to_string(),
                            i["name"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes each hour when it ends, reading the clock again at least every minute.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.tick() {
                tracing::error!(error = %e, "cannot close the statistics period");
            }
            let now = self.clock.now();
            let tz = (self.zone)();
            let start = self.lock().current.agg.period_start.unwrap_or(now);
            let end = period::period_end(start, &tz);
            let wait: Duration = end.duration_since(now).try_into().unwrap_or(Duration::ZERO);
            let wait = wait.clamp(Duration::from_millis(200), STEP);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FixedClock;

    struct Fx {
        _d: tempfile::TempDir,
        dir: PathBuf,
        clock: Arc<FixedClock>,
    }

    fn fx() -> Fx {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        std::fs::write(
            dir.join("catalog.json"),
            r#"{"items":[{"id":"id-card","name":"身份证换领","status":"active"},{"id":"tax","name":"个税","status":"suspended"}]}"#,
        )
        .unwrap();
        Fx {
            _d: d,
            dir,
            clock: Arc::new(FixedClock::new(
                "2026-12-01T09:10:00+08:00".parse().unwrap(),
            )),
        }
    }

    fn open(f: &Fx) -> Usage {
        let (ob, _) = Outbox::open(&f.dir.join("events"), 100).unwrap();
        let events = EventSink::new(ob, "t1", f.clock.clone(), 10);
        Usage::open(
            &f.dir.join("usage"),
            &f.dir.join("stats"),
            f.dir.join("catalog.json"),
            "t1",
            f.clock.clone(),
            Arc::new(|| TimeZone::get("Asia/Shanghai").unwrap()),
            events,
        )
        .unwrap()
    }

    fn req(v: Value) -> Value {
        let mut r = json!({"op": "usage"});
        for (k, x) in v.as_object().unwrap() {
            r[k] = x.clone();
        }
        r
    }

    #[test]
    fn refuses_citizen_data_and_unknown_items_and_counts_nothing() {
        let f = fx();
        let u = open(&f);
        let e = u
            .record(&req(json!({"item": "id-card", "outcome": "completed", "duration_s": 5, "id_number": "440301199001011234"})))
            .unwrap_err();
        assert_eq!(e.code(), "invalid");
        assert!(e.to_string().contains("id_number"), "{e}");
        let e = u
            .record(&req(
                json!({"item": "passport", "outcome": "completed", "duration_s": 5}),
            ))
            .unwrap_err();
        assert_eq!(e.code(), "unknown_item");
        for bad in [
            json!({"item": "id-card", "outcome": "done", "duration_s": 5}),
            json!({"item": "id-card", "outcome": "completed", "duration_s": -1}),
            json!({"item": "id-card", "outcome": "completed"}),
            json!({"item": "id-card", "outcome": "completed", "duration_s": 86401}),
        ] {
            assert_eq!(u.record(&req(bad)).unwrap_err().code(), "invalid");
        }
        assert_eq!(u.today()["items"], json!([]));
        let raw = std::fs::read_to_string(f.dir.join("usage/current.json")).unwrap_or_default();
        assert!(!raw.contains("440301"), "nothing of it stored: {raw}");
    }

    #[test]
    fn counts_survive_reopen_and_hours_close_in_order() {
        let f = fx();
        {
            let u = open(&f);
            for (o, d) in [("completed", 60), ("completed", 40), ("failed", 7)] {
                u.record(&req(
                    json!({"item": "id-card", "outcome": o, "duration_s": d}),
                ))
                .unwrap();
            }
        }
        let u = open(&f);
        u.record(&req(
            json!({"item": "tax", "outcome": "abandoned", "duration_s": 3}),
        ))
        .unwrap();
        f.clock.set("2026-12-01T10:00:00+08:00".parse().unwrap());
        let rec = u.tick().unwrap().expect("09:00 closed");
        assert_eq!(
            (rec.seq, rec.period_start.as_str(), rec.period_end.as_str()),
            (1, "2026-12-01T01:00:00Z", "2026-12-01T02:00:00Z")
        );
        assert_eq!(
            rec.items[0],
            ItemCounts {
                id: "id-card".into(),
                completed: 2,
                abandoned: 0,
                failed: 1,
                duration_s_total: 107
            }
        );
        assert_eq!(rec.items[1].abandoned, 1);
        assert!(u.tick().unwrap().is_none(), "closed once");
        f.clock.set("2026-12-01T10:30:00+08:00".parse().unwrap());
        let fl = u.flush().unwrap();
        assert_eq!((fl.seq, fl.items.len()), (2, 0));
        assert_eq!(fl.period_end, "2026-12-01T02:30:00Z");
        let seqs: Vec<u64> = u.outbox().unacked_head(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(u.today()["items"][0]["completed"], 2);
        assert_eq!(u.today()["items"][0]["name"], "身份证换领");
        drop(u);
        // Reopening queues nothing twice.
        let u = open(&f);
        assert_eq!(u.outbox().pending(), 2);
    }

    #[test]
    fn a_crash_between_closing_and_queueing_queues_once_at_start() {
        let f = fx();
        let u = open(&f);
        u.record(&req(
            json!({"item": "tax", "outcome": "completed", "duration_s": 9}),
        ))
        .unwrap();
        // What `close` writes first, without the queue step that follows.
        let mut next = u.lock().current.clone();
        let closed = next
            .agg
            .flush("2026-12-01T09:20:00+08:00".parse().unwrap(), &TimeZone::UTC);
        next.closing = Some(StatsRecord {
            schema: SCHEMA.into(),
            terminal_id: "t1".into(),
            seq: 1,
            period_start: rfc3339(closed.start),
            period_end: rfc3339(closed.end),
            items: closed.items,
        });
        u.save(&next).unwrap();
        drop(u);
        let u = open(&f);
        let head = u.outbox().unacked_head(10);
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].items[0].id, "tax");
        drop(u);
        assert_eq!(open(&f).outbox().pending(), 1);
    }
}
