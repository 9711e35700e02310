//! Power: owns the schedule in force, the inhibitor holds and the off/on actions of the kiosk.
//! It never decides what a document may do: it is handed schedules that `trust` and `control`
//! already verified, and only turns them into warnings, deferrals, an RTC wake alarm and the
//! configured power-off or display commands.
//!
//! One planner task holds all of this state; everyone else talks to it through a cloneable
//! `PowerHandle` (commands in, a watched `PowerStatus` out). Only transitions crossed while the
//! planner runs count: an off time missed while the agent was down is never acted on at
//! start-up, nor is one left far behind by a large clock step (first NTP sync after a dead
//! RTC battery). The planner sleeps on tokio time in capped steps and re-reads the wall clock
//! each time, so a clock step or a resume from suspend re-plans within one step.

pub mod executor;
pub mod holds;
mod low_battery;
pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::events::{EventSink, Severity};
use crate::host::{HostPaths, SharedClock, rfc3339};

pub use executor::{CommandOutput, ExecError, HostActions, PowerActions};
pub use holds::{HoldInfo, Holds};
pub use low_battery::power_off_on_low_battery;
pub use schedule::{DayWindow, OffAction, Schedule, ScheduleError, ScheduleSummary, WindowSource};

use schedule::minus_minutes;

/// Longest single sleep: bounds how late a clock step or resume is noticed.
const MAX_STEP: Duration = Duration::from_secs(30);
/// While an off action is deferred, re-check this often even without a release.
const DEFERRED_STEP: Duration = Duration::from_secs(5);
/// `systemctl poweroff` and display tools return quickly; anything slower is stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How late a crossed off time may be noticed and still be acted on, at least. Bigger gaps
/// mean the clock jumped (or the host slept) over it, which counts as missed.
const MIN_LATE_GRACE: SignedDuration = SignedDuration::from_secs(120);
/// Never power off when the next opening (minus the wake lead) is this close: the RTC could
/// not wake the machine in time and the kiosk would stay dark through a working window.
const MIN_OFF_SPAN: SignedDuration = SignedDuration::from_secs(60);

enum Request {
    SetSchedule(Option<Arc<Schedule>>),
    Maintenance(bool),
    Inhibit {
        conn_id: u64,
        who: String,
        why: String,
    },
    Release(u64),
}

/// An off action that crossed its time while something deferred it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOff {
    pub off_at: String,
    /// When it happens regardless of holds (`off_at + max_inhibit_minutes`).
    pub deadline: String,
    pub action: OffAction,
    pub reasons: Vec<String>,
}

/// The last thing the planner did to the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAction {
    /// `poweroff`, `display_off`, `display_on`, `none`, or `skipped` (see `message`).
    pub action: String,
    pub at: String,
    pub off_at: Option<String>,
    pub wake_at: Option<String>,
    /// Holds or maintenance were still present and the deadline overrode them.
    pub forced: bool,
    pub ok: bool,
    pub message: String,
}

/// What `kioskctl status`/`schedule` and the patrol report show about power.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerStatus {
    pub schedule: Option<ScheduleSummary>,
    /// Inside an opening window now.
    pub in_window: bool,
    pub next_on: Option<String>,
    pub next_off: Option<String>,
    /// The RTC wake time that the next power-off would set (`next_on` after `next_off`, minus
    /// `power.wake_lead_minutes`); absent when the off action is not a power-off.
    pub wake_at: Option<String>,
    pub maintenance: bool,
    pub holds: Vec<HoldInfo>,
    pub pending_off: Option<PendingOff>,
    pub last_action: Option<LastAction>,
}

/// The way into the planner. Cheap to clone; every method returns at once.
#[derive(Clone)]
pub struct PowerHandle {
    tx: mpsc::UnboundedSender<Request>,
    status: watch::Receiver<PowerStatus>,
    schedule: watch::Receiver<Option<Arc<Schedule>>>,
    clock: SharedClock,
}

impl std::fmt::Debug for PowerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerHandle").finish_non_exhaustive()
    }
}

impl PowerHandle {
    fn send(&self, r: Request) {
        if self.tx.send(r).is_err() {
            tracing::warn!("power planner has stopped; request ignored");
        }
    }

    /// Puts a verified schedule in force (or none); the planner re-plans at once.
    pub fn set_schedule(&self, schedule: Option<Schedule>) {
        self.send(Request::SetSchedule(schedule.map(Arc::new)));
    }

    pub fn set_maintenance(&self, on: bool) {
        self.send(Request::Maintenance(on));
    }

    /// Holds back the off action for this socket connection until `release(conn_id)`.
    pub fn inhibit(&self, conn_id: u64, who: impl Into<String>, why: impl Into<String>) {
        self.send(Request::Inhibit {
            conn_id,
            who: who.into(),
            why: why.into(),
        });
    }

    /// Also to be called when the connection closes; releasing nothing is harmless.
    pub fn release(&self, conn_id: u64) {
        self.send(Request::Release(conn_id));
    }

    pub fn status(&self) -> PowerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the planner publishes a new status (after every
    /// request and every step), for callers that want to wait for an effect.
    pub fn subscribe(&self) -> watch::Receiver<PowerStatus> {
        self.status.clone()
    }

    /// The schedule in force, e.g. for `reported/schedule` details.
    pub fn schedule(&self) -> Option<Arc<Schedule>> {
        self.schedule.borrow().clone()
    }

    /// The next `days` civil days of the schedule from today in its zone; empty without one.
    pub fn windows(&self, days: usize) -> Vec<DayWindow> {
        match self.schedule() {
            Some(s) => s.windows(s.local_date(self.clock.now()), days),
            None => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    off_at: Timestamp,
    deadline: Timestamp,
    action: OffAction,
    announced: bool,
}

/// The planner task.
pub struct PowerManager<A: PowerActions = HostActions> {
    cfg: config::Power,
    actions: A,
    clock: SharedClock,
    events: EventSink,
    cancel: CancellationToken,
    rx: mpsc::UnboundedReceiver<Request>,
    status_tx: watch::Sender<PowerStatus>,
    schedule_tx: watch::Sender<Option<Arc<Schedule>>>,

    schedule: Option<Arc<Schedule>>,
    maintenance: bool,
    holds: Holds,
    /// The next transitions as seen at the previous step; reaching one means it was crossed.
    armed_off: Option<Timestamp>,
    armed_on: Option<Timestamp>,
    /// Transitions already handled, so a clock stepped backwards never repeats an action.
    handled_off: Option<Timestamp>,
    handled_on: Option<Timestamp>,
    warned_for: Option<Timestamp>,
    pending: Option<Pending>,
    display_off: bool,
    last_action: Option<LastAction>,
}

impl PowerManager<HostActions> {
    /// Builds the planner on the real machine and runs it on the current tokio runtime.
    pub fn spawn(
        cfg: config::Power,
        host: HostPaths,
        clock: SharedClock,
        events: EventSink,
        cancel: CancellationToken,
    ) -> PowerHandle {
        Self::spawn_with_helper(cfg, host, None, clock, events, cancel)
    }

    /// As [`Self::spawn`], with power actions and the RTC asked of the privileged helper.
    pub fn spawn_with_helper(
        cfg: config::Power,
        host: HostPaths,
        helper: Option<crate::helper::Client>,
        clock: SharedClock,
        events: EventSink,
        cancel: CancellationToken,
    ) -> PowerHandle {
        let actions = HostActions::new(&host, COMMAND_TIMEOUT).with_helper(helper);
        let (mgr, handle) = PowerManager::new(cfg, actions, clock, events, cancel);
        tokio::spawn(mgr.run());
        handle
    }
}

impl<A: PowerActions> PowerManager<A> {
    /// Builds the planner without starting it, for callers that track their tasks.
    pub fn new(
        cfg: config::Power,
        actions: A,
        clock: SharedClock,
        events: EventSink,
        cancel: CancellationToken,
    ) -> (Self, PowerHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(PowerStatus::default());
        let (schedule_tx, schedule_rx) = watch::channel(None);
        let handle = PowerHandle {
            tx,
            status: status_rx,
            schedule: schedule_rx,
            clock: clock.clone(),
        };
        let mgr = Self {
            cfg,
            actions,
            clock,
            events,
            cancel,
            rx,
            status_tx,
            schedule_tx,
            schedule: None,
            maintenance: false,
            holds: Holds::default(),
            armed_off: None,
            armed_on: None,
            handled_off: None,
            handled_on: None,
            warned_for: None,
            pending: None,
            display_off: false,
            last_action: None,
        };
        (mgr, handle)
    }

    pub async fn run(mut self) {
        let mut now = self.clock.now();
        self.rearm(now);
        self.publish(now);
        let mut requests_open = true;
        loop {
            let wait = self.wait_for(now);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                r = self.rx.recv(), if requests_open => match r {
                    Some(r) => self.apply(r).await,
                    // Every handle is gone: keep following the schedule until cancelled.
                    None => requests_open = false,
                },
                _ = tokio::time::sleep(wait) => {}
            }
            // Requests that arrived meanwhile are applied before deciding, so an inhibit sent
            // just before the off time is honoured.
            while let Ok(r) = self.rx.try_recv() {
                self.apply(r).await;
            }
            now = self.clock.now();
            self.step(now).await;
            self.publish(now);
        }
        tracing::debug!("power planner stopped");
    }

    fn max_inhibit(&self) -> SignedDuration {
        let secs = self.cfg.max_inhibit_minutes.saturating_mul(60);
        SignedDuration::from_secs(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// A crossed transition noticed later than this was jumped over, not lived through.
    fn grace(&self) -> SignedDuration {
        self.max_inhibit().max(MIN_LATE_GRACE)
    }

    fn rearm(&mut self, now: Timestamp) {
        self.armed_off = self.schedule.as_ref().and_then(|s| s.next_off(now));
        self.armed_on = self.schedule.as_ref().and_then(|s| s.next_on(now));
    }

    fn wait_for(&self, now: Timestamp) -> Duration {
        let warn_at = match (&self.schedule, self.armed_off) {
            (Some(s), Some(off)) if self.warned_for != Some(off) => {
                Some(minus_minutes(off, u64::from(s.warn_minutes())))
            }
            _ => None,
        };
        let next = [self.armed_off, self.armed_on, warn_at]
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .min();
        let cap = if self.pending.is_some() {
            DEFERRED_STEP
        } else {
            MAX_STEP
        };
        match next {
            Some(t) => {
                let ms = u64::try_from(t.duration_since(now).as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(ms.max(10)).min(cap)
            }
            None => cap,
        }
    }

    async fn apply(&mut self, r: Request) {
        let now = self.clock.now();
        match r {
            Request::SetSchedule(new) => {
                // Settle anything the old schedule crossed before it is replaced.
                self.step(now).await;
                tracing::info!(
                    version = ?new.as_ref().and_then(|s| s.version()),
                    timezone = new.as_ref().map(|s| s.timezone()).unwrap_or("-"),
                    "power schedule in force"
                );
                self.schedule = new;
                let _ = self.schedule_tx.send(self.schedule.clone());
                if self.pending.is_some() && self.schedule.as_ref().is_none_or(|s| s.is_on(now)) {
                    self.pending = None;
                    self.events.notice(
                        "power.cancelled",
                        "deferred off action cancelled by the new schedule",
                        json!({}),
                    );
                }
                self.rearm(now);
            }
            Request::Maintenance(on) => {
                self.maintenance = on;
            }
            Request::Inhibit { conn_id, who, why } => {
                tracing::info!(conn_id, who = %who, why = %why, "power-off inhibited");
                self.holds.inhibit(conn_id, &who, &why, now);
            }
            Request::Release(conn_id) => {
                if self.holds.release(conn_id) {
                    tracing::info!(conn_id, "power-off inhibitor released");
                }
            }
        }
        self.publish(now);
    }

    /// One look at the wall clock: handle crossed transitions, the deferred off action and the
    /// warning, then re-arm from `now`.
    async fn step(&mut self, now: Timestamp) {
        let Some(sched) = self.schedule.clone() else {
            self.pending = None;
            self.rearm(now);
            return;
        };
        let grace = self.grace();

        if let Some(on_at) = self.armed_on
            && now >= on_at
            && self.handled_on.is_none_or(|h| on_at > h)
        {
            self.handled_on = Some(on_at);
            if now.duration_since(on_at) <= grace {
                self.on_crossed(&sched, on_at).await;
            }
        }

        if let Some(off_at) = self.armed_off
            && now >= off_at
            && self.handled_off.is_none_or(|h| off_at > h)
        {
            self.handled_off = Some(off_at);
            let late = now.duration_since(off_at);
            if late > grace || sched.is_on(now) {
                tracing::warn!(off_at = %rfc3339(off_at), late_s = late.as_secs(), "off time passed unobserved (clock step or suspend); not acted on");
            } else {
                let deadline = off_at.checked_add(self.max_inhibit()).unwrap_or(off_at);
                self.pending = Some(Pending {
                    off_at,
                    deadline,
                    action: sched.off_action(),
                    announced: false,
                });
            }
        }

        if let Some(p) = self.pending {
            let reasons = self.holds.defer_reasons(self.maintenance);
            if reasons.is_empty() {
                self.act(&sched, p, now, false).await;
            } else if now >= p.deadline {
                self.events.emit(
                    Severity::Minor,
                    "power.inhibit_expired",
                    format!(
                        "{} deferred for {} min; acting anyway",
                        p.action.as_str(),
                        self.cfg.max_inhibit_minutes
                    ),
                    json!({"off_at": rfc3339(p.off_at), "reasons": reasons, "holds": self.holds.list()}),
                );
                self.act(&sched, p, now, true).await;
            } else if !p.announced {
                tracing::info!(off_at = %rfc3339(p.off_at), ?reasons, "off action deferred");
                self.events.notice(
                    "power.deferred",
                    format!("{} deferred: {}", p.action.as_str(), reasons.join("; ")),
                    json!({"off_at": rfc3339(p.off_at), "deadline": rfc3339(p.deadline), "reasons": reasons}),
                );
                self.pending = Some(Pending {
                    announced: true,
                    ..p
                });
            }
        }

        self.rearm(now);
        self.maybe_warn(&sched, now);
    }

    fn maybe_warn(&mut self, sched: &Schedule, now: Timestamp) {
        let Some(off_at) = self.armed_off else { return };
        if sched.off_action() == OffAction::None || self.warned_for == Some(off_at) {
            return;
        }
        let warn = u64::from(sched.warn_minutes());
        if now < minus_minutes(off_at, warn) || now >= off_at {
            return;
        }
        self.warned_for = Some(off_at);
        let secs_left = off_at.duration_since(now).as_secs();
        let minutes_left = (secs_left + 59) / 60;
        let wake_at = self.wake_for(sched, off_at);
        self.events.notice(
            "power.warning",
            format!("{} in {minutes_left} min", sched.off_action().as_str()),
            json!({
                "minutes_left": minutes_left,
                "off_at": rfc3339(off_at),
                "action": sched.off_action(),
            }),
        );
        self.events.emit(
            Severity::Info,
            "power.scheduled",
            format!(
                "{} scheduled at {}",
                sched.off_action().as_str(),
                rfc3339(off_at)
            ),
            json!({
                "off_at": rfc3339(off_at),
                "action": sched.off_action(),
                "next_on": sched.next_on(off_at).map(rfc3339),
                "wake_at": wake_at.map(rfc3339),
            }),
        );
    }

    /// The RTC time for a power-off at `after`: the next opening minus the wake lead and this
    /// terminal's wake spread (PROTOCOL §8).
    fn wake_for(&self, sched: &Schedule, after: Timestamp) -> Option<Timestamp> {
        if sched.off_action() != OffAction::Poweroff {
            return None;
        }
        sched
            .next_on(after)
            .map(|on| minus_minutes(on, self.cfg.wake_lead_minutes))
            .map(|t| {
                let spread = i64::try_from(self.cfg.wake_spread_s).unwrap_or(0);
                t.checked_sub(SignedDuration::from_secs(spread))
                    .unwrap_or(t)
            })
    }

    async fn on_crossed(&mut self, sched: &Schedule, on_at: Timestamp) {
        if self.pending.take().is_some() {
            self.events.notice(
                "power.cancelled",
                "deferred off action cancelled: the next window has started",
                json!({"on_at": rfc3339(on_at)}),
            );
        }
        // Also after an agent restart while dark, so "display_on at the next on" survives it;
        // turning on a display that is on is harmless.
        if self.display_off || sched.off_action() == OffAction::DisplayOff {
            let r = self
                .actions
                .run("display_on", &self.cfg.display_on_cmd)
                .await;
            self.report_failure(&r);
            if r.is_ok() {
                self.display_off = false;
            }
            self.record("display_on", on_at, None, None, false, r.map(|_| ()));
        }
    }

    async fn act(&mut self, sched: &Schedule, p: Pending, now: Timestamp, forced: bool) {
        self.pending = None;
        match p.action {
            OffAction::Poweroff => {
                let wake_at = self.wake_for(sched, now);
                if let Some(w) = wake_at
                    && w.duration_since(now) < MIN_OFF_SPAN
                {
                    tracing::warn!(wake_at = %rfc3339(w), "next opening too close; staying on");
                    self.record_skip(now, p.off_at, "the next opening is too close to power off");
                    return;
                }
                if let Err(e) = self.actions.set_wake_alarm(wake_at) {
                    self.events.emit(
                        Severity::Major,
                        "power.wake_failed",
                        format!("cannot set the RTC wake alarm; the kiosk may not power on by itself: {e}"),
                        json!({"wake_at": wake_at.map(rfc3339)}),
                    );
                }
                self.events.emit(
                    Severity::Info,
                    "power.off",
                    "powering off per schedule",
                    json!({"off_at": rfc3339(p.off_at), "wake_at": wake_at.map(rfc3339), "forced": forced}),
                );
                let r = self.actions.run("poweroff", &self.cfg.poweroff_cmd).await;
                self.report_failure(&r);
                self.record(
                    "poweroff",
                    now,
                    Some(p.off_at),
                    wake_at,
                    forced,
                    r.map(|_| ()),
                );
            }
            OffAction::DisplayOff => {
                let r = self
                    .actions
                    .run("display_off", &self.cfg.display_off_cmd)
                    .await;
                self.report_failure(&r);
                if r.is_ok() {
                    self.display_off = true;
                }
                self.record(
                    "display_off",
                    now,
                    Some(p.off_at),
                    None,
                    forced,
                    r.map(|_| ()),
                );
            }
            OffAction::None => {
                self.record("none", now, Some(p.off_at), None, forced, Ok(()));
            }
        }
    }

    fn report_failure(&self, r: &Result<CommandOutput, ExecError>) {
        if let Err(e) = r {
            self.events
                .emit(Severity::Major, "power.failed", e.to_string(), json!({}));
        }
    }

    fn record(
        &mut self,
        action: &str,
        at: Timestamp,
        off_at: Option<Timestamp>,
        wake_at: Option<Timestamp>,
        forced: bool,
        result: Result<(), ExecError>,
    ) {
        let (ok, message) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e.to_string()),
        };
        self.last_action = Some(LastAction {
            action: action.to_string(),
            at: rfc3339(at),
            off_at: off_at.map(rfc3339),
            wake_at: wake_at.map(rfc3339),
            forced,
            ok,
            message,
        });
    }

    fn record_skip(&mut self, at: Timestamp, off_at: Timestamp, why: &str) {
        self.last_action = Some(LastAction {
            action: "skipped".into(),
            at: rfc3339(at),
            off_at: Some(rfc3339(off_at)),
            wake_at: None,
            forced: false,
            ok: true,
            message: why.into(),
        });
    }

    fn publish(&self, now: Timestamp) {
        let sched = self.schedule.as_deref();
        let next_off = sched.and_then(|s| s.next_off(now));
        let status = PowerStatus {
            schedule: sched.map(Schedule::summary),
            in_window: sched.is_some_and(|s| s.is_on(now)),
            next_on: sched.and_then(|s| s.next_on(now)).map(rfc3339),
            next_off: next_off.map(rfc3339),
            wake_at: sched
                .zip(next_off)
                .and_then(|(s, off)| self.wake_for(s, off))
                .map(rfc3339),
            maintenance: self.maintenance,
            holds: self.holds.list(),
            pending_off: self.pending.map(|p| PendingOff {
                off_at: rfc3339(p.off_at),
                deadline: rfc3339(p.deadline),
                action: p.action,
                reasons: self.holds.defer_reasons(self.maintenance),
            }),
            last_action: self.last_action.clone(),
        };
        self.status_tx.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }
}
