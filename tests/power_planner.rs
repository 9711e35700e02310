//! The power planner end to end: a wall clock the test moves, tokio's paused time for the
//! planner's sleeps, real commands that append to a file, and an RTC alarm file in a temp root.
//! Every wait is on a signal (a status change or a subscriber line), bounded in virtual time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kiosk_agent::config;
use kiosk_agent::events::{EventSink, Outbox, Severity};
use kiosk_agent::host::{FixedClock, HostPaths};
use kiosk_agent::power::executor::WAKEALARM;
use kiosk_agent::power::{PowerHandle, PowerManager, PowerStatus, Schedule};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Virtual time allowed for any one expected effect; the planner steps at most every 30 s.
const PATIENCE: Duration = Duration::from_secs(600);

struct Rig {
    _dir: tempfile::TempDir,
    clock: Arc<FixedClock>,
    events: EventSink,
    lines: broadcast::Receiver<Arc<str>>,
    power: PowerHandle,
    status: watch::Receiver<PowerStatus>,
    log: PathBuf,
    wakealarm: PathBuf,
    cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn append(log: &Path, word: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo {word} >> \"$0\""),
        log.display().to_string(),
    ]
}

fn rig(start: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let host = HostPaths::new(&root);
    let wakealarm = host.resolve(WAKEALARM);
    std::fs::create_dir_all(wakealarm.parent().unwrap()).unwrap();
    let log = dir.path().join("actions.log");
    let cfg = config::Power {
        poweroff_cmd: append(&log, "poweroff"),
        display_off_cmd: append(&log, "display_off"),
        display_on_cmd: append(&log, "display_on"),
        wake_lead_minutes: 5,
        max_inhibit_minutes: 30,
        ..config::Power::default()
    };
    let clock = Arc::new(FixedClock::new(ts(start)));
    let (ob, _) = Outbox::open(&dir.path().join("events"), 100).unwrap();
    let events = EventSink::new(ob, "t1", clock.clone(), 50);
    let lines = events.subscribe_local();
    let cancel = CancellationToken::new();
    let power = PowerManager::spawn(cfg, host, clock.clone(), events.clone(), cancel.clone());
    let status = power.subscribe();
    Rig {
        _dir: dir,
        clock,
        events,
        lines,
        power,
        status,
        log,
        wakealarm,
        cancel,
    }
}

/// Shenzhen office hours, Mon–Fri 09:00–18:00 local (01:00–10:00 UTC).
fn weekdays(off_action: &str) -> Schedule {
    let doc = json!({
        "kind": "schedule", "version": 3, "target": "t/t1", "issued_at": "2026-10-01T00:00:00Z",
        "timezone": "Asia/Shanghai",
        "weekly": [{"days": ["mon", "tue", "wed", "thu", "fri"], "on": "09:00", "off": "18:00"}],
        "off_action": off_action, "warn_minutes": 10
    });
    Schedule::parse(doc.to_string().as_bytes()).unwrap()
}

impl Rig {
    async fn until(&mut self, what: &str, mut f: impl FnMut(&PowerStatus) -> bool) -> PowerStatus {
        let fut = self.status.wait_for(|s| f(s));
        match tokio::time::timeout(PATIENCE, fut).await {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => panic!("planner stopped while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; status: {:?}",
                self.power.status()
            ),
        }
    }

    /// The next subscriber line with this `code`, skipping others.
    async fn line(&mut self, code: &str) -> Value {
        let fut = async {
            loop {
                let l = self.lines.recv().await.expect("subscriber channel open");
                let v: Value = serde_json::from_str(&l).unwrap();
                if v["code"] == code {
                    return v;
                }
            }
        };
        tokio::time::timeout(PATIENCE, fut)
            .await
            .unwrap_or_else(|_| panic!("no {code} line"))
    }

    fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Lets the planner run several steps of virtual time (only used to show that nothing
    /// else happens; every expected effect is awaited as a signal).
    async fn idle(&self, secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn warning_then_inhibit_then_release_powers_off_once() {
    // Fri 2026-10-09 17:00 in Shenzhen.
    let mut r = rig("2026-10-09T09:00:00Z");
    r.power.set_schedule(Some(weekdays("poweroff")));
    let s = r.until("schedule in force", |s| s.schedule.is_some()).await;
    assert_eq!(s.next_off.as_deref(), Some("2026-10-09T10:00:00Z"));
    assert_eq!(s.next_on.as_deref(), Some("2026-10-12T01:00:00Z"));
    assert_eq!(
        s.wake_at.as_deref(),
        Some("2026-10-12T00:55:00Z"),
        "Monday 09:00 minus the 5 min lead"
    );
    assert!(s.in_window);

    // 17:50:30: the warning reaches subscribers, the platform gets power.scheduled.
    r.clock.set(ts("2026-10-09T09:50:30Z"));
    let warning = r.line("power.warning").await;
    assert_eq!(warning["details"]["minutes_left"], 10);
    assert_eq!(warning["details"]["off_at"], "2026-10-09T10:00:00Z");
    let scheduled = r.line("power.scheduled").await;
    assert_eq!(scheduled["severity"], "info");
    assert_eq!(scheduled["details"]["wake_at"], "2026-10-12T00:55:00Z");
    assert!(
        r.events
            .recent(10)
            .iter()
            .any(|e| e.code == "power.scheduled" && e.severity == Severity::Info)
    );

    // A citizen is mid-transaction at the off time.
    r.power.inhibit(7, "kiosk-ui", "transaction 20261009-0042");
    r.until("hold registered", |s| s.holds.len() == 1).await;
    r.clock.set(ts("2026-10-09T10:00:05Z"));
    let s = r.until("off deferred", |s| s.pending_off.is_some()).await;
    let p = s.pending_off.unwrap();
    assert_eq!(p.deadline, "2026-10-09T10:30:00Z");
    assert!(p.reasons[0].contains("kiosk-ui"), "{:?}", p.reasons);
    r.line("power.deferred").await;
    assert!(r.actions().is_empty(), "held: nothing ran");

    // Released after the off time: the power-off follows at once.
    let released = tokio::time::Instant::now();
    r.power.release(7);
    let s = r.until("powered off", |s| s.last_action.is_some()).await;
    assert!(
        released.elapsed() < Duration::from_secs(1),
        "acted at once, not at the next re-check"
    );
    let a = s.last_action.unwrap();
    assert_eq!(
        (a.action.as_str(), a.ok, a.forced),
        ("poweroff", true, false),
        "{a:?}"
    );
    assert_eq!(a.wake_at.as_deref(), Some("2026-10-12T00:55:00Z"));
    assert!(s.pending_off.is_none() && s.holds.is_empty());
    assert_eq!(r.actions(), vec!["poweroff"]);
    let alarm = std::fs::read_to_string(&r.wakealarm).unwrap();
    assert_eq!(alarm, ts("2026-10-12T00:55:00Z").as_second().to_string());

    // Later steps, and the clock stepped back over the off time and forward again, never
    // repeat it.
    r.clock.set(ts("2026-10-09T10:20:00Z"));
    r.idle(120).await;
    r.clock.set(ts("2026-10-09T09:59:50Z"));
    r.idle(60).await;
    r.clock.set(ts("2026-10-09T10:00:10Z"));
    r.idle(120).await;
    assert_eq!(
        r.actions(),
        vec!["poweroff"],
        "poweroff_cmd ran exactly once"
    );
}

#[tokio::test(start_paused = true)]
async fn maintenance_defers_until_the_limit_then_acts_and_says_so() {
    let mut r = rig("2026-10-09T09:55:00Z");
    r.power.set_schedule(Some(weekdays("poweroff")));
    r.power.set_maintenance(true);
    r.until("maintenance on", |s| s.maintenance && s.schedule.is_some())
        .await;

    r.clock.set(ts("2026-10-09T10:00:01Z"));
    let s = r.until("off deferred", |s| s.pending_off.is_some()).await;
    assert_eq!(s.pending_off.unwrap().reasons, vec!["maintenance mode"]);

    r.clock.set(ts("2026-10-09T10:29:00Z"));
    r.idle(60).await;
    assert!(r.actions().is_empty(), "still within max_inhibit_minutes");

    r.clock.set(ts("2026-10-09T10:30:02Z"));
    let s = r.until("forced off", |s| s.last_action.is_some()).await;
    let a = s.last_action.unwrap();
    assert!(a.forced && a.ok && a.action == "poweroff", "{a:?}");
    let ev = r.line("power.inhibit_expired").await;
    assert_eq!(ev["severity"], "minor");
    assert_eq!(r.actions(), vec!["poweroff"]);
}

#[tokio::test(start_paused = true)]
async fn leaving_maintenance_after_the_off_time_acts_at_once() {
    let mut r = rig("2026-10-09T09:55:00Z");
    r.power.set_schedule(Some(weekdays("poweroff")));
    r.power.set_maintenance(true);
    r.until("maintenance on", |s| s.maintenance && s.schedule.is_some())
        .await;
    r.clock.set(ts("2026-10-09T10:00:01Z"));
    r.until("off deferred", |s| s.pending_off.is_some()).await;

    r.clock.set(ts("2026-10-09T10:07:00Z"));
    let left = tokio::time::Instant::now();
    r.power.set_maintenance(false);
    let s = r.until("powered off", |s| s.last_action.is_some()).await;
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "acted at once, not at the next re-check"
    );
    let a = s.last_action.unwrap();
    assert_eq!(
        (a.action.as_str(), a.forced, a.at.as_str()),
        ("poweroff", false, "2026-10-09T10:07:00Z")
    );
    assert_eq!(r.actions(), vec!["poweroff"]);
}

#[tokio::test(start_paused = true)]
async fn off_times_not_lived_through_are_not_acted_on() {
    // Started at 18:30, after the off time: no power-off at start-up.
    let mut r = rig("2026-10-09T10:30:00Z");
    r.power.set_schedule(Some(weekdays("poweroff")));
    let s = r.until("schedule in force", |s| s.schedule.is_some()).await;
    assert!(!s.in_window);
    assert_eq!(s.next_off.as_deref(), Some("2026-10-12T10:00:00Z"));
    r.idle(300).await;
    assert!(r.actions().is_empty());
    assert!(r.power.status().last_action.is_none());

    // Monday: the clock jumps from 17:00 to 20:00 (far beyond any grace): counted as missed.
    r.clock.set(ts("2026-10-12T09:00:00Z"));
    r.until("monday planned", |s| s.in_window).await;
    r.clock.set(ts("2026-10-12T12:00:00Z"));
    r.until("replanned past the jump", |s| {
        s.next_off.as_deref() == Some("2026-10-13T10:00:00Z")
    })
    .await;
    r.idle(120).await;
    assert!(r.actions().is_empty());
    assert!(r.power.status().pending_off.is_none());
}

#[tokio::test(start_paused = true)]
async fn display_off_at_the_off_time_and_on_at_the_next_on() {
    let mut r = rig("2026-10-09T09:59:00Z");
    r.power.set_schedule(Some(weekdays("display_off")));
    let s = r.until("schedule in force", |s| s.schedule.is_some()).await;
    assert_eq!(s.wake_at, None, "no RTC wake for a display-off schedule");

    r.clock.set(ts("2026-10-09T10:00:01Z"));
    r.until("display off", |s| {
        s.last_action
            .as_ref()
            .is_some_and(|a| a.action == "display_off")
    })
    .await;
    // Monday 09:00:01 local.
    r.clock.set(ts("2026-10-12T01:00:01Z"));
    r.until("display on", |s| {
        s.last_action
            .as_ref()
            .is_some_and(|a| a.action == "display_on")
    })
    .await;
    assert_eq!(r.actions(), vec!["display_off", "display_on"]);
    assert!(!r.wakealarm.exists(), "the RTC is left alone");
}

#[tokio::test(start_paused = true)]
async fn a_new_schedule_replans_at_once_and_windows_follow_it() {
    let mut r = rig("2026-10-09T09:00:00Z");
    r.power.set_schedule(Some(weekdays("poweroff")));
    r.until("first schedule", |s| {
        s.next_off.as_deref() == Some("2026-10-09T10:00:00Z")
    })
    .await;
    let w = r.power.windows(7);
    assert_eq!(w.len(), 7);
    assert_eq!(
        (w[0].date.as_str(), w[0].on.as_deref()),
        ("2026-10-09", Some("09:00"))
    );
    assert!(w[1].on.is_none(), "Saturday is off");

    let early = json!({
        "timezone": "Asia/Shanghai", "version": 4,
        "weekly": [{"days": ["fri"], "on": "09:00", "off": "17:30"}],
        "off_action": "poweroff", "warn_minutes": 5
    });
    r.power
        .set_schedule(Some(Schedule::parse(early.to_string().as_bytes()).unwrap()));
    let s = r
        .until("replanned", |s| {
            s.next_off.as_deref() == Some("2026-10-09T09:30:00Z")
        })
        .await;
    assert_eq!(s.schedule.unwrap().version, Some(4));
    assert_eq!(s.next_on.as_deref(), Some("2026-10-16T01:00:00Z"));

    // The status serialises to the shape the socket and the patrol report use.
    let v = serde_json::to_value(r.power.status()).unwrap();
    for k in [
        "schedule",
        "in_window",
        "next_on",
        "next_off",
        "wake_at",
        "maintenance",
        "holds",
        "pending_off",
        "last_action",
    ] {
        assert!(v.get(k).is_some(), "status lacks {k}: {v}");
    }

    r.power.set_schedule(None);
    let s = r.until("cleared", |s| s.schedule.is_none()).await;
    assert_eq!((s.next_on, s.next_off), (None, None));
    assert!(r.power.windows(7).is_empty());
}
