//! Local-socket requests (docs/protocol.md §6) answered from the running parts; the socket server
//! has already authorized the peer for the op.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::api::proto;
use crate::api::server::{Conn, Handler};
use crate::config::Config;
use crate::events::EventSink;
use crate::host::SharedClock;
use crate::maintenance::Maintenance;
use crate::policy::worker::PolicyHandle;
use crate::power::PowerHandle;
use crate::telemetry::Telemetry;
use crate::transport::Publisher;

/// Answers local-socket requests from the agent's parts.
pub(super) struct LocalOps {
    pub(super) cfg: Arc<Config>,
    pub(super) started_at: String,
    pub(super) clock: SharedClock,
    pub(super) events: EventSink,
    pub(super) maintenance: Maintenance,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) publisher: Publisher,
    pub(super) power: PowerHandle,
    pub(super) policy: PolicyHandle,
    pub(super) patrol: crate::patrol::PatrolHandle,
    pub(super) usage: crate::usage::Usage,
    pub(super) ui: crate::ui::UiWatch,
    pub(super) control: crate::control::ControlHandle,
    pub(super) identity: crate::identity::IdentityHandle,
}

impl LocalOps {
    fn status(&self) -> Value {
        let mut faults: Vec<_> = self
            .telemetry
            .last_probes()
            .into_iter()
            .filter(|p| !p.ok || p.level.is_some())
            .collect();
        // Worst open fault first: P1 before P4, then failing before merely degraded.
        faults.sort_by_key(|p| (p.level.unwrap_or(crate::telemetry::Grade::P4), p.ok));
        json!({
            "terminal_id": self.cfg.terminal.id,
            "groups": self.cfg.terminal.groups,
            "agent_version": crate::VERSION,
            "started_at": self.started_at,
            "mqtt": {"url": self.cfg.mqtt.url, "connected": self.publisher.is_connected()},
            "maintenance": self.maintenance.get(),
            "events_pending": self.events.pending(),
            "faults": faults,
            "cert": self.identity.status(),
            "time": self.telemetry.last_time(),
        })
    }
}

impl LocalOps {
    /// `{"op": "apply", "kind", "envelope": {…}}`: the reply is the `reported/{kind}` the
    /// document produced; a refusal is an error whose code is the reason (`rollback`,
    /// `bad_signature`, `wrong_target`, ...), carrying the report too.
    async fn apply(&self, req: &Value) -> Value {
        let Some(kind) = req.get("kind").and_then(Value::as_str) else {
            return proto::error("invalid", "apply needs \"kind\" and \"envelope\"");
        };
        let Some(envelope) = req.get("envelope").filter(|e| e.is_object()) else {
            return proto::error(
                "invalid",
                "apply needs \"envelope\": a DSSE envelope object",
            );
        };
        if let Some(extra) = req.as_object().and_then(|o| {
            o.keys()
                .find(|k| !["op", "kind", "envelope"].contains(&k.as_str()))
        }) {
            return proto::error("invalid", format!("apply: unknown field {extra:?}"));
        }
        let bytes = envelope.to_string().into_bytes();
        let Some(report) = self.control.apply(kind, bytes).await else {
            return proto::error("unavailable", "the agent is stopping");
        };
        match report["status"].as_str() {
            Some("rejected") => {
                let code = report["details"]["reason"].as_str().unwrap_or("rejected");
                let mut e = proto::error(code, report["message"].as_str().unwrap_or(""));
                e["error"]["report"] = report;
                e
            }
            Some("invalid") => proto::error("invalid", report["message"].as_str().unwrap_or("")),
            Some("failed") => {
                let mut e = proto::error("failed", report["message"].as_str().unwrap_or(""));
                e["error"]["report"] = report;
                e
            }
            _ => proto::ok(report),
        }
    }
}

impl Handler for LocalOps {
    async fn handle(&self, conn: &Conn, op: &str, req: &Value) -> Value {
        match op {
            "status" => proto::ok(self.status()),
            "health" => match self.telemetry.last() {
                Some(h) => proto::ok(h),
                None => proto::ok(self.telemetry.report().await),
            },
            "inspect" | "inspect_publish" => match self.patrol.run(op == "inspect_publish").await {
                Some(report) => {
                    let probes = self.telemetry.last_probes();
                    let mut data = json!({"probes": probes, "report": report});
                    if op == "inspect_publish" {
                        // Retained QoS 1: queued now, delivered once the broker is reachable.
                        let c = &self.cfg;
                        let topics = crate::transport::topics::Topics::new(
                            &c.mqtt.topic_prefix,
                            &c.terminal.id,
                            &c.terminal.groups,
                        );
                        data["published"] = json!({
                            "topic": topics.patrol(),
                            "connected": self.publisher.is_connected(),
                        });
                    }
                    proto::ok(data)
                }
                None => proto::error(
                    "patrol_failed",
                    "the patrol report could not be made; see the agent's log",
                ),
            },
            "patrol" => {
                let days = req
                    .get("days")
                    .and_then(Value::as_u64)
                    .unwrap_or(30)
                    .min(30) as u32;
                match self.patrol.history(days).await {
                    Ok(h) => proto::ok(json!({"history": h})),
                    Err(e) => proto::error("state_error", e),
                }
            }
            "events" => {
                let n = req
                    .get("limit")
                    .and_then(Value::as_u64)
                    .unwrap_or(50)
                    .min(1000) as usize;
                proto::ok(json!({"events": self.events.recent(n)}))
            }
            "maintenance" => {
                let Some(on) = req.get("on").and_then(Value::as_bool) else {
                    return proto::error("bad_request", "maintenance needs \"on\": true|false");
                };
                let reason = req.get("reason").and_then(Value::as_str).unwrap_or("");
                if let Err(m) = crate::limits::text("reason", reason, crate::limits::REASON_CHARS) {
                    return proto::error("invalid", m);
                }
                let by = format!("local:{}", conn.uid);
                match self
                    .maintenance
                    .switch(on, reason, &by, self.clock.now(), &self.events)
                {
                    Ok(state) => proto::ok(json!(state)),
                    Err(e) => proto::error("state_error", e.to_string()),
                }
            }
            "catalog" => match crate::catalog::current(&self.cfg.paths.state_dir) {
                Some(c) => proto::ok(c),
                None => proto::error("not_found", "no service-item catalog has been received yet"),
            },
            "schedule" => {
                let mut v = json!(self.power.status());
                v["windows"] = json!(self.power.windows(7));
                proto::ok(v)
            }
            "compliance" => match self.policy.last() {
                Some(r) => proto::ok(r.to_json()),
                None => proto::error(
                    "not_found",
                    "no compliance report yet (no security policy in force)",
                ),
            },
            "compliance_scan" => match self.policy.scan().await {
                Some(scan) => proto::ok(scan.report.to_json()),
                None => proto::error(
                    "no_policy",
                    "no security policy is in force on this terminal",
                ),
            },
            "updates" => {
                let releases = crate::update::list_releases(&self.cfg.paths.apps_dir)
                    .map(|r| json!(r))
                    .unwrap_or_else(|e| json!({"error": e.to_string()}));
                let outcomes = crate::update::last_outcomes(&self.cfg.paths.state_dir);
                let waiting = crate::control::waiting_rollouts(&self.cfg.paths.state_dir);
                proto::ok(
                    json!({"apps": releases, "last_outcomes": outcomes, "waiting_wave": waiting}),
                )
            }
            "inhibit" => {
                let who = req.get("who").and_then(Value::as_str).unwrap_or("").trim();
                let why = req.get("why").and_then(Value::as_str).unwrap_or("").trim();
                if who.is_empty() {
                    return proto::error("bad_request", "inhibit needs \"who\"");
                }
                if let Err(m) = crate::limits::text("who", who, crate::limits::WHO_CHARS)
                    .and_then(|()| crate::limits::text("why", why, crate::limits::WHY_CHARS))
                {
                    return proto::error("invalid", m);
                }
                self.power.inhibit(conn.id, who, why);
                proto::ok(json!({"held": true, "who": who, "why": why}))
            }
            "release" => {
                self.power.release(conn.id);
                proto::ok(json!({"held": false}))
            }
            "usage" => match self.usage.record(req) {
                Ok(v) => proto::ok(v),
                Err(e) => proto::error(e.code(), e.to_string()),
            },
            "usage_today" => proto::ok(self.usage.today()),
            "heartbeat" => match self.ui.heartbeat(req) {
                Ok(v) => proto::ok(v),
                Err(e) => proto::error("invalid", e.to_string()),
            },
            "apply" => self.apply(req).await,
            other => proto::error(
                "unavailable",
                format!("{other} is not available in this agent version"),
            ),
        }
    }

    fn closed(&self, conn: &Conn) {
        self.power.release(conn.id);
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe_local()
    }
}
