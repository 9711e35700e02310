//! One action type for every request the agent answers: a signed remote command
//! (docs/protocol.md §5), already verified, in-target, unexpired and new, or a local socket op
//! (§6), whose peer the socket server has already authorized. Both are parsed into [`Action`],
//! run in one place ([`Action::run`]), and their outcome and errors become a reply in one place
//! each ([`reply_remote`], [`reply_local`]): an action the two share does the same thing either
//! way, only the reply's shape differs as the protocol says.

mod names;

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::api::proto;
use crate::control::{ControlHandle, Deps};
use crate::events::Severity;
use crate::host::rfc3339;
pub use names::{Local, Name};

/// Everything an action acts through.
#[derive(Clone)]
pub struct Parts {
    pub d: Deps,
    /// The control loop, for what only it may do (a side-loaded document, a records reset).
    pub control: ControlHandle,
}

/// Who asked.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A signed command from the platform.
    Platform,
    /// A socket peer: its uid (`SO_PEERCRED`) and its connection.
    Socket { uid: u32, conn: u64 },
}

impl Origin {
    /// How a request field is named in messages: `args.X` in a command, `X` in a request.
    fn field(self, name: &str) -> String {
        match self {
            Origin::Platform => format!("args.{name}"),
            Origin::Socket { .. } => name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// A request, typed.
#[derive(Debug, Clone)]
pub enum Action {
    Ping,
    ReportNow,
    Inspect { publish: bool },
    ComplianceScan,
    Compliance,
    Power { action: PowerAction, delay_s: u64 },
    RestartUnit { unit: String },
    Maintenance { on: bool, reason: String },
    StatsFlush,
    SetLogLevel { level: crate::config::LogLevel },
    CertRenew,
    LogsUpload { args: Map<String, Value> },
    SecurityReset,
    Status,
    Health,
    Patrol { days: u32 },
    Events { limit: usize },
    Catalog,
    Schedule,
    Updates,
    Inhibit { who: String, why: String },
    Release,
    Usage { req: Value },
    UsageToday,
    Heartbeat { req: Value },
    Apply { kind: String, envelope: Vec<u8> },
}

/// A reply code (docs/protocol.md §5 and §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A missing or malformed argument: `bad_args` in a reply, `bad_request` on the socket.
    BadArgs,
    /// A field over its length bound or otherwise unusable.
    Invalid,
    UnitNotAllowed,
    RestartFailed,
    StateError,
    NoPolicy,
    PatrolFailed,
    NotFound,
    RenewFailed,
    UploadFailed,
    Unavailable,
    /// A name that is not a command (remote) or not an op (socket).
    Unknown,
    /// A code that comes from elsewhere as is: a document refusal's reason (`rollback`,
    /// `bad_signature`, ...), an upload's or a usage record's code.
    Other(std::borrow::Cow<'static, str>),
}

/// Why an action did not do what was asked.
#[derive(Debug, Clone)]
pub struct ActionError {
    pub code: Code,
    pub message: String,
    /// A command reply's `result` (an upload's partial figures).
    pub result: Value,
    /// A socket error's `report` (the `reported/{kind}` a refused `apply` produced).
    pub report: Option<Value>,
}

impl ActionError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            result: json!({}),
            report: None,
        }
    }
}

fn err<T>(code: Code, message: impl Into<String>) -> Result<T, ActionError> {
    Err(ActionError::new(code, message))
}

/// What an action did. Most carry their reply as is; two render differently per origin.
#[derive(Debug)]
pub enum Outcome {
    Done {
        message: String,
        data: Value,
    },
    /// A patrol inspection: the platform gets a summary, the socket the whole report.
    Patrol {
        report: crate::patrol::PatrolReport,
        probes: Value,
        published: Option<Value>,
    },
    /// A compliance scan: the platform gets the counts, the socket the whole report.
    Scan(crate::policy::engine::ComplianceReport),
}

fn done(message: impl Into<String>, data: Value) -> Result<Outcome, ActionError> {
    Ok(Outcome::Done {
        message: message.into(),
        data,
    })
}

/// Longest delay accepted for reboot/poweroff.
const MAX_DELAY_S: u64 = 24 * 3600;
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

impl Action {
    /// Reads `name`'s arguments: a command's `args`, or a socket request's fields.
    pub fn parse(
        name: Name,
        args: &Map<String, Value>,
        origin: Origin,
    ) -> Result<Action, ActionError> {
        if let Origin::Platform = origin {
            for (k, v) in args {
                crate::limits::strings(&format!("args.{k}"), v, crate::limits::ARG_CHARS)
                    .map_err(|m| ActionError::new(Code::Invalid, m))?;
            }
        }
        let text = |key: &str| args.get(key).and_then(Value::as_str).unwrap_or("");
        let bounded = |key: &str, max: usize| -> Result<String, ActionError> {
            let v = text(key).trim();
            crate::limits::text(&origin.field(key), v, max)
                .map_err(|m| ActionError::new(Code::Invalid, m))?;
            Ok(v.to_string())
        };
        Ok(match name {
            Name::Ping => Action::Ping,
            Name::ReportNow => Action::ReportNow,
            // A platform's inspection is always published; a technician chooses.
            Name::Inspect => Action::Inspect {
                publish: matches!(origin, Origin::Platform),
            },
            Name::InspectPublish => Action::Inspect { publish: true },
            Name::ComplianceScan => Action::ComplianceScan,
            Name::Compliance => Action::Compliance,
            Name::Reboot | Name::Poweroff => {
                let delay_s = match args.get("delay_s") {
                    None => 0,
                    Some(v) => match v.as_u64() {
                        Some(s) if s <= MAX_DELAY_S => s,
                        _ => {
                            return err(
                                Code::BadArgs,
                                format!("args.delay_s must be 0..={MAX_DELAY_S} seconds"),
                            );
                        }
                    },
                };
                let action = if name == Name::Reboot {
                    PowerAction::Reboot
                } else {
                    PowerAction::Poweroff
                };
                Action::Power { action, delay_s }
            }
            Name::RestartUnit => match args.get("unit").and_then(Value::as_str) {
                Some(unit) => Action::RestartUnit {
                    unit: unit.to_string(),
                },
                None => return err(Code::BadArgs, "args.unit is required"),
            },
            Name::Maintenance => {
                let Some(on) = args.get("on").and_then(Value::as_bool) else {
                    return err(
                        Code::BadArgs,
                        format!("{} (true|false) is required", origin.field("on")),
                    );
                };
                let reason = text("reason");
                crate::limits::text(&origin.field("reason"), reason, crate::limits::REASON_CHARS)
                    .map_err(|m| ActionError::new(Code::Invalid, m))?;
                Action::Maintenance {
                    on,
                    reason: reason.to_string(),
                }
            }
            Name::StatsFlush => Action::StatsFlush,
            Name::SetLogLevel => match text("level").parse() {
                Ok(level) => Action::SetLogLevel { level },
                Err(_) => {
                    return err(
                        Code::BadArgs,
                        "args.level must be one of error, warn, info, debug, trace",
                    );
                }
            },
            Name::CertRenew => Action::CertRenew,
            Name::LogsUpload => Action::LogsUpload { args: args.clone() },
            Name::SecurityReset => Action::SecurityReset,
            Name::Status => Action::Status,
            Name::Health => Action::Health,
            Name::Patrol => Action::Patrol {
                days: args
                    .get("days")
                    .and_then(Value::as_u64)
                    .unwrap_or(30)
                    .min(30) as u32,
            },
            Name::Events => Action::Events {
                limit: args
                    .get("limit")
                    .and_then(Value::as_u64)
                    .unwrap_or(50)
                    .min(1000) as usize,
            },
            Name::Catalog => Action::Catalog,
            Name::Schedule => Action::Schedule,
            Name::Updates => Action::Updates,
            Name::Inhibit => {
                if text("who").trim().is_empty() {
                    return err(Code::BadArgs, "inhibit needs \"who\"");
                }
                Action::Inhibit {
                    who: bounded("who", crate::limits::WHO_CHARS)?,
                    why: bounded("why", crate::limits::WHY_CHARS)?,
                }
            }
            Name::Release => Action::Release,
            Name::Usage => Action::Usage {
                req: Value::Object(args.clone()),
            },
            Name::UsageToday => Action::UsageToday,
            Name::Heartbeat => Action::Heartbeat {
                req: Value::Object(args.clone()),
            },
            Name::Apply => {
                let Some(kind) = args.get("kind").and_then(Value::as_str) else {
                    return err(Code::Invalid, "apply needs \"kind\" and \"envelope\"");
                };
                let Some(envelope) = args.get("envelope").filter(|e| e.is_object()) else {
                    return err(
                        Code::Invalid,
                        "apply needs \"envelope\": a DSSE envelope object",
                    );
                };
                if let Some(extra) = args
                    .keys()
                    .find(|k| !["op", "kind", "envelope"].contains(&k.as_str()))
                {
                    return err(Code::Invalid, format!("apply: unknown field {extra:?}"));
                }
                Action::Apply {
                    kind: kind.to_string(),
                    envelope: envelope.to_string().into_bytes(),
                }
            }
            // Streaming, handled by the socket server itself.
            Name::Subscribe => return err(Code::Unknown, "subscribe is a stream, not an action"),
        })
    }

    /// Does it. Owned parts: a long action (an upload) runs as its own task.
    pub async fn run(self, p: Parts, origin: Origin) -> Result<Outcome, ActionError> {
        let d = &p.d;
        match self {
            Action::Ping => done(
                "pong",
                json!({"pong": true, "agent_version": crate::VERSION}),
            ),
            Action::ReportNow => {
                d.telemetry.report_now();
                done("health report requested", json!({}))
            }
            Action::Inspect { publish } => match d.patrol.run(publish).await {
                Some(report) => {
                    let published = (publish && matches!(origin, Origin::Socket { .. })).then(|| {
                        // Retained QoS 1: queued now, delivered once the broker is reachable.
                        let c = &d.cfg;
                        let topics = crate::transport::topics::Topics::new(
                            &c.mqtt.topic_prefix,
                            &c.terminal.id,
                            &c.terminal.groups,
                        );
                        json!({"topic": topics.patrol(), "connected": d.publisher.is_connected()})
                    });
                    Ok(Outcome::Patrol {
                        report,
                        probes: json!(d.telemetry.last_probes()),
                        published,
                    })
                }
                None => err(
                    Code::PatrolFailed,
                    "the patrol report could not be made; see the agent's log",
                ),
            },
            Action::ComplianceScan => match d.policy.scan().await {
                Some(scan) => Ok(Outcome::Scan(scan.report)),
                None => err(
                    Code::NoPolicy,
                    "no security policy is in force on this terminal",
                ),
            },
            Action::Compliance => match d.policy.last() {
                Some(r) => done("compliance report", r.to_json()),
                None => err(
                    Code::NotFound,
                    "no compliance report yet (no security policy in force)",
                ),
            },
            Action::Power { action, delay_s } => power(d, action, delay_s),
            Action::RestartUnit { unit } => restart_unit(d, &unit).await,
            Action::Maintenance { on, reason } => {
                let by = match origin {
                    Origin::Platform => "platform".to_string(),
                    Origin::Socket { uid, .. } => format!("local:{uid}"),
                };
                match d
                    .maintenance
                    .switch(on, &reason, &by, d.clock.now(), &d.events)
                {
                    Ok(state) => done(
                        if on {
                            "maintenance on"
                        } else {
                            "maintenance off"
                        },
                        json!(state),
                    ),
                    Err(e) => err(Code::StateError, e.to_string()),
                }
            }
            Action::StatsFlush => match d.usage.flush() {
                Ok(rec) => done(
                    format!(
                        "usage period {} .. {} closed as stats seq {}",
                        rec.period_start, rec.period_end, rec.seq
                    ),
                    json!({"seq": rec.seq, "period_start": rec.period_start,
                        "period_end": rec.period_end, "items": rec.items.len()}),
                ),
                Err(e) => err(Code::StateError, e.to_string()),
            },
            Action::SetLogLevel { level } => {
                let level = level.as_str();
                if crate::logging::set_level(level) {
                    done(format!("log level {level}"), json!({"level": level}))
                } else {
                    err(
                        Code::StateError,
                        "logging cannot be reconfigured in this process",
                    )
                }
            }
            Action::CertRenew => match d.identity.renew().await {
                Ok(result) => done("certificate signing request sent", result),
                Err(e) => err(Code::RenewFailed, e),
            },
            Action::LogsUpload { args } => logs_upload(d, &args).await,
            Action::SecurityReset => match p.control.security_reset().await {
                Some(Ok((message, data))) => done(message, data),
                Some(Err(e)) => err(Code::StateError, e),
                None => err(Code::Unavailable, "the agent is stopping"),
            },
            Action::Status => done("status", status(d)),
            Action::Health => match d.telemetry.last() {
                Some(h) => done("health", h),
                None => done("health", d.telemetry.report().await),
            },
            Action::Patrol { days } => match d.patrol.history(days).await {
                Ok(h) => done("patrol history", json!({"history": h})),
                Err(e) => err(Code::StateError, e),
            },
            Action::Events { limit } => done("events", json!({"events": d.events.recent(limit)})),
            Action::Catalog => match crate::catalog::current(&d.cfg.paths.state_dir) {
                Some(c) => done("catalog", c),
                None => err(
                    Code::NotFound,
                    "no service-item catalog has been received yet",
                ),
            },
            Action::Schedule => {
                let mut v = json!(d.power.status());
                v["windows"] = json!(d.power.windows(7));
                done("schedule", v)
            }
            Action::Updates => {
                let releases = crate::update::list_releases(&d.cfg.paths.apps_dir)
                    .map(|r| json!(r))
                    .unwrap_or_else(|e| json!({"error": e.to_string()}));
                let outcomes = crate::update::last_outcomes(&d.cfg.paths.state_dir);
                let waiting = crate::control::waiting_rollouts(&d.cfg.paths.state_dir);
                done(
                    "updates",
                    json!({"apps": releases, "last_outcomes": outcomes, "waiting_wave": waiting}),
                )
            }
            Action::Inhibit { who, why } => {
                let conn = match origin {
                    Origin::Socket { conn, .. } => conn,
                    Origin::Platform => return err(Code::Unknown, "inhibit is a socket op"),
                };
                d.power.inhibit(conn, &who, &why);
                done("held", json!({"held": true, "who": who, "why": why}))
            }
            Action::Release => {
                if let Origin::Socket { conn, .. } = origin {
                    d.power.release(conn);
                }
                done("released", json!({"held": false}))
            }
            Action::Usage { req } => match d.usage.record(&req) {
                Ok(v) => done("usage recorded", v),
                Err(e) => err(Code::Other(e.code().into()), e.to_string()),
            },
            Action::UsageToday => done("usage today", d.usage.today()),
            Action::Heartbeat { req } => match d.ui.heartbeat(&req) {
                Ok(v) => done("heartbeat", v),
                Err(e) => err(Code::Invalid, e.to_string()),
            },
            Action::Apply { kind, envelope } => apply(&p.control, &kind, envelope).await,
        }
    }
}

impl Code {
    /// The code's text in a command reply (`remote`) or a socket error.
    fn as_str(&self, remote: bool) -> &str {
        match self {
            Code::BadArgs if remote => "bad_args",
            Code::BadArgs => "bad_request",
            Code::Invalid => "invalid",
            Code::UnitNotAllowed => "unit_not_allowed",
            Code::RestartFailed => "restart_failed",
            Code::StateError => "state_error",
            Code::NoPolicy => "no_policy",
            Code::PatrolFailed => "patrol_failed",
            Code::NotFound => "not_found",
            Code::RenewFailed => "renew_failed",
            Code::UploadFailed => "upload_failed",
            Code::Unavailable => "unavailable",
            Code::Unknown if remote => "unknown_command",
            Code::Unknown => "unknown_op",
            Code::Other(c) => c,
        }
    }
}

/// A command reply's `status`, `code`, `message` and `result` (§5).
pub fn reply_remote(r: Result<Outcome, ActionError>) -> (&'static str, String, String, Value) {
    match r {
        Ok(Outcome::Done { message, data }) => ("ok", "ok".into(), message, data),
        Ok(Outcome::Patrol { report, probes, .. }) => (
            "ok",
            "ok".into(),
            format!("patrol {} with {} item(s)", report.seq, report.items.len()),
            json!({"probes": probes, "patrol_seq": report.seq}),
        ),
        Ok(Outcome::Scan(r)) => (
            "ok",
            "ok".into(),
            format!(
                "scan {}: {} passed, {} failed, {} remediated",
                r.seq, r.passed, r.failed, r.remediated
            ),
            json!({"version": r.version, "seq": r.seq, "passed": r.passed, "failed": r.failed, "remediated": r.remediated}),
        ),
        Err(e) => (
            "error",
            e.code.as_str(true).to_string(),
            e.message,
            e.result,
        ),
    }
}

/// A socket answer (§6): `{"ok": true, "data"}` or `{"ok": false, "error": {code, message}}`.
pub fn reply_local(r: Result<Outcome, ActionError>) -> Value {
    match r {
        Ok(Outcome::Done { data, .. }) => proto::ok(data),
        Ok(Outcome::Patrol {
            report,
            probes,
            published,
        }) => {
            let mut data = json!({"probes": probes, "report": report});
            if let Some(p) = published {
                data["published"] = p;
            }
            proto::ok(data)
        }
        Ok(Outcome::Scan(r)) => proto::ok(r.to_json()),
        Err(e) => {
            let mut v = proto::error(e.code.as_str(false), e.message);
            if let Some(report) = e.report {
                v["error"]["report"] = report;
            }
            v
        }
    }
}

/// `status`: who this terminal is and what is wrong with it, worst first.
fn status(d: &Deps) -> Value {
    let mut faults: Vec<_> = d
        .telemetry
        .last_probes()
        .into_iter()
        .filter(|p| !p.ok || p.level.is_some())
        .collect();
    // Worst open fault first: P1 before P4, then failing before merely degraded.
    faults.sort_by_key(|p| (p.level.unwrap_or(crate::telemetry::Grade::P4), p.ok));
    json!({
        "terminal_id": d.cfg.terminal.id,
        "groups": d.cfg.terminal.groups,
        "agent_version": crate::VERSION,
        "started_at": d.started_at,
        "mqtt": {"url": d.cfg.mqtt.url, "connected": d.publisher.is_connected()},
        "maintenance": d.maintenance.get(),
        "events_pending": d.events.pending(),
        "faults": faults,
        "cert": d.identity.status(),
        "time": d.telemetry.last_time(),
    })
}

/// The reply is the `reported/{kind}` the document produced; a refusal is an error whose code is
/// the reason (`rollback`, `bad_signature`, `wrong_target`, ...), carrying the report too.
async fn apply(
    control: &ControlHandle,
    kind: &str,
    envelope: Vec<u8>,
) -> Result<Outcome, ActionError> {
    let Some(report) = control.apply(kind, envelope).await else {
        return err(Code::Unavailable, "the agent is stopping");
    };
    let message = report["message"].as_str().unwrap_or("").to_string();
    let code = match report["status"].as_str() {
        Some("rejected") => Code::Other(
            report["details"]["reason"]
                .as_str()
                .unwrap_or("rejected")
                .to_string()
                .into(),
        ),
        Some("invalid") => return err(Code::Invalid, message),
        Some("failed") => Code::Other("failed".into()),
        _ => return done(message, report),
    };
    Err(ActionError {
        code,
        message,
        result: json!({}),
        report: Some(report),
    })
}

fn power(d: &Deps, action: PowerAction, delay: u64) -> Result<Outcome, ActionError> {
    let (name, argv) = match action {
        PowerAction::Reboot => ("reboot", d.cfg.power.reboot_cmd.clone()),
        PowerAction::Poweroff => ("poweroff", d.cfg.power.poweroff_cmd.clone()),
    };
    let at = d.clock.now() + jiff::SignedDuration::from_secs(delay as i64);
    d.events.emit(
        Severity::Info,
        "power.command",
        format!("{name} requested by the platform, in {delay} s"),
        json!({"action": name, "delay_s": delay, "at": rfc3339(at)}),
    );
    // The same way the planner powers off: in-process, or through the privileged helper.
    let host = crate::power::HostActions::new(
        &crate::host::HostPaths::new(&d.cfg.paths.root),
        RESTART_TIMEOUT,
    )
    .with_helper(crate::helper::Client::from_config(&d.cfg));
    tokio::spawn(async move {
        use crate::power::PowerActions as _;
        tokio::time::sleep(Duration::from_secs(delay)).await;
        match host.run(name, &argv).await {
            Ok(_) => tracing::info!(action = name, "power command ran"),
            Err(e) => tracing::error!(action = name, error = %e, "power command failed"),
        }
    });
    done(format!("{name} in {delay} s"), json!({"at": rfc3339(at)}))
}

async fn restart_unit(d: &Deps, unit: &str) -> Result<Outcome, ActionError> {
    if !d
        .cfg
        .commands
        .restart_units_allowed
        .iter()
        .any(|u| u == unit)
    {
        return err(
            Code::UnitNotAllowed,
            format!("{unit} is not in commands.restart_units_allowed"),
        );
    }
    let helper = crate::helper::Client::from_config(&d.cfg);
    let systemctl = d.cfg.commands.systemctl.clone();
    let name = unit.to_string();
    let job = tokio::task::spawn_blocking(move || {
        crate::helper::restart_unit(helper.as_ref(), &systemctl, &name, RESTART_TIMEOUT)
    });
    match job.await {
        Ok(Ok(())) => done(format!("{unit} restarted"), json!({"unit": unit})),
        Ok(Err(e)) => err(Code::RestartFailed, e),
        Err(e) => err(Code::RestartFailed, format!("{unit}: {e}")),
    }
}

/// Streams the journal and the agent's events to the URL the platform named (§9).
async fn logs_upload(d: &Deps, args: &Map<String, Value>) -> Result<Outcome, ActionError> {
    let a = crate::diagnostics::logs::parse_args(args)
        .map_err(|e| ActionError::new(Code::BadArgs, e))?;
    let agent = crate::update::fetch::http_agent(&crate::update::fetch::FetchOptions::from_config(
        &d.cfg.updates,
    ))
    .map_err(|e| ActionError::new(Code::UploadFailed, e.to_string()))?;
    let journalctl = d.cfg.commands.journalctl.clone();
    let (since, until) = (a.since.as_second(), a.until.as_second());
    let events: Vec<_> = d
        .events
        .recent(d.cfg.events.recent)
        .into_iter()
        .filter(|e| {
            crate::host::parse_time(&e.ts).is_some_and(|t| (since..=until).contains(&t.as_second()))
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
            done(
                format!(
                    "{} entries uploaded, {} bytes{note}",
                    result["entries"], result["bytes"]
                ),
                result,
            )
        }
        Ok(Err((e, result))) => Err(ActionError {
            code: Code::Other(e.code().into()),
            message: e.to_string(),
            result,
            report: None,
        }),
        Err(e) => err(Code::UploadFailed, format!("the upload task failed: {e}")),
    }
}

/// The socket server's side: every op but `subscribe` (a stream the server keeps) is an action.
impl crate::api::server::Handler for Parts {
    async fn handle(&self, conn: &crate::api::server::Conn, op: Name, req: &Value) -> Value {
        let origin = Origin::Socket {
            uid: conn.uid,
            conn: conn.id,
        };
        let empty = Map::new();
        let args = req.as_object().unwrap_or(&empty);
        let r = match Action::parse(op, args, origin) {
            Ok(a) => a.run(self.clone(), origin).await,
            Err(e) => Err(e),
        };
        reply_local(r)
    }

    fn closed(&self, conn: &crate::api::server::Conn) {
        self.d.power.release(conn.id);
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.d.events.subscribe_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: Name, args: Value, origin: Origin) -> Result<Action, ActionError> {
        Action::parse(name, args.as_object().unwrap(), origin)
    }

    const SOCKET: Origin = Origin::Socket { uid: 1000, conn: 7 };

    #[test]
    fn one_error_reads_as_each_side_expects() {
        let e = parse(Name::Maintenance, json!({}), Origin::Platform).unwrap_err();
        let (status, code, message, _) = reply_remote(Err(e));
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            ("error", "bad_args", "args.on (true|false) is required")
        );
        let e = parse(Name::Maintenance, json!({"op": "maintenance"}), SOCKET).unwrap_err();
        assert_eq!(
            reply_local(Err(e)),
            json!({"ok": false, "error": {"code": "bad_request", "message": "on (true|false) is required"}})
        );
        let unknown = ActionError::new(Code::Unknown, "x");
        assert_eq!(reply_remote(Err(unknown.clone())).1, "unknown_command");
        assert_eq!(reply_local(Err(unknown))["error"]["code"], "unknown_op");
    }

    #[test]
    fn arguments_are_typed_and_bounded() {
        assert!(matches!(
            parse(Name::Reboot, json!({"delay_s": 30}), Origin::Platform),
            Ok(Action::Power {
                action: PowerAction::Reboot,
                delay_s: 30
            })
        ));
        let e = parse(Name::Poweroff, json!({"delay_s": -1}), Origin::Platform).unwrap_err();
        assert_eq!(e.code, Code::BadArgs);
        // Every string of a command's arguments is bounded, whichever command it is.
        let long = "x".repeat(crate::limits::ARG_CHARS + 1);
        let e = parse(Name::LogsUpload, json!({"url": long}), Origin::Platform).unwrap_err();
        assert_eq!(e.code, Code::Invalid);
        assert!(e.message.starts_with("args.url"), "{}", e.message);
        // The platform's inspection is published; a technician's only when asked.
        assert!(matches!(
            parse(Name::Inspect, json!({}), Origin::Platform),
            Ok(Action::Inspect { publish: true })
        ));
        assert!(matches!(
            parse(Name::Inspect, json!({"op": "inspect"}), SOCKET),
            Ok(Action::Inspect { publish: false })
        ));
        let e = parse(Name::Inhibit, json!({"who": "  "}), SOCKET).unwrap_err();
        assert_eq!(reply_local(Err(e))["error"]["code"], "bad_request");
        let e = parse(
            Name::Apply,
            json!({"kind": "catalog", "envelope": {}, "x": 1}),
            SOCKET,
        )
        .unwrap_err();
        assert_eq!(e.message, "apply: unknown field \"x\"");
    }
}
