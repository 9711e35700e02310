//! Wiring only: builds the parts from a validated config, runs them as tasks under one
//! cancellation token, talks to systemd (READY, WATCHDOG, STOPPING, STATUS) and stops cleanly
//! on SIGTERM. No decision is made here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::server::{Server, ServerError};
use crate::config::Config;
use crate::control::{Control, ControlError, Deps};
use crate::events::{EventSink, EventsError, Outbox, Severity};
use crate::host::{HostPaths, SharedClock, rfc3339};
use crate::maintenance::Maintenance;
use crate::policy::worker::PolicyWorker;
use crate::power::{PowerHandle, PowerManager};
use crate::state::{StateError, StateStore};
use crate::telemetry::Telemetry;
use crate::transport::{Identity, Inbound, Transport, TransportError};
use crate::update::worker::UpdateWorker;
use crate::update::{InstallError, InstallerConfig};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("state directory: {0}")]
    State(#[from] StateError),
    #[error("event queue: {0}")]
    Events(#[from] EventsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("local socket: {0}")]
    Socket(#[from] ServerError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error(
        "{0} (the terminal is not provisioned yet: {PROVISION} installs the trust root at paths.trust_file)"
    )]
    Control(#[from] ControlError),
    #[error("application updates: {0}")]
    Updates(#[from] InstallError),
    #[error("patrol history: {0}")]
    Patrol(#[from] crate::patrol::PatrolError),
    #[error("usage statistics: {0}")]
    Usage(#[from] crate::usage::UsageError),
}

/// Where the package installs the provisioning script; named in the hints of an unprovisioned
/// terminal (a source checkout has it as `scripts/provision`).
pub const PROVISION: &str = "/usr/share/kiosk-agent/provision";

/// How long a stop may take before the remaining tasks are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config, clock: SharedClock) -> Result<(), AppError> {
    // No trust root, no agent: refuse before announcing anything (provisioning is incomplete).
    crate::trust::TrustStore::load(&cfg.paths.trust_file).map_err(ControlError::from)?;
    let store = StateStore::open(&cfg.paths.state_dir)?;
    let (outbox, recovery) = Outbox::open(&store.path("events"), cfg.events.queue_max)?;
    let events = EventSink::new(outbox, &cfg.terminal.id, clock.clone(), cfg.events.recent);
    let maintenance = Maintenance::load(store.clone());
    let started_at = rfc3339(clock.now());
    let identity = Identity {
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        started_at: started_at.clone(),
    };
    let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(256);
    let (transport, publisher) = Transport::new(&cfg, &identity, events.clone(), inbound_tx)?;
    let ui = crate::ui::UiWatch::new(cfg.ui.heartbeat_timeout_s, events.clone(), clock.clone())
        .muted_by(maintenance.clone());
    let tls_switch = transport.tls_switch();
    let mut telemetry = Telemetry::new(&cfg, events.clone(), maintenance.clone(), clock.clone());
    telemetry.set_ui(ui.clone());
    let server = Server::bind_local(&cfg.paths.socket, &cfg.local)?;

    if recovery.corrupt_lines > 0 || recovery.meta_reset {
        events.emit(
            Severity::Major,
            "events.recovered",
            format!(
                "event queue was damaged: {} unreadable line(s) skipped, {} event(s) kept",
                recovery.corrupt_lines, recovery.pending
            ),
            json!({"corrupt_lines": recovery.corrupt_lines, "kept": recovery.pending, "meta_reset": recovery.meta_reset}),
        );
    }
    events.emit(
        Severity::Info,
        "agent.started",
        format!("kiosk-agent {} started", crate::VERSION),
        json!({"version": crate::VERSION, "boot_id": identity.boot_id, "pending_events": recovery.pending}),
    );

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (telemetry, telemetry_task) = telemetry.start(Some(publisher.clone()), cancel.clone());
    let cfg = Arc::new(cfg);
    let host = HostPaths::new(&cfg.paths.root);
    let inventory =
        crate::diagnostics::inventory::inventory(&host, &cfg.paths.apps_dir, &Default::default());
    publisher.update_birth(|b| {
        b.insert("inventory".into(), serde_json::Value::Object(inventory));
    });
    let (cert_tx, cert_rx) = mpsc::unbounded_channel();
    let (renewal, certs) = crate::identity::Renewal::new(
        crate::identity::Settings {
            terminal_id: cfg.terminal.id.clone(),
            mqtt: cfg.mqtt.clone(),
            state_dir: cfg.paths.state_dir.clone(),
        },
        clock.clone(),
        store.clone(),
        publisher.clone(),
        tls_switch,
        events.clone(),
        cert_tx,
    );
    tracker.spawn(renewal.run(cancel.clone()));

    let helper = crate::helper::Client::from_section(&cfg.helper);
    if let Some(h) = &helper {
        tracing::info!(socket = %h.socket().display(), "host actions go to the privileged helper");
    }
    let power = PowerManager::spawn_with_helper(
        cfg.power.clone(),
        host.clone(),
        helper.clone(),
        clock.clone(),
        events.clone(),
        cancel.clone(),
    );
    power.set_maintenance(maintenance.is_on());
    tracker.spawn(forward_maintenance(
        maintenance.clone(),
        power.clone(),
        cancel.clone(),
    ));

    let (policy_worker, policy) = PolicyWorker::new(
        host.clone(),
        store.clone(),
        clock.clone(),
        Duration::from_secs(cfg.policy.interval_s),
        {
            let publisher = publisher.clone();
            let events = events.clone();
            move |scan: &crate::policy::worker::Scan| {
                publisher.compliance(&scan.report.to_json());
                for t in &scan.transitions {
                    events.emit(
                        t.severity(),
                        t.code(),
                        t.message(),
                        t.details(scan.report.version),
                    );
                }
            }
        },
    );
    let policy_worker = policy_worker.with_deadlines(crate::policy::engine::Deadlines {
        check: Duration::from_secs(cfg.policy.check_timeout_s),
        scan: Duration::from_secs(cfg.policy.scan_timeout_s),
    });
    tracker.spawn(
        policy_worker
            .with_helper(helper.clone())
            .run(cancel.clone()),
    );

    let (update_tx, update_rx) = mpsc::unbounded_channel();
    let zone_power = power.clone();
    let (update_worker, updates) = UpdateWorker::new(
        InstallerConfig::from_sections(
            &cfg.updates,
            &cfg.paths,
            &cfg.commands.systemctl,
            helper.clone(),
        ),
        clock.clone(),
        Arc::new(move || {
            zone_power
                .schedule()
                .and_then(|s| jiff::tz::TimeZone::get(s.timezone()).ok())
                .unwrap_or_else(jiff::tz::TimeZone::system)
        }),
        update_tx,
    )?;
    tracker.spawn(update_worker.run(cancel.clone()));

    // Usage periods are local hours of the schedule's zone; UTC until a schedule is in force.
    let usage_power = power.clone();
    let usage = crate::usage::Usage::open(
        &store.path("usage"),
        &store.path("stats"),
        crate::catalog::path(&cfg.paths.state_dir),
        &cfg.terminal.id,
        clock.clone(),
        Arc::new(move || {
            usage_power
                .schedule()
                .and_then(|s| jiff::tz::TimeZone::get(s.timezone()).ok())
                .unwrap_or(jiff::tz::TimeZone::UTC)
        }),
        events.clone(),
    )?;
    let stats = usage.outbox();
    let transport = transport.with_stats(stats.clone());
    tracker.spawn(usage.clone().run(cancel.clone()));
    tracker.spawn(ui.clone().run(cancel.clone()));

    let (patrol, patrol_rx) = crate::patrol::PatrolHandle::channel();
    let runner = crate::patrol::PatrolRunner {
        store: crate::patrol::PatrolStore::open(store.path("patrol"))?,
        telemetry: telemetry.clone(),
        policy: policy.clone(),
        power: power.clone(),
        publisher: publisher.clone(),
        clock: clock.clone(),
        started: Instant::now(),
        at: cfg.patrol.at.clone(),
        rx: patrol_rx,
        identity: certs.clone(),
    };
    tracker.spawn(runner.run(cancel.clone()));
    tracker.spawn(crate::power::power_off_on_low_battery(
        telemetry.clone(),
        events.clone(),
        cfg.power.clone(),
        host.clone(),
        helper.clone(),
        cancel.clone(),
    ));

    let mut control = Control::load(Deps {
        cfg: cfg.clone(),
        clock: clock.clone(),
        store: store.clone(),
        events: events.clone(),
        publisher: publisher.clone(),
        maintenance: maintenance.clone(),
        telemetry: telemetry.clone(),
        power: power.clone(),
        policy: policy.clone(),
        updates,
        patrol: patrol.clone(),
        usage: usage.clone(),
        identity: certs.clone(),
        ui,
        started_at,
    })?;
    control.restore();
    tracing::info!(trust_version = control.trust_version(), "trust root loaded");
    let ops = Arc::new(control.parts());
    tracker.spawn(transport.run(cancel.clone()));
    tracker.spawn(telemetry_task);
    tracker.spawn(server.run(ops.clone(), cancel.clone()));
    tracker.spawn(control.run(inbound_rx, update_rx, cert_rx, cancel.clone()));
    tracker.spawn(watchdog(cancel.clone()));
    tracker.spawn(release_heap(cancel.clone()));
    tracker.close();

    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);
    tracing::info!(terminal = %cfg.terminal.id, socket = %cfg.paths.socket.display(), "kiosk-agent ready");

    wait_for_stop().await?;
    tracing::info!("stopping");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: flushing events"),
    ]);
    cancel.cancel();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within {STOP_GRACE:?}");
    }
    // Whatever was raised while stopping is on disk before the process ends.
    events.flush().await;
    stats.flush().await;
    let _ = std::fs::remove_file(&cfg.paths.socket);
    tracing::info!(pending_events = events.pending(), "stopped");
    Ok(())
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

async fn wait_for_stop() -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Hands freed heap pages back to the kernel now and then. After a burst (a connection flood,
/// a storm of refused messages) glibc keeps the freed memory in its arenas, so RSS stays at
/// the burst's peak although nothing holds it; `malloc_trim` returns it. Cheap when there is
/// nothing to give back.
async fn release_heap(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(HEAP_TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => trim_heap(),
        }
    }
}

const HEAP_TRIM_EVERY: Duration = Duration::from_secs(15);

/// Returns free heap pages to the kernel (glibc only; a no-op elsewhere).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas: each thread that allocates (the blocking pool's download,
/// policy and probe threads) would otherwise get its own arena and keep its peak. Call once,
/// before any thread is started.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt with a documented parameter, called before other threads exist.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

/// Pings the systemd watchdog at half its period from the runtime itself, so a wedged runtime
/// stops the pings and systemd restarts the agent.
async fn watchdog(cancel: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
        }
    }
}

/// Maintenance defers scheduled power-off: keep the planner told.
async fn forward_maintenance(m: Maintenance, power: PowerHandle, cancel: CancellationToken) {
    let mut rx = m.watch();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let on = rx.borrow_and_update().on;
                power.set_maintenance(on);
            }
        }
    }
}
