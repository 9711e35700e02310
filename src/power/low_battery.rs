//! A UPS on low battery: with `power.on_low_battery` the terminal is switched off cleanly,
//! once, with the reason recorded, rather than dying mid-transaction when the battery runs
//! out. Telemetry says when (a NUT probe's reading); the decision and the action are power's.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{HostActions, PowerActions};
use crate::config;
use crate::events::{EventSink, Severity};
use crate::host::HostPaths;
use crate::telemetry::TelemetryHandle;

/// Waits for the first low-battery report, then powers off (or says why it does not).
/// The power-off runs `power.poweroff_cmd`, or asks the privileged helper when there is one.
pub async fn power_off_on_low_battery(
    telemetry: TelemetryHandle,
    events: EventSink,
    cfg: config::Power,
    host: HostPaths,
    helper: Option<crate::helper::Client>,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = telemetry.low_battery() => {}
    }
    if !cfg.on_low_battery {
        tracing::warn!(
            "UPS reports low battery; power.on_low_battery is off, so the terminal stays on"
        );
        return;
    }
    events.emit(
        Severity::Critical,
        "power.low_battery",
        "UPS battery low: powering the terminal off cleanly",
        json!({"reason": "ups_low_battery", "cmd": cfg.poweroff_cmd}),
    );
    // The reason is on disk before the machine goes down.
    events.flush().await;
    let actions = HostActions::new(&host, super::COMMAND_TIMEOUT).with_helper(helper);
    match actions.run("poweroff", &cfg.poweroff_cmd).await {
        Ok(_) => tracing::info!("low-battery power-off started"),
        Err(e) => tracing::error!(error = %e, "low-battery power-off failed"),
    }
}
