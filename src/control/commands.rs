//! Remote commands (docs/protocol.md §5), run after the control layer has verified the signature,
//! the target, the expiry and that the id is new.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::Deps;
use crate::events::Severity;
use crate::host::rfc3339;

pub struct CommandResult {
    pub status: &'static str,
    pub code: &'static str,
    pub message: String,
    pub result: Value,
}

fn ok(message: impl Into<String>, result: Value) -> CommandResult {
    CommandResult {
        status: "ok",
        code: "ok",
        message: message.into(),
        result,
    }
}

fn error(code: &'static str, message: impl Into<String>) -> CommandResult {
    CommandResult {
        status: "error",
        code,
        message: message.into(),
        result: json!({}),
    }
}

/// Longest delay accepted for reboot/poweroff.
const MAX_DELAY_S: u64 = 24 * 3600;
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

pub async fn execute(d: &Deps, name: &str, args: &Map<String, Value>) -> CommandResult {
    for (k, v) in args {
        if let Err(m) = crate::limits::strings(&format!("args.{k}"), v, crate::limits::ARG_CHARS) {
            return error("invalid", m);
        }
    }
    match name {
        "ping" => ok(
            "pong",
            json!({"pong": true, "agent_version": crate::VERSION}),
        ),
        "report_now" => {
            d.telemetry.report_now.notify_one();
            ok("health report requested", json!({}))
        }
        "inspect" => match d.patrol.run(true).await {
            // The patrol report is published retained on `patrol` as well.
            Some(report) => ok(
                format!("patrol {} with {} item(s)", report.seq, report.items.len()),
                json!({"probes": d.telemetry.last_probes(), "patrol_seq": report.seq}),
            ),
            None => error("patrol_failed", "the patrol report could not be made"),
        },
        "compliance_scan" => match d.policy.scan().await {
            Some(scan) => {
                let r = &scan.report;
                ok(
                    format!(
                        "scan {}: {} passed, {} failed, {} remediated",
                        r.seq, r.passed, r.failed, r.remediated
                    ),
                    json!({"version": r.version, "seq": r.seq, "passed": r.passed, "failed": r.failed, "remediated": r.remediated}),
                )
            }
            None => error(
                "no_policy",
                "no security policy is in force on this terminal",
            ),
        },
        "reboot" | "poweroff" => {
            let delay = match args.get("delay_s") {
                None => 0,
                Some(v) => match v.as_u64() {
                    Some(s) if s <= MAX_DELAY_S => s,
                    _ => {
                        return error(
                            "bad_args",
                            format!("args.delay_s must be 0..={MAX_DELAY_S} seconds"),
                        );
                    }
                },
            };
            let argv = if name == "reboot" {
                d.cfg.power.reboot_cmd.clone()
            } else {
                d.cfg.power.poweroff_cmd.clone()
            };
            let at = d.clock.now() + jiff::SignedDuration::from_secs(delay as i64);
            d.events.emit(
                Severity::Info,
                "power.command",
                format!("{name} requested by the platform, in {delay} s"),
                json!({"action": name, "delay_s": delay, "at": rfc3339(at)}),
            );
            let action = name.to_string();
            let helper = crate::helper::Client::from_config(&d.cfg);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(delay)).await;
                let done = match helper {
                    Some(h) => helper_power(h, &action).await,
                    None => run(&argv, RESTART_TIMEOUT).await,
                };
                match done {
                    Ok(_) => tracing::info!(action, "power command ran"),
                    Err(e) => tracing::error!(action, error = %e, "power command failed"),
                }
            });
            ok(format!("{name} in {delay} s"), json!({"at": rfc3339(at)}))
        }
        "restart_unit" => {
            let Some(unit) = args.get("unit").and_then(Value::as_str) else {
                return error("bad_args", "args.unit is required");
            };
            if !d
                .cfg
                .commands
                .restart_units_allowed
                .iter()
                .any(|u| u == unit)
            {
                return error(
                    "unit_not_allowed",
                    format!("{unit} is not in commands.restart_units_allowed"),
                );
            }
            if let Some(helper) = crate::helper::Client::from_config(&d.cfg) {
                let req = crate::helper::Request::RestartUnit {
                    unit: unit.to_string(),
                };
                return match tokio::task::spawn_blocking(move || helper.call(&req)).await {
                    Ok(r) if r.ok => ok(format!("{unit} restarted"), json!({"unit": unit})),
                    Ok(r) => error(
                        "restart_failed",
                        format!("{unit}: helper ({}): {}", r.code, r.message),
                    ),
                    Err(e) => error("restart_failed", format!("{unit}: {e}")),
                };
            }
            let mut argv = d.cfg.commands.systemctl.clone();
            argv.extend(["restart".to_string(), unit.to_string()]);
            match run(&argv, RESTART_TIMEOUT).await {
                Ok(()) => ok(format!("{unit} restarted"), json!({"unit": unit})),
                Err(e) => error("restart_failed", format!("{unit}: {e}")),
            }
        }
        "maintenance" => {
            let Some(on) = args.get("on").and_then(Value::as_bool) else {
                return error("bad_args", "args.on (true|false) is required");
            };
            let reason = args.get("reason").and_then(Value::as_str).unwrap_or("");
            if let Err(m) = crate::limits::text("args.reason", reason, crate::limits::REASON_CHARS)
            {
                return error("invalid", m);
            }
            match d
                .maintenance
                .switch(on, reason, "platform", d.clock.now(), &d.events)
            {
                Ok(state) => ok(
                    if on {
                        "maintenance on"
                    } else {
                        "maintenance off"
                    },
                    json!(state),
                ),
                Err(e) => error("state_error", e.to_string()),
            }
        }
        "stats_flush" => match d.usage.flush() {
            Ok(rec) => ok(
                format!(
                    "usage period {} .. {} closed as stats seq {}",
                    rec.period_start, rec.period_end, rec.seq
                ),
                json!({"seq": rec.seq, "period_start": rec.period_start,
                    "period_end": rec.period_end, "items": rec.items.len()}),
            ),
            Err(e) => error("state_error", e.to_string()),
        },
        "set_log_level" => match args.get("level").and_then(Value::as_str) {
            Some(level) if crate::logging::set_level(level) => {
                ok(format!("log level {level}"), json!({"level": level}))
            }
            _ => error(
                "bad_args",
                "args.level must be one of error, warn, info, debug, trace",
            ),
        },
        "cert_renew" => match d.identity.renew().await {
            Ok(result) => ok("certificate signing request sent", result),
            Err(e) => error("renew_failed", e),
        },
        other => error("unknown_command", format!("unknown command {other:?}")),
    }
}

/// Commands too long for the control loop (an upload may take minutes): `Some` runs them
/// beside it and the reply follows when they finish.
pub fn background(
    d: &Deps,
    name: &str,
    args: &Map<String, Value>,
) -> Option<impl std::future::Future<Output = CommandResult> + Send + 'static> {
    if name != "logs_upload" {
        return None;
    }
    let parsed = crate::diagnostics::logs::parse_args(args);
    let agent = crate::update::fetch::http_agent(&crate::update::fetch::FetchOptions::from_config(
        &d.cfg.updates,
    ));
    let journalctl = d.cfg.commands.journalctl.clone();
    let events = d.events.recent(d.cfg.events.recent);
    Some(async move {
        let a = match parsed {
            Ok(a) => a,
            Err(e) => return error("bad_args", e),
        };
        let agent = match agent {
            Ok(agent) => agent,
            Err(e) => return error("upload_failed", e.to_string()),
        };
        let (since, until) = (a.since.as_second(), a.until.as_second());
        let events: Vec<_> = events
            .into_iter()
            .filter(|e| {
                crate::host::parse_time(&e.ts)
                    .is_some_and(|t| (since..=until).contains(&t.as_second()))
            })
            .collect();
        let job = tokio::task::spawn_blocking(move || {
            crate::diagnostics::logs::upload(
                &agent,
                &journalctl,
                &a,
                &events,
                crate::diagnostics::logs::JOURNAL_DEADLINE,
            )
        });
        match job.await {
            Ok(Ok(result)) => {
                let note = if result["journal"] == "read" {
                    String::new()
                } else {
                    format!(
                        " (journal {}; the agent's events only)",
                        result["journal"].as_str().unwrap_or("")
                    )
                };
                ok(
                    format!(
                        "{} entries uploaded, {} bytes{note}",
                        result["entries"], result["bytes"]
                    ),
                    result,
                )
            }
            Ok(Err((e, result))) => CommandResult {
                status: "error",
                code: e.code(),
                message: e.to_string(),
                result,
            },
            Err(e) => error("upload_failed", format!("the upload task failed: {e}")),
        }
    })
}

/// `poweroff`/`reboot` by the privileged helper, with its own configured command.
pub async fn helper_power(helper: crate::helper::Client, action: &str) -> Result<(), String> {
    let action = crate::helper::PowerAction::from_label(action)
        .ok_or_else(|| format!("{action}: not a power action"))?;
    let r =
        tokio::task::spawn_blocking(move || helper.call(&crate::helper::Request::Power { action }))
            .await
            .map_err(|e| e.to_string())?;
    if r.ok {
        Ok(())
    } else {
        Err(format!("helper ({}): {}", r.code, r.message))
    }
}

async fn run(argv: &[String], timeout: Duration) -> Result<(), String> {
    match crate::process::run_async(argv.to_vec(), timeout, 4096).await {
        Ok(f) if f.success => Ok(()),
        Ok(f) => Err(format!(
            "{} exited with {}: {}",
            argv.join(" "),
            f.status,
            f.stderr.trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}
