//! Health: what the terminal and its devices look like right now.
//!
//! Owns the health `seq`, the system sampler (sysinfo, the only place it is used: it always
//! reads the real `/proc`), the probes and their last known state. It raises `probe.failed` /
//! `probe.recovered` and `disk.low` / `disk.recovered` on state changes (muted in maintenance
//! mode, when a technician is expected to unplug things). All of it belongs to one task
//! ([`Telemetry::start`]), so probe runs never overlap and every transition is decided in one
//! place; the others use a [`TelemetryHandle`]. The task publishes the periodic health report
//! through the publisher it is given; the reports it hands out otherwise are not published.

pub mod grade;
pub mod ipp;
pub mod nut;
pub mod probes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sysinfo::{Components, Disks, Networks, System};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{EventSink, Severity};
use crate::host::{HostPaths, SharedClock, rfc3339};
use crate::maintenance::Maintenance;
use crate::transport::Publisher;
pub use grade::Grade;
pub use probes::{Probe, ProbeEnv, ProbeResult};

/// Reads system figures through sysinfo; kept behind this type so nothing else depends on it.
pub struct Sampler {
    sys: System,
    disks: Disks,
    nets: Networks,
    comps: Components,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Filesystems that are not storage a technician can run out of.
const PSEUDO_FS: &[&str] = &[
    "tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "ramfs",
];

impl Sampler {
    pub fn new() -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        Self {
            sys,
            disks: Disks::new_with_refreshed_list(),
            nets: Networks::new_with_refreshed_list(),
            comps: Components::new_with_refreshed_list(),
        }
    }

    /// The system part of a health report (docs/protocol.md §3).
    pub fn sample(&mut self) -> Value {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        self.nets.refresh(true);
        self.comps.refresh(true);
        let load = System::load_average();
        let mut seen = HashSet::new();
        let disks: Vec<Value> = self
            .disks
            .list()
            .iter()
            .filter(|d| !PSEUDO_FS.contains(&d.file_system().to_string_lossy().as_ref()))
            .filter(|d| seen.insert(d.mount_point().to_path_buf()))
            .map(|d| {
                json!({
                    "mount": d.mount_point().to_string_lossy(),
                    "total_bytes": d.total_space(),
                    "avail_bytes": d.available_space(),
                })
            })
            .collect();
        let temps: Vec<Value> = self
            .comps
            .list()
            .iter()
            .filter_map(|c| {
                let t = c.temperature()?;
                t.is_finite()
                    .then(|| json!({"label": c.label(), "celsius": t}))
            })
            .collect();
        let mut net: Vec<Value> = self
            .nets
            .iter()
            .map(|(name, data)| {
                let up = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
                    .map(|s| matches!(s.trim(), "up" | "unknown"))
                    .unwrap_or(false);
                json!({
                    "iface": name,
                    "up": up,
                    "rx_bytes": data.total_received(),
                    "tx_bytes": data.total_transmitted(),
                })
            })
            .collect();
        net.sort_by(|a, b| a["iface"].as_str().cmp(&b["iface"].as_str()));
        json!({
            "uptime_s": System::uptime(),
            "cpu": {
                "usage_pct": (f64::from(self.sys.global_cpu_usage()) * 10.0).round() / 10.0,
                "load": [load.one, load.five, load.fifteen],
            },
            "memory": {"total_bytes": self.sys.total_memory(), "used_bytes": self.sys.used_memory()},
            "disks": disks,
            "temps": temps,
            "net": net,
        })
    }
}

/// This process's resident set, for the `agent` block of the report.
pub fn own_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The probe and transition state, owned by the telemetry task alone ([`Telemetry::start`]):
/// every probe run, every transition and so every `probe.*`/`disk.*`/`time.*` event is decided
/// there, one run at a time. Everyone else holds a [`TelemetryHandle`].
pub struct Telemetry {
    terminal_id: String,
    interval: Duration,
    disk_low_pct: f64,
    probes: Vec<Probe>,
    env: ProbeEnv,
    sampler: Sampler,
    seq: u64,
    /// probe id → (ok, graded) at the last run.
    probe_ok: HashMap<String, (bool, bool)>,
    /// probe id → when its current fault was first seen (for escalation).
    failing_since: HashMap<String, jiff::Timestamp>,
    disk_low: HashSet<String>,
    events: EventSink,
    maintenance: Maintenance,
    clock: SharedClock,
    /// Signalled when a UPS reports low battery (power decides whether to power off).
    low_battery: Arc<Notify>,
    /// The kiosk screen's heartbeat, shown as one more item beside the probes.
    ui: Option<crate::ui::UiWatch>,
    /// Clock discipline (§9): where it is read and since when it is lost.
    time: (
        Box<dyn crate::diagnostics::timesync::TimeSource>,
        crate::diagnostics::timesync::TimeWatch,
    ),
    /// What the handles read without asking the task.
    view: watch::Sender<View>,
}

/// The latest results, published by the task after each run.
#[derive(Debug, Clone, Default)]
struct View {
    last: Option<Value>,
    last_probes: Vec<ProbeResult>,
    last_time: Option<crate::diagnostics::timesync::TimeStatus>,
}

/// What the others ask of the telemetry task.
enum Request {
    Probes(oneshot::Sender<Vec<ProbeResult>>),
    Report(oneshot::Sender<Value>),
    /// Publish a health report now (`report_now`).
    Publish,
}

/// The handle the health consumers share (socket ops, commands, the patrol, power). Cheap to
/// clone. Requests are served by the telemetry task one probe run at a time: a request made
/// while a run is under way is answered from that run.
#[derive(Clone)]
pub struct TelemetryHandle {
    tx: mpsc::UnboundedSender<Request>,
    view: watch::Receiver<View>,
    ui: Option<crate::ui::UiWatch>,
    low_battery: Arc<Notify>,
}

impl std::fmt::Debug for TelemetryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryHandle").finish_non_exhaustive()
    }
}

fn with_ui(ui: Option<&crate::ui::UiWatch>, mut results: Vec<ProbeResult>) -> Vec<ProbeResult> {
    if let Some(item) = ui.and_then(crate::ui::UiWatch::item) {
        results.push(item);
    }
    results
}

impl TelemetryHandle {
    /// Asks for a health report outside the interval; it is published as usual.
    pub fn report_now(&self) {
        let _ = self.tx.send(Request::Publish);
    }

    /// Runs the probes (or joins the run under way) and returns their results, heartbeat
    /// included. Used by the patrol and `inspect`.
    pub async fn run_probes(&self) -> Vec<ProbeResult> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Probes(tx)).is_err() {
            return self.last_probes();
        }
        match rx.await {
            Ok(r) => with_ui(self.ui.as_ref(), r),
            Err(_) => self.last_probes(),
        }
    }

    /// One full health report (not published); the last one (or null) once the task stopped.
    pub async fn report(&self) -> Value {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Report(tx)).is_ok()
            && let Ok(r) = rx.await
        {
            return r;
        }
        self.last().unwrap_or(Value::Null)
    }

    /// The last health report made.
    pub fn last(&self) -> Option<Value> {
        self.view.borrow().last.clone()
    }

    /// The last probe results, with the heartbeat item as it is now.
    pub fn last_probes(&self) -> Vec<ProbeResult> {
        with_ui(self.ui.as_ref(), self.view.borrow().last_probes.clone())
    }

    /// The last clock-discipline reading, for `kioskctl status` and the patrol.
    pub fn last_time(&self) -> Option<crate::diagnostics::timesync::TimeStatus> {
        self.view.borrow().last_time
    }

    /// Resolves when a UPS reports low battery (once per report of it).
    pub async fn low_battery(&self) {
        self.low_battery.notified().await;
    }
}

impl Telemetry {
    pub fn new(
        cfg: &Config,
        events: EventSink,
        maintenance: Maintenance,
        clock: SharedClock,
    ) -> Self {
        let default_timeout = cfg.health.probe_timeout_ms;
        Self {
            terminal_id: cfg.terminal.id.clone(),
            interval: Duration::from_secs(cfg.health.interval_s),
            disk_low_pct: cfg.health.disk_low_pct,
            probes: cfg
                .probes
                .iter()
                .map(|p| Probe {
                    cfg: p.clone(),
                    timeout: Duration::from_millis(p.timeout_ms.unwrap_or(default_timeout)),
                })
                .collect(),
            env: ProbeEnv {
                host: HostPaths::new(&cfg.paths.root),
                systemctl: cfg.commands.systemctl.clone(),
            },
            sampler: Sampler::new(),
            seq: 0,
            probe_ok: HashMap::new(),
            failing_since: HashMap::new(),
            low_battery: Arc::new(Notify::new()),
            disk_low: HashSet::new(),
            events,
            maintenance,
            clock,
            ui: None,
            time: (
                Box::new(crate::diagnostics::timesync::KernelTime),
                Default::default(),
            ),
            view: watch::Sender::new(View::default()),
        }
    }

    /// Replaces the kernel as the source of clock-discipline figures (tests).
    pub fn set_time_source(&mut self, src: Box<dyn crate::diagnostics::timesync::TimeSource>) {
        self.time = (src, Default::default());
    }

    /// Adds the kiosk screen's heartbeat to every probe list (status, health, patrol).
    pub fn set_ui(&mut self, ui: crate::ui::UiWatch) {
        self.ui = Some(ui);
    }

    /// Hands the state to its task: the future runs the health loop (a report every
    /// `health.interval_s`, published through `publisher` when there is one) and serves the
    /// handle's requests until `cancel`.
    pub fn start(
        self,
        publisher: Option<Publisher>,
        cancel: CancellationToken,
    ) -> (TelemetryHandle, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = TelemetryHandle {
            tx,
            view: self.view.subscribe(),
            ui: self.ui.clone(),
            low_battery: self.low_battery.clone(),
        };
        (handle, self.run(rx, publisher, cancel))
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Request>,
        publisher: Option<Publisher>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                req = rx.recv() => match req {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => Request::Publish,
            };
            let mut waiting = vec![first];
            // One run serves every request made before it ends.
            let probes = {
                let run = self.run_probes();
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        r = &mut run => break r,
                        Some(req) = rx.recv() => waiting.push(req),
                        _ = cancel.cancelled() => return,
                    }
                }
            };
            waiting.extend(std::iter::from_fn(|| rx.try_recv().ok()));
            let report = waiting
                .iter()
                .any(|w| !matches!(w, Request::Probes(_)))
                .then(|| self.report_from(&probes));
            let mut published = false;
            for w in waiting {
                match w {
                    Request::Probes(tx) => {
                        let _ = tx.send(probes.clone());
                    }
                    Request::Report(tx) => {
                        let _ = tx.send(report.clone().unwrap_or_default());
                    }
                    Request::Publish if !published => {
                        published = true;
                        if let (Some(p), Some(r)) = (&publisher, &report) {
                            p.health(r);
                        }
                    }
                    Request::Publish => {}
                }
            }
        }
    }

    /// Reads the clock discipline and raises `time.unsynchronized` / `time.recovered`.
    fn check_time(&mut self) -> Option<crate::diagnostics::timesync::TimeStatus> {
        use crate::diagnostics::timesync::{Transition, UNSYNC_ALARM_S};
        let now = self.clock.now();
        let status = self.time.0.read()?;
        let change = self.time.1.observe(status, now);
        self.view.send_modify(|v| v.last_time = Some(status));
        let details =
            json!({"synchronized": status.synchronized, "max_error_ms": status.max_error_ms});
        match change {
            Some(Transition::Unsynchronized(since)) => {
                self.events.emit(
                Severity::Major,
                "time.unsynchronized",
                format!(
                    "the system clock has not been synchronized since {} (more than {} minutes); expiry checks and TLS depend on it",
                    rfc3339(since),
                    UNSYNC_ALARM_S / 60
                ),
                json!({"since": rfc3339(since), "max_error_ms": status.max_error_ms}),
                );
            }
            Some(Transition::Recovered) => {
                self.events.emit(
                    Severity::Info,
                    "time.recovered",
                    "the system clock is synchronized again",
                    details,
                );
            }
            None => {}
        }
        Some(status)
    }

    /// Runs every probe concurrently (each bounded by its timeout) and raises events for
    /// state changes. Without the heartbeat item (the handle adds it as it is when read).
    async fn run_probes(&mut self) -> Vec<ProbeResult> {
        let mut set = JoinSet::new();
        for (i, p) in self.probes.iter().enumerate() {
            let p = p.clone();
            let env = self.env.clone();
            set.spawn(async move { (i, p.run(&env).await) });
        }
        let mut results: Vec<Option<ProbeResult>> = vec![None; self.probes.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, res)) = r {
                results[i] = Some(res);
            }
        }
        let mut results: Vec<ProbeResult> = results
            .into_iter()
            .zip(&self.probes)
            .map(|(r, p)| {
                r.unwrap_or_else(|| ProbeResult {
                    id: p.cfg.id.clone(),
                    kind: p.cfg.kind.as_str().into(),
                    ok: false,
                    detail: "probe task failed".into(),
                    severity: p.cfg.severity.as_str().into(),
                    level: None,
                    details: Value::Null,
                    reading_level: None,
                    event_code: None,
                    power_off_recommended: false,
                })
            })
            .collect();
        self.grade(&mut results);
        self.record_transitions(&results);
        if results.iter().any(|r| r.power_off_recommended) {
            self.low_battery.notify_one();
        }
        self.view.send_modify(|v| v.last_probes = results.clone());
        results
    }
    /// Fault grades (P1–P4, `grade::grade`): the device's own reading or the configured
    /// severity, escalated when a fault stays open past its restore target.
    fn grade(&mut self, results: &mut [ProbeResult]) {
        let now = self.clock.now();
        let since = &mut self.failing_since;
        for r in results.iter_mut() {
            let faulty = !r.ok || r.reading_level.is_some();
            let started = if faulty {
                Some(*since.entry(r.id.clone()).or_insert(now))
            } else {
                since.remove(&r.id);
                None
            };
            let severity = Severity::parse(&r.severity).unwrap_or(Severity::Major);
            r.level = grade::grade(&r.kind, severity, r.ok, r.reading_level, started, now);
        }
    }

    fn record_transitions(&mut self, results: &[ProbeResult]) {
        let muted = self.maintenance.is_on();
        let state = &mut self.probe_ok;
        for r in results {
            let graded = r.level.is_some();
            let before = state.insert(r.id.clone(), (r.ok, graded));
            // A probe failing at start counts as a change: the platform must hear of it.
            let changed = before.map_or(!r.ok, |(b, _)| b != r.ok);
            // Ok but graded (paper or toner low, UPS on battery): worth planning a visit for.
            let newly_low = r.ok && graded && before.is_none_or(|(b, g)| !b || !g);
            if muted {
                continue;
            }
            let details = json!({"probe": r.id, "kind": r.kind, "detail": r.detail,
                "level": r.level, "device": r.details});
            let severity = r
                .level
                .map(Grade::severity)
                .unwrap_or_else(|| Severity::parse(&r.severity).unwrap_or(Severity::Major));
            if changed && r.ok {
                self.events.emit(
                    Severity::Info,
                    "probe.recovered",
                    format!("{} ({}) recovered: {}", r.id, r.kind, r.detail),
                    details.clone(),
                );
            } else if changed {
                self.events.emit(
                    severity,
                    r.event_code.unwrap_or("probe.failed"),
                    format!("{} ({}) failed: {}", r.id, r.kind, r.detail),
                    details.clone(),
                );
            }
            if newly_low {
                let code = if r.kind == "nut" {
                    "ups.on_battery"
                } else {
                    "device.consumable"
                };
                self.events.emit(
                    severity,
                    code,
                    format!("{} ({}) needs attention: {}", r.id, r.kind, r.detail),
                    details,
                );
            }
        }
    }

    fn check_disks(&mut self, system: &Value) {
        let low = &mut self.disk_low;
        for d in system["disks"].as_array().into_iter().flatten() {
            let (Some(mount), Some(total), Some(avail)) = (
                d["mount"].as_str(),
                d["total_bytes"].as_u64(),
                d["avail_bytes"].as_u64(),
            ) else {
                continue;
            };
            if total == 0 {
                continue;
            }
            let pct = avail as f64 * 100.0 / total as f64;
            let details = json!({"mount": mount, "avail_bytes": avail, "total_bytes": total,
                "avail_pct": (pct * 10.0).round() / 10.0, "threshold_pct": self.disk_low_pct});
            if pct < self.disk_low_pct && low.insert(mount.to_string()) {
                self.events.emit(
                    Severity::Major,
                    "disk.low",
                    format!("{mount}: {pct:.1}% free, below {}%", self.disk_low_pct),
                    details,
                );
            } else if pct >= self.disk_low_pct && low.remove(mount) {
                self.events.emit(
                    Severity::Info,
                    "disk.recovered",
                    format!("{mount}: {pct:.1}% free again"),
                    details,
                );
            }
        }
    }

    /// One full health report around `probes`; the sequence number advances by one per report.
    fn report_from(&mut self, probes: &[ProbeResult]) -> Value {
        let probes = with_ui(self.ui.as_ref(), probes.to_vec());
        let mut report = self.sampler.sample();
        self.check_disks(&report);
        self.seq += 1;
        let seq = self.seq;
        let m = self.maintenance.get();
        if let Some(obj) = report.as_object_mut() {
            obj.insert("schema".into(), json!("kiosk.health/1"));
            obj.insert("terminal_id".into(), json!(self.terminal_id));
            obj.insert("seq".into(), json!(seq));
            obj.insert("ts".into(), json!(rfc3339(self.clock.now())));
            obj.insert("probes".into(), json!(probes));
            obj.insert("maintenance".into(), json!(m.on));
            if m.on {
                obj.insert("maintenance_reason".into(), json!(m.reason));
            }
            obj.insert(
                "agent".into(),
                json!({"version": crate::VERSION, "rss_bytes": own_rss_bytes(), "events_pending": self.events.pending()}),
            );
            if let Some(t) = self.check_time() {
                obj.insert("time".into(), json!(t));
            }
        }
        self.view.send_modify(|v| v.last = Some(report.clone()));
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FixedClock;
    use std::sync::Mutex;

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn telemetry(dir: &std::path::Path) -> Telemetry {
        let cfg = Config::from_toml(
            "[terminal]\nid = \"t1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[health]\ndisk_low_pct = 10.0\n",
        )
        .map_err(|_| "config")
        .unwrap();
        let clock: SharedClock = Arc::new(FixedClock::new("2026-11-29T08:00:00Z".parse().unwrap()));
        let (ob, _) = crate::events::Outbox::open(&dir.join("events"), 100).unwrap();
        let events = EventSink::new(ob, "t1", clock.clone(), 50);
        let m = Maintenance::load(crate::state::StateStore::open(dir.join("state")).unwrap());
        Telemetry::new(&cfg, events, m, clock)
    }

    fn disk(avail: u64) -> Value {
        json!({"disks": [{"mount": "/data", "total_bytes": 1000, "avail_bytes": avail}]})
    }

    struct Fake(Arc<Mutex<crate::diagnostics::timesync::TimeStatus>>);
    impl crate::diagnostics::timesync::TimeSource for Fake {
        fn read(&self) -> Option<crate::diagnostics::timesync::TimeStatus> {
            Some(*lock(&self.0))
        }
    }

    #[test]
    fn unsynchronized_clock_raises_then_recovers() {
        use crate::diagnostics::timesync::TimeStatus;
        let d = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock::new("2026-11-29T08:00:00Z".parse().unwrap()));
        let cfg =
            Config::from_toml("[terminal]\nid = \"t1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n")
                .map_err(|_| "config")
                .unwrap();
        let (ob, _) = crate::events::Outbox::open(&d.path().join("events"), 100).unwrap();
        let events = EventSink::new(ob, "t1", clock.clone(), 50);
        let m = Maintenance::load(crate::state::StateStore::open(d.path().join("state")).unwrap());
        let mut t = Telemetry::new(&cfg, events, m, clock.clone());
        let state = Arc::new(Mutex::new(TimeStatus {
            synchronized: false,
            max_error_ms: 16_000,
        }));
        t.set_time_source(Box::new(Fake(state.clone())));
        let at = |s: &str| clock.set(s.parse().unwrap());
        at("2026-11-29T08:00:00Z");
        assert_eq!(t.check_time().map(|s| s.synchronized), Some(false));
        at("2026-11-29T08:10:00Z");
        t.check_time();
        assert!(t.events.recent(10).is_empty(), "ten minutes are tolerated");
        at("2026-11-29T08:10:01Z");
        t.check_time();
        at("2026-11-29T08:20:00Z");
        t.check_time();
        *lock(&state) = TimeStatus {
            synchronized: true,
            max_error_ms: 5,
        };
        t.check_time();
        let got: Vec<(String, String)> = t
            .events
            .recent(10)
            .into_iter()
            .map(|e| (e.code, e.severity.as_str().to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("time.unsynchronized".to_string(), "major".to_string()),
                ("time.recovered".to_string(), "info".to_string())
            ]
        );
        assert_eq!(
            t.view.borrow().last_time,
            Some(TimeStatus {
                synchronized: true,
                max_error_ms: 5
            })
        );
    }

    #[test]
    fn disk_low_is_raised_once_and_recovers() {
        let d = tempfile::tempdir().unwrap();
        let mut t = telemetry(d.path());
        t.check_disks(&disk(500));
        t.check_disks(&disk(50));
        t.check_disks(&disk(40));
        t.check_disks(&disk(200));
        let codes: Vec<String> = t.events.recent(10).into_iter().map(|e| e.code).collect();
        assert_eq!(codes, vec!["disk.low", "disk.recovered"]);
        let low = &t.events.recent(10)[0];
        assert_eq!(low.details["mount"], "/data");
        assert_eq!(low.level.as_deref(), Some("P2"));
    }
}
