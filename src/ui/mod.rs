//! The kiosk UI's heartbeat: a frozen or crashed screen is the fault citizens meet first, and a
//! `unit` probe cannot see it (the service is active while its window is white).
//!
//! Owns the time of the last heartbeat, the screen it named and whether the UI is currently
//! unresponsive. With `ui.heartbeat_timeout_s` above 0, no heartbeat for that long raises
//! `ui.unresponsive` (major) and the next heartbeat `ui.recovered`; while it lasts the fault is
//! an item of `status`, health and the patrol checklist (`ui.heartbeat`, kind `heartbeat`). The
//! timer runs on tokio's monotonic time, so a clock step never raises it and tests pause time.
//! In maintenance mode (a technician restarting the UI) the fault is shown but not announced,
//! and a recovery is announced only after an announced fault.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{EventSink, Severity};
use crate::host::{SharedClock, rfc3339};
use crate::telemetry::{Grade, ProbeResult};

/// The probe id of the heartbeat item; `.` is outside the configured probes' alphabet.
pub const ITEM_ID: &str = "ui.heartbeat";
const MAX_NAME: usize = 64;

/// The `heartbeat` socket op, field for field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Beat {
    #[allow(dead_code)]
    op: String,
    who: String,
    #[serde(default)]
    screen: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBeat(String);

#[derive(Debug)]
struct State {
    last: Instant,
    last_at: Option<String>,
    screen: Option<String>,
    unresponsive: bool,
    /// `ui.unresponsive` was sent for the current fault.
    announced: bool,
}

/// Shared by the socket (heartbeats), the timer task and telemetry (the fault item).
#[derive(Clone)]
pub struct UiWatch {
    timeout: Option<Duration>,
    state: Arc<Mutex<State>>,
    beat: Arc<Notify>,
    events: EventSink,
    clock: SharedClock,
    maintenance: Option<crate::maintenance::Maintenance>,
}

impl std::fmt::Debug for UiWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiWatch").finish_non_exhaustive()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_NAME && !s.chars().any(char::is_control)
}

impl UiWatch {
    /// `timeout_s` 0 turns the watch off (heartbeats are still accepted). The first deadline
    /// counts from now: a UI that never starts is unresponsive too.
    pub fn new(timeout_s: u64, events: EventSink, clock: SharedClock) -> Self {
        Self {
            timeout: (timeout_s > 0).then(|| Duration::from_secs(timeout_s)),
            state: Arc::new(Mutex::new(State {
                last: Instant::now(),
                last_at: None,
                screen: None,
                unresponsive: false,
                announced: false,
            })),
            beat: Arc::new(Notify::new()),
            events,
            clock,
            maintenance: None,
        }
    }

    /// Faults found while maintenance mode is on are not announced.
    pub fn muted_by(mut self, m: crate::maintenance::Maintenance) -> Self {
        self.maintenance = Some(m);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `heartbeat` op: `{"op": "heartbeat", "who": "ui", "screen": "<name>"}`.
    pub fn heartbeat(&self, req: &Value) -> Result<Value, InvalidBeat> {
        let b: Beat = serde_json::from_value(req.clone())
            .map_err(|e| InvalidBeat(format!("heartbeat: {e}")))?;
        if !valid_name(&b.who) || !b.screen.as_deref().is_none_or(valid_name) {
            return Err(InvalidBeat(format!(
                "heartbeat: who and screen must be 1-{MAX_NAME} printable characters"
            )));
        }
        let now = rfc3339(self.clock.now());
        let mut st = self.lock();
        let was_down = st.unresponsive && st.announced;
        st.announced = false;
        st.last = Instant::now();
        st.last_at = Some(now.clone());
        st.screen = b.screen.clone();
        st.unresponsive = false;
        drop(st);
        self.beat.notify_one();
        if was_down {
            self.events.emit(
                Severity::Info,
                "ui.recovered",
                format!(
                    "kiosk screen responds again (screen {})",
                    b.screen.as_deref().unwrap_or("-")
                ),
                json!({"who": b.who, "screen": b.screen}),
            );
        }
        Ok(json!({"who": b.who, "screen": b.screen, "at": now,
            "timeout_s": self.timeout.map(|t| t.as_secs()).unwrap_or(0)}))
    }

    pub fn is_unresponsive(&self) -> bool {
        self.lock().unresponsive
    }

    /// The heartbeat as a checklist item, when the watch is on.
    pub fn item(&self) -> Option<ProbeResult> {
        let timeout = self.timeout?;
        let st = self.lock();
        let screen = st.screen.as_deref().unwrap_or("-");
        let detail = match (&st.last_at, st.unresponsive) {
            (_, false) if st.last_at.is_none() => "waiting for the first heartbeat".to_string(),
            (Some(at), false) => format!("last heartbeat {at} (screen {screen})"),
            (Some(at), true) => format!(
                "no heartbeat for more than {} s; last {at} (screen {screen})",
                timeout.as_secs()
            ),
            (None, _) => format!("no heartbeat within {} s of start", timeout.as_secs()),
        };
        Some(ProbeResult {
            id: ITEM_ID.into(),
            kind: "heartbeat".into(),
            ok: !st.unresponsive,
            detail,
            severity: "major".into(),
            level: st
                .unresponsive
                .then(|| Grade::from_severity(Severity::Major)),
            details: json!({"screen": st.screen, "last_at": st.last_at}),
            reading_level: None,
            event_code: None,
            power_off_recommended: false,
        })
    }

    /// Raises `ui.unresponsive` once the timeout passes without a heartbeat.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(timeout) = self.timeout else {
            return;
        };
        loop {
            let (deadline, down) = {
                let st = self.lock();
                (st.last + timeout, st.unresponsive)
            };
            if down {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.beat.notified() => continue,
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.beat.notified() => continue,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let mut st = self.lock();
            if st.unresponsive || Instant::now() < st.last + timeout {
                continue;
            }
            st.unresponsive = true;
            st.announced = !self.maintenance.as_ref().is_some_and(|m| m.is_on());
            if !st.announced {
                continue;
            }
            let (screen, last_at) = (st.screen.clone(), st.last_at.clone());
            drop(st);
            self.events.emit(
                Severity::Major,
                "ui.unresponsive",
                format!(
                    "no heartbeat from the kiosk screen for {} s (last screen {})",
                    timeout.as_secs(),
                    screen.as_deref().unwrap_or("-")
                ),
                json!({"timeout_s": timeout.as_secs(), "screen": screen, "last_at": last_at}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outbox;
    use crate::host::FixedClock;

    fn watch(d: &std::path::Path, timeout_s: u64) -> UiWatch {
        let clock: SharedClock = Arc::new(FixedClock::new("2026-12-01T09:00:00Z".parse().unwrap()));
        let (ob, _) = Outbox::open(&d.join("events"), 100).unwrap();
        UiWatch::new(
            timeout_s,
            EventSink::new(ob, "t1", clock.clone(), 50),
            clock,
        )
    }

    fn codes(w: &UiWatch) -> Vec<String> {
        w.events.recent(10).into_iter().map(|e| e.code).collect()
    }

    /// Lets the timer task run up to its next await.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_raises_once_and_the_next_beat_recovers() {
        let d = tempfile::tempdir().unwrap();
        let w = watch(d.path(), 30);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(w.clone().run(cancel.clone()));
        let beat = json!({"op": "heartbeat", "who": "ui", "screen": "home"});
        w.heartbeat(&beat).unwrap();
        settle().await;
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(!w.is_unresponsive());
        w.heartbeat(&beat).unwrap();
        settle().await;
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(codes(&w).is_empty(), "each beat re-arms the timer");
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert!(w.is_unresponsive());
        let item = w.item().unwrap();
        assert_eq!((item.ok, item.level), (false, Some(Grade::P2)));
        tokio::time::advance(Duration::from_secs(300)).await;
        settle().await;
        assert_eq!(codes(&w), ["ui.unresponsive"], "raised once");
        let ev = &w.events.recent(1)[0];
        assert_eq!(ev.severity, Severity::Major);
        assert_eq!(ev.details["screen"], "home");
        w.heartbeat(&json!({"op": "heartbeat", "who": "ui", "screen": "id-card"}))
            .unwrap();
        settle().await;
        assert_eq!(codes(&w), ["ui.unresponsive", "ui.recovered"]);
        assert!(w.item().unwrap().ok);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn in_maintenance_the_fault_shows_but_is_not_announced() {
        let d = tempfile::tempdir().unwrap();
        let m = crate::maintenance::Maintenance::load(
            crate::state::StateStore::open(d.path().join("state")).unwrap(),
        );
        let w = watch(d.path(), 10).muted_by(m.clone());
        m.switch(
            true,
            "restarting the UI",
            "local:0",
            w.clock.now(),
            &w.events,
        )
        .unwrap();
        let before = codes(&w);
        let task = tokio::spawn(w.clone().run(CancellationToken::new()));
        settle().await;
        tokio::time::advance(Duration::from_secs(11)).await;
        settle().await;
        assert!(w.is_unresponsive() && !w.item().unwrap().ok);
        w.heartbeat(&json!({"op": "heartbeat", "who": "ui", "screen": "home"}))
            .unwrap();
        assert_eq!(codes(&w), before, "neither raised nor recovered");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn off_by_default_and_strict_fields() {
        let d = tempfile::tempdir().unwrap();
        let w = watch(d.path(), 0);
        let task = tokio::spawn(w.clone().run(CancellationToken::new()));
        tokio::time::advance(Duration::from_secs(86_400)).await;
        settle().await;
        assert!(task.is_finished() && w.item().is_none() && codes(&w).is_empty());
        assert!(
            w.heartbeat(&json!({"op": "heartbeat", "who": "ui", "citizen": "x"}))
                .is_err()
        );
        assert!(
            w.heartbeat(&json!({"op": "heartbeat", "who": "", "screen": "home"}))
                .is_err()
        );
    }
}
