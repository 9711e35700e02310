//! One telemetry task decides every probe transition: an `inspect` and a health report asked
//! for while a probe run is under way join that run instead of racing it, so a device that
//! goes away and comes back raises exactly one `probe.failed` and one `probe.recovered`.
//!
//! The probe is a real `exec` probe (a shell script on real files in a temp dir). While the
//! device is present it stops half-way on a FIFO the test opens, so the test holds a run open
//! exactly as long as it needs to; a missing device fails at once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use kiosk_agent::config::Config;
use kiosk_agent::events::{EventSink, Outbox};
use kiosk_agent::host::{FixedClock, SharedClock};
use kiosk_agent::maintenance::Maintenance;
use kiosk_agent::state::StateStore;
use kiosk_agent::telemetry::{ProbeResult, Telemetry, TelemetryHandle};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    events: EventSink,
    handle: TelemetryHandle,
    cancel: CancellationToken,
}

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dev");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("thing"), "").unwrap();
    mkfifo(&root.join("started"));
    mkfifo(&root.join("gate"));
    let script = r#"[ -e "$1/thing" ] || { echo missing; exit 1; }
echo run >> "$1/runs"
echo up > "$1/started"
cat "$1/gate" > /dev/null
echo present"#;
    let cfg = Config::from_toml(&format!(
        r#"
[terminal]
id = "t1"
[mqtt]
url = "mqtt://127.0.0.1:1"
[health]
interval_s = 3600
[[probes]]
id = "thing"
kind = "exec"
severity = "major"
timeout_ms = 60000
cmd = ["sh", "-c", {script:?}, "sh", {root:?}]
"#,
        script = script,
        root = root.display().to_string(),
    ))
    .map_err(|e| format!("{e:?}"))
    .unwrap();
    let clock: SharedClock = Arc::new(FixedClock::new("2026-11-29T08:00:00Z".parse().unwrap()));
    let (ob, _) = Outbox::open(&dir.path().join("events"), 100).unwrap();
    let events = EventSink::new(ob, "t1", clock.clone(), 50);
    let m = Maintenance::load(StateStore::open(dir.path().join("state")).unwrap());
    let t = Telemetry::new(&cfg, events.clone(), m, clock);
    let cancel = CancellationToken::new();
    let (handle, task) = t.start(None, cancel.clone());
    tokio::spawn(task);
    Rig {
        _dir: dir,
        root,
        events,
        handle,
        cancel,
    }
}

impl Rig {
    /// Returns once a run has reached the device (and is now held at the gate).
    async fn run_started(&self) {
        let p = self.root.join("started");
        tokio::task::spawn_blocking(move || std::fs::read(p).unwrap())
            .await
            .unwrap();
    }

    /// Lets the run held at the gate finish.
    async fn release(&self) {
        let p = self.root.join("gate");
        tokio::task::spawn_blocking(move || std::fs::write(p, b"").unwrap())
            .await
            .unwrap();
    }

    fn runs_that_saw_the_device(&self) -> usize {
        std::fs::read_to_string(self.root.join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn transitions(&self) -> Vec<String> {
        self.events
            .recent(50)
            .into_iter()
            .filter(|e| e.details["probe"] == "thing")
            .map(|e| e.code)
            .collect()
    }
}

/// Polls `f` once, so that its request is with the telemetry task, and hands it back.
async fn asked<F: Future>(mut f: Pin<Box<F>>) -> Pin<Box<F>> {
    std::future::poll_fn(|cx| {
        let _ = f.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    f
}

fn thing(probes: &[ProbeResult]) -> bool {
    probes.iter().find(|p| p.id == "thing").unwrap().ok
}

fn thing_in(report: &Value) -> bool {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "thing")
        .unwrap()["ok"]
        .as_bool()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn inspect_and_health_during_a_run_join_it_and_each_transition_fires_once() {
    let r = rig();
    // The health loop's first run reaches the device and is held there.
    r.run_started().await;
    // The device goes away meanwhile; an inspect and a health report are asked for.
    std::fs::remove_file(r.root.join("thing")).unwrap();
    let inspect = asked(Box::pin(r.handle.run_probes())).await;
    let health = asked(Box::pin(r.handle.report())).await;
    r.release().await;
    assert!(
        thing(&inspect.await),
        "the inspect is answered by the run under way"
    );
    assert!(thing_in(&health.await), "so is the health report");
    assert_eq!(r.transitions(), Vec::<String>::new(), "nothing changed yet");
    assert_eq!(r.runs_that_saw_the_device(), 1, "one run served all three");

    // The next runs see it missing: one fault, however many ask at once.
    let a = asked(Box::pin(r.handle.run_probes())).await;
    let b = asked(Box::pin(r.handle.report())).await;
    let c = asked(Box::pin(r.handle.run_probes())).await;
    assert!(!thing(&a.await));
    assert!(!thing_in(&b.await));
    assert!(!thing(&c.await));
    assert_eq!(r.transitions(), vec!["probe.failed"]);

    // It comes back while another inspect and a health report are asked for during the run.
    std::fs::write(r.root.join("thing"), "").unwrap();
    let inspect = asked(Box::pin(r.handle.run_probes())).await;
    r.run_started().await;
    let health = asked(Box::pin(r.handle.report())).await;
    r.release().await;
    assert!(thing(&inspect.await));
    assert!(thing_in(&health.await));
    assert_eq!(r.transitions(), vec!["probe.failed", "probe.recovered"]);
    assert_eq!(r.runs_that_saw_the_device(), 2);
    assert!(
        thing(&r.handle.last_probes()),
        "the handle reads the last run"
    );
    assert!(thing_in(&r.handle.last().unwrap()));
    r.cancel.cancel();
}
