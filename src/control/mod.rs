//! The control layer: the one path from a downstream message to an action and back.
//!
//! Owns what the platform has asked for: the trust root in force (through `trust::TrustStore`),
//! the accepted version per kind and target (anti-rollback), the accepted document per kind and
//! scope (terminal > groups in config order > fleet), the last `reported/{kind}`, and the command
//! ids already executed (at-most-once). Every refusal changes nothing, raises a rate-limited
//! `security.rejected` event with the reason and, where the document can be attributed, a
//! `reported/{kind}` with `status: rejected`. It never parses bytes before their signature holds
//! and never touches the MQTT client: it publishes through `transport::Publisher`.

pub mod kinds;
mod limiter;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{EventSink, Severity};
use crate::host::{SharedClock, rfc3339};
use crate::maintenance::Maintenance;
use crate::policy::worker::PolicyHandle;
use crate::power::PowerHandle;
use crate::state::StateStore;
use crate::telemetry::TelemetryHandle;
use crate::transport::{Downstream, Inbound, Publisher, Scope, Topics};
use crate::trust::{Role, TrustError, TrustStore, verify_document, verify_envelope};
use crate::update::Status as UpdateStatus;
use crate::update::worker::{Report as UpdateReport, UpdateHandle};
pub use kinds::app::{WaveWait, waiting_rollouts};
use kinds::{ApplyError, At, Doc, Registry, Restore, Status};
use limiter::RateLimiter;
use records::Records;

/// Everything the control layer acts through.
#[derive(Clone)]
pub struct Deps {
    pub cfg: Arc<Config>,
    pub clock: SharedClock,
    pub store: StateStore,
    pub events: EventSink,
    pub publisher: Publisher,
    pub maintenance: Maintenance,
    pub telemetry: TelemetryHandle,
    pub power: PowerHandle,
    pub policy: PolicyHandle,
    pub updates: UpdateHandle,
    pub patrol: crate::patrol::PatrolHandle,
    pub usage: crate::usage::Usage,
    pub identity: crate::identity::IdentityHandle,
    pub ui: crate::ui::UiWatch,
    /// When this agent started (RFC 3339), for `status`.
    pub started_at: String,
}

/// A document accepted on one scope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Stored {
    version: u64,
    target: String,
    #[serde(with = "b64")]
    payload: Vec<u8>,
    /// The DSSE envelope as received, kept for a policy: the privileged helper re-verifies it
    /// before it remediates.
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    envelope: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

const DOCS: &str = "control/documents.json";
const REPORTS: &str = "control/reported.json";
pub struct Control {
    d: Deps,
    topics: Topics,
    trust: TrustStore,
    /// The anti-rollback floor and the command ids seen; they fail closed (see `records`).
    records: Records,
    /// kind → target → document accepted on that scope.
    docs: BTreeMap<String, BTreeMap<String, Stored>>,
    /// kind → last `reported/{kind}`.
    reports: BTreeMap<String, Value>,
    /// `kind|target` → the typed document its capability made of the stored payload.
    parsed: HashMap<String, Doc>,
    /// The capability of each kind.
    kinds: Registry,
    /// kind → (target, version) in force.
    applied: HashMap<String, (String, u64)>,
    /// kind → (target, version) handed to a worker that has not reported the final state yet
    /// (an install, a certificate switch): not in force until it does.
    pending: HashMap<String, (String, u64)>,
    /// kind → (target, version) a worker finished with without putting it in force (a release
    /// rolled back): settled, so an equal version sent again is not acted on again.
    finished_failed: HashMap<String, (String, u64)>,
    limiter: RateLimiter,
    /// Installer reports, thinned to what the platform needs.
    progress: kinds::app::Progress,
    /// Requests from actions (a side-loaded document, a records reset), taken by `run`.
    local: Option<mpsc::Receiver<Request>>,
    /// The sending side of `local`, handed to the actions.
    handle: ControlHandle,
    /// kind → when a document whose apply failed for a transient reason is tried again.
    retry_at: HashMap<String, tokio::time::Instant>,
    /// kind → transient failures in a row (sets the backoff).
    retry_n: HashMap<String, u32>,
}

/// What an action asks of the control loop, which alone owns the documents and the records.
enum Request {
    /// A document handed in on the local socket (a USB stick in an air-gapped hall).
    Apply {
        kind: String,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Value>,
    },
    /// The signed `security_reset` command: the reply's message and result, or why not.
    SecurityReset {
        reply: oneshot::Sender<Result<(String, Value), String>>,
    },
}

/// Puts side-loaded documents onto the one path of a downstream document.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    tx: mpsc::Sender<Request>,
}

impl ControlHandle {
    /// Applies `envelope` as if it had arrived on `P/{its target}/desired/{kind}`. Returns the
    /// resulting `reported/{kind}` (also published), or one with status `superseded` when it
    /// was stored but a more specific scope's document stays in force. `None`: the agent is
    /// stopping.
    pub async fn apply(&self, kind: &str, envelope: Vec<u8>) -> Option<Value> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Apply {
                kind: kind.to_string(),
                envelope,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Trusts the anti-rollback floor as it stands (see `Control::security_reset`). `None`:
    /// the agent is stopping.
    pub async fn security_reset(&self) -> Option<Result<(String, Value), String>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::SecurityReset { reply }).await.ok()?;
        rx.await.ok()
    }
}

/// First pause before a failed apply is tried again; doubled per failure, at most `RETRY_MAX`.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Why a downstream document is refused (`details.reason` of `reported/{kind}`).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The signature holds, the content cannot be applied.
    #[error("signed document is not valid: {0}")]
    Content(String),
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self {
            Refusal::Trust(e) => e.code(),
            Refusal::Content(_) => "invalid_document",
        }
    }
}

/// A refusal's text and its stable code.
trait Reason: std::fmt::Display {
    fn code(&self) -> &'static str;
}

impl Reason for Refusal {
    fn code(&self) -> &'static str {
        Refusal::code(self)
    }
}

impl Reason for TrustError {
    fn code(&self) -> &'static str {
        TrustError::code(self)
    }
}

fn doc_key(kind: &str, target: &str) -> String {
    format!("{kind}|{target}")
}

impl Control {
    /// Loads the trust root (required: no trust, no control) and the persisted control state.
    pub fn load(d: Deps) -> Result<Self, ControlError> {
        let trust = TrustStore::load(&d.cfg.paths.trust_file)?;
        let load = |rel: &str| -> Option<Value> {
            match d.store.load::<Value>(rel) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "control record unreadable; starting it empty");
                    None
                }
            }
        };
        let take = |v: Option<Value>| v.unwrap_or(Value::Null);
        let topics = Topics::new(
            &d.cfg.mqtt.topic_prefix,
            &d.cfg.terminal.id,
            &d.cfg.terminal.groups,
        );
        let limiter = RateLimiter::new(d.cfg.security.rejected_events_per_min);
        let docs: BTreeMap<String, BTreeMap<String, Stored>> =
            serde_json::from_value(take(load(DOCS))).unwrap_or_default();
        let reports: BTreeMap<String, Value> =
            serde_json::from_value(take(load(REPORTS))).unwrap_or_default();
        let proven = proven_versions(&docs, &reports);
        let (records, found) = Records::load(&d.store, &proven, d.clock.now().as_second());
        announce_records(&d.events, &records, &found);
        let (tx, rx) = mpsc::channel(8);
        let mut c = Self {
            local: Some(rx),
            handle: ControlHandle { tx },
            records,
            docs,
            reports,
            parsed: HashMap::new(),
            kinds: Registry::standard(&d),
            applied: HashMap::new(),
            pending: HashMap::new(),
            finished_failed: HashMap::new(),
            progress: Default::default(),
            retry_at: HashMap::new(),
            retry_n: HashMap::new(),
            limiter,
            topics,
            trust,
            d,
        };
        c.prune_seen();
        Ok(c)
    }

    /// What the actions act through (the socket's ops and the remote commands alike).
    pub fn parts(&self) -> crate::actions::Parts {
        crate::actions::Parts {
            d: self.d.clone(),
            control: self.handle.clone(),
        }
    }

    pub fn trust_version(&self) -> u64 {
        self.trust.keyring().version()
    }

    /// Puts the persisted documents back in force (a kiosk that boots without network keeps
    /// its schedule and policy). What a capability's own journal decides (an installed
    /// release, a certificate pair) is adopted, not applied again.
    pub fn restore(&mut self) {
        let kinds: Vec<String> = self.docs.keys().cloned().collect();
        for kind in kinds {
            let Some((target, doc)) = self.effective(&kind) else {
                continue;
            };
            let restore = match self.kinds.find(&kind) {
                Some(f) => f.restore(&At {
                    kind: &kind,
                    name: &f.name,
                    target: &target,
                    version: doc.version,
                    envelope: &doc.envelope,
                }),
                None => {
                    tracing::warn!(kind, "stored document of a kind no longer accepted");
                    continue;
                }
            };
            match restore {
                Restore::Adopt => {
                    self.applied.insert(kind.clone(), (target, doc.version));
                }
                Restore::Apply => {
                    self.apply(&kind, &target, &doc, false);
                }
            }
        }
        self.refresh_inventory();
    }

    /// Kind → version in force, for the birth's inventory (applications are listed by release).
    fn refresh_inventory(&self) {
        let mut docs: BTreeMap<String, u64> = self
            .applied
            .iter()
            .filter(|(k, _)| !k.starts_with("app/"))
            .map(|(k, (_, v))| (k.clone(), *v))
            .collect();
        docs.insert("trust".into(), self.trust_version());
        let apps = crate::diagnostics::inventory::apps(&self.d.cfg.paths.apps_dir);
        self.d.publisher.update_birth(|b| {
            if let Some(inv) = b.get_mut("inventory").and_then(Value::as_object_mut) {
                inv.insert("docs".into(), json!(docs));
                inv.insert("apps".into(), json!(apps));
            }
        });
    }

    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut updates: mpsc::UnboundedReceiver<UpdateReport>,
        mut certs: mpsc::UnboundedReceiver<crate::identity::CertReport>,
        cancel: CancellationToken,
    ) {
        let mut local = self.local.take();
        loop {
            let next_retry = self.retry_at.values().min().copied();
            let retry = async {
                match next_retry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(r) = recv_opt(&mut local) => match r {
                    Request::Apply { kind, envelope, reply } => {
                        let _ = reply.send(self.on_local_apply(&kind, &envelope));
                    }
                    Request::SecurityReset { reply } => {
                        let _ = reply.send(self.security_reset());
                    }
                },
                _ = retry => self.retry_due(),
                m = inbound.recv() => match m {
                    Some(mut m) => {
                        self.on_message(&m).await;
                        // Acted on (or refused): only now may the broker forget it.
                        m.done();
                    }
                    None => break,
                },
                r = updates.recv() => match r {
                    Some(r) => self.on_update(r),
                    None => break,
                },
                _ = sleep_opt(self.kinds.next_due(&self.d)) => self.due(),
                r = certs.recv() => match r {
                    Some(r) => self.on_worker_done("cert", &r.target, r.version, r.status == "applied", r.status, r.message, r.details),
                    None => break,
                },
            }
        }
    }

    /// Applies again the documents whose transient failure has waited out its backoff.
    fn retry_due(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .retry_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for kind in due {
            self.retry_at.remove(&kind);
            tracing::info!(kind, "applying again after a transient failure");
            self.reconcile(&kind);
        }
    }

    async fn on_message(&mut self, msg: &Inbound) {
        match self.topics.parse(&msg.topic) {
            Some(Downstream::Desired { scope, kind }) => {
                let _ = self.on_desired(&scope, &kind, &msg.payload);
            }
            Some(Downstream::Command { scope }) => self.on_command(&scope, &msg.payload).await,
            None => {
                let err =
                    TrustError::InvalidDocument(format!("no such downstream topic: {}", msg.topic));
                self.security_rejected(&msg.topic, None, &err);
            }
        }
    }

    fn persist(&self) {
        let results = [
            self.records.save_versions(&self.d.store),
            self.d.store.save(DOCS, &self.docs),
            self.d.store.save(REPORTS, &self.reports),
        ];
        for r in results {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot persist control state");
            }
        }
    }

    /// Returns the `reported/{kind}` this produced, if any.
    fn on_desired(&mut self, scope: &Scope, kind: &str, payload: &[u8]) -> Option<Value> {
        let topic = format!("desired/{kind}");
        let target = scope.target(&self.d.cfg.terminal.id);
        let role = match self.kinds.find(kind) {
            Some(f) => f.role(),
            None if kind == "trust" => Role::Trust,
            None => {
                let e = Refusal::Content(format!("unknown kind {kind}"));
                self.security_rejected(&topic, None, &e);
                return None;
            }
        };
        if payload.is_empty() {
            // An empty retained message clears this scope; a less specific one may take over.
            let removed = self
                .docs
                .get_mut(kind)
                .and_then(|m| m.remove(&target))
                .is_some();
            if removed {
                tracing::info!(kind, target, "scope cleared");
                self.persist();
                return self.reconcile(kind);
            }
            return None;
        }
        let now = self.d.clock.now();
        let sec = self.d.cfg.security.clone();
        if role == Role::Trust {
            let rotated = match crate::helper::Client::from_config(&self.d.cfg) {
                None => self.trust.rotate(
                    payload,
                    now,
                    sec.clock_skew_s,
                    sec.max_message_bytes,
                    &target,
                ),
                Some(helper) => self.rotate_through_helper(&helper, payload, now, &target),
            };
            return match rotated {
                Ok(v) => Some(self.report(
                    kind,
                    &target,
                    v,
                    "applied",
                    format!("trust root version {v} in force"),
                    json!({}),
                )),
                Err(TrustError::Rollback { have, got }) if have == got => self.republish(kind),
                Err(e) => Some(self.reject(kind, &target, None, &e.into())),
            };
        }
        let verified = match verify_document(
            payload,
            role,
            &target,
            self.trust.keyring(),
            now,
            sec.clock_skew_s,
            sec.max_message_bytes,
        ) {
            Ok(v) => v,
            Err(e) => return Some(self.reject(kind, &target, None, &e.into())),
        };
        let Some(version) = verified.version() else {
            return Some(self.reject(
                kind,
                &target,
                None,
                &Refusal::Content("version is required".into()),
            ));
        };
        let key = format!("{kind}|{target}");
        if let Some(since) = self.records.replay_horizon(Some(&key))
            && verified.issued_at().as_second() < since
        {
            return Some(
                self.reject(
                    kind,
                    &target,
                    Some(version),
                    &TrustError::RecordsLost {
                        since: rfc3339(jiff::Timestamp::from_second(since).unwrap_or_default()),
                    }
                    .into(),
                ),
            );
        }
        if let Some(&have) = self.records.versions.get(&key) {
            if version < have {
                return Some(self.reject(
                    kind,
                    &target,
                    Some(version),
                    &TrustError::Rollback { have, got: version }.into(),
                ));
            }
            if version == have {
                let same = |m: &HashMap<String, (String, u64)>| {
                    m.get(kind)
                        .is_some_and(|(t, v)| *t == target && *v == version)
                };
                // In force, or on its way there (an install running): nothing to do again.
                if same(&self.applied) || same(&self.pending) || same(&self.finished_failed) {
                    return self.republish(kind);
                }
                if self
                    .docs
                    .get(kind)
                    .and_then(|m| m.get(&target))
                    .is_some_and(|d| d.version == version)
                {
                    // Accepted but not in force (its apply failed): sending it again tries again.
                    self.retry_at.remove(kind);
                    return self.reconcile(kind);
                }
                return None;
            }
        }
        // The one parse of the content: the typed document travels on from here.
        let found = self.kinds.find(kind)?;
        let envelope = if found.keeps_envelope() {
            payload.to_vec()
        } else {
            Vec::new()
        };
        let at = At {
            kind,
            name: &found.name,
            target: &target,
            version,
            envelope: &envelope,
        };
        let typed = match found.parse(&self.d, &at, verified.payload()) {
            Ok(t) => t,
            Err(msg) => {
                return Some(self.reject(kind, &target, Some(version), &Refusal::Content(msg)));
            }
        };
        self.records.versions.insert(key.clone(), version);
        self.parsed.insert(key, typed);
        self.docs.entry(kind.to_string()).or_default().insert(
            target.clone(),
            Stored {
                version,
                target: target.clone(),
                payload: verified.into_payload(),
                envelope,
            },
        );
        self.persist();
        self.reconcile(kind)
    }

    /// A side-loaded document: its scope is the `target` of the document itself (read once its
    /// signature holds), then it takes exactly the path of one from that scope's topic. A
    /// target that is not this terminal, one of its groups or `all`, and an envelope that does
    /// not verify, go down the terminal's path, where verification refuses them as it would on
    /// MQTT (`wrong_target`, `bad_signature`, ...).
    fn on_local_apply(&mut self, kind: &str, envelope: &[u8]) -> Value {
        let role = match self.kinds.find(kind) {
            Some(f) => f.role(),
            None if kind == "trust" => Role::Trust,
            None => {
                return json!({"kind": kind, "status": "invalid",
                    "message": format!("kind {kind:?} must be {}", self.kinds.describe())});
            }
        };
        let id = self.d.cfg.terminal.id.clone();
        let claimed = verify_envelope(
            envelope,
            role,
            self.trust.keyring(),
            self.d.cfg.security.max_message_bytes,
        )
        .ok()
        .and_then(|p| serde_json::from_slice::<Value>(p.payload()).ok())
        .and_then(|v| v["target"].as_str().map(str::to_string));
        let scope = match claimed.as_deref() {
            Some("all") => Scope::Fleet,
            Some(t) if t.strip_prefix("t/") == Some(id.as_str()) => Scope::Terminal,
            Some(t) => match t.strip_prefix("g/") {
                Some(g) if self.d.cfg.terminal.groups.iter().any(|x| x == g) => {
                    Scope::Group(g.to_string())
                }
                _ => Scope::Terminal,
            },
            None => Scope::Terminal,
        };
        tracing::info!(kind, target = %scope.target(&id), "side-loaded document");
        match self.on_desired(&scope, kind, envelope) {
            Some(report) => report,
            None => {
                let in_force = self
                    .applied
                    .get(kind)
                    .map(|(t, v)| json!({"target": t, "version": v}));
                let version = self
                    .docs
                    .get(kind)
                    .and_then(|m| m.get(&scope.target(&id)))
                    .map(|d| d.version);
                self.reported_doc(
                    kind,
                    &scope.target(&id),
                    json!(version),
                    "superseded",
                    "stored; a more specific scope's document stays in force".into(),
                    json!({"in_force": in_force}),
                )
            }
        }
    }

    /// The trust root is root-owned: the daemon verifies the rotation (for the exact refusal),
    /// the helper verifies it again and writes it, then the daemon reads the new root back.
    fn rotate_through_helper(
        &mut self,
        helper: &crate::helper::Client,
        payload: &[u8],
        now: jiff::Timestamp,
        target: &str,
    ) -> Result<u64, TrustError> {
        use base64::Engine as _;
        let sec = &self.d.cfg.security;
        let (next, _) = self.trust.keyring().rotate(
            payload,
            now,
            sec.clock_skew_s,
            sec.max_message_bytes,
            target,
        )?;
        let r = helper.call(&crate::helper::Request::RotateTrust {
            envelope: base64::engine::general_purpose::STANDARD.encode(payload),
            target: target.to_string(),
        });
        if !r.ok {
            return Err(TrustError::InvalidDocument(format!(
                "the helper did not put the trust root in force ({}): {}",
                r.code, r.message
            )));
        }
        self.trust.reload()?;
        tracing::info!(
            version = next.version(),
            "trust root rotated through the helper"
        );
        Ok(self.trust.keyring().version())
    }

    /// The most specific scope holding a document of `kind`.
    fn effective(&self, kind: &str) -> Option<(String, Stored)> {
        let docs = self.docs.get(kind)?;
        self.topics.precedence().iter().find_map(|scope| {
            let t = scope.target(&self.d.cfg.terminal.id);
            docs.get(&t).map(|d| (t, d.clone()))
        })
    }

    fn reconcile(&mut self, kind: &str) -> Option<Value> {
        match self.effective(kind) {
            Some((target, doc)) => {
                let want = Some(&(target.clone(), doc.version));
                if self.applied.get(kind) != want && self.pending.get(kind) != want {
                    return Some(self.apply(kind, &target, &doc, true));
                }
            }
            None => {
                self.kinds.forget(&self.d, kind);
                if self.applied.contains_key(kind) {
                    tracing::info!(
                        kind,
                        "no scope holds a document any more; the last one stays in force"
                    );
                }
            }
        }
        None
    }

    /// Hands the effective document to its capability and reports what that led to.
    fn apply(&mut self, kind: &str, target: &str, doc: &Stored, fresh: bool) -> Value {
        let version = doc.version;
        let key = doc_key(kind, target);
        let result = match self.kinds.find(kind) {
            None => Err(ApplyError::Content(format!("unknown kind {kind}"))),
            Some(mut found) => {
                let name = found.name.clone();
                let at = At {
                    kind,
                    name: &name,
                    target,
                    version,
                    envelope: &doc.envelope,
                };
                // Parsed when it was accepted; a document read back from disk is parsed here.
                let typed = match self.parsed.get(&key) {
                    Some(t) => Ok(t.clone()),
                    None => found.parse(&self.d, &at, &doc.payload).inspect(|t| {
                        self.parsed.insert(key.clone(), t.clone());
                    }),
                };
                match typed {
                    Ok(t) => found.apply(&self.d, &at, &t, fresh),
                    Err(e) => Err(ApplyError::Content(e)),
                }
            }
        };
        match result {
            Ok(done) => {
                self.retry_at.remove(kind);
                self.retry_n.remove(kind);
                let place = (target.to_string(), version);
                self.finished_failed.remove(kind);
                if done.status == Status::Applied {
                    self.pending.remove(kind);
                    self.applied.insert(kind.to_string(), place);
                } else {
                    self.pending.insert(kind.to_string(), place);
                }
                let v = self.report(
                    kind,
                    target,
                    version,
                    done.status.as_str(),
                    done.message,
                    done.details,
                );
                self.refresh_inventory();
                v
            }
            Err(ApplyError::Transient(e)) => {
                let n = self.retry_n.entry(kind.to_string()).or_insert(0);
                let pause = RETRY_FIRST.saturating_mul(1 << (*n).min(8)).min(RETRY_MAX);
                *n += 1;
                self.retry_at
                    .insert(kind.to_string(), tokio::time::Instant::now() + pause);
                let message = format!("{e}; trying again in {} s", pause.as_secs());
                let details = json!({"code": "transient", "retry_in_s": pause.as_secs()});
                self.report(kind, target, version, "failed", message, details)
            }
            Err(ApplyError::Content(e)) => {
                self.report(kind, target, version, "failed", e, json!({}))
            }
        }
    }

    /// Time-driven work a capability asked for (a rollout wave opening).
    fn due(&mut self) {
        for kind in self.kinds.due(&self.d) {
            match self.effective(&kind) {
                Some((target, doc)) => {
                    tracing::info!(kind, "due again");
                    self.apply(&kind, &target, &doc, true);
                }
                None => self.kinds.forget(&self.d, &kind),
            }
        }
    }

    fn on_update(&mut self, r: UpdateReport) {
        let Some(r) = self.progress.report(r) else {
            return;
        };
        let target = self
            .pending
            .get(&r.kind)
            .or_else(|| self.applied.get(&r.kind))
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| format!("t/{}", self.d.cfg.terminal.id));
        let Some(o) = r.done else {
            let _ = self.report(&r.kind, &target, r.version, r.status, r.message, r.details);
            return;
        };
        let sev = match o.status {
            UpdateStatus::Applied => Severity::Info,
            _ => Severity::Major,
        };
        self.d
            .events
            .emit(sev, o.event_code(), o.message.clone(), json!(o));
        self.on_worker_done(
            &r.kind,
            &target,
            r.version,
            o.status == UpdateStatus::Applied,
            r.status,
            r.message,
            r.details,
        );
    }

    /// A worker's final word on a document it was handed: only now is it in force (or not).
    #[allow(clippy::too_many_arguments)]
    fn on_worker_done(
        &mut self,
        kind: &str,
        target: &str,
        version: u64,
        in_force: bool,
        status: &str,
        message: String,
        details: Value,
    ) {
        if self.pending.get(kind).is_some_and(|(_, v)| *v == version) {
            self.pending.remove(kind);
        }
        let place = (target.to_string(), version);
        if in_force {
            self.finished_failed.remove(kind);
            self.applied.insert(kind.to_string(), place);
        } else {
            self.finished_failed.insert(kind.to_string(), place);
        }
        self.refresh_inventory();
        let _ = self.report(kind, target, version, status, message, details);
    }

    fn report(
        &mut self,
        kind: &str,
        target: &str,
        version: u64,
        status: &str,
        message: String,
        details: Value,
    ) -> Value {
        let v = self.reported_doc(kind, target, json!(version), status, message, details);
        self.d.publisher.reported(kind, &v);
        // Progress is not worth a disk write; final states are.
        if status != "in_progress" {
            self.reports.insert(kind.to_string(), v.clone());
            if let Err(e) = self.d.store.save(REPORTS, &self.reports) {
                tracing::error!(error = %e, "cannot persist reports");
            }
        }
        v
    }

    /// Equal version: nothing is done; the last report is published again only when the broker
    /// never confirmed it (a fleet-wide redelivery must not become a fleet-wide wave of reports).
    fn republish(&self, kind: &str) -> Option<Value> {
        let v = self.reports.get(kind)?;
        if !self.d.publisher.reported_settled(kind) {
            self.d.publisher.reported(kind, v);
        }
        Some(v.clone())
    }

    fn reject(&mut self, kind: &str, target: &str, version: Option<u64>, err: &Refusal) -> Value {
        self.security_rejected(&format!("desired/{kind}"), Some(target), err);
        let in_force = self
            .applied
            .get(kind)
            .map(|(t, v)| json!({"target": t, "version": v}));
        let details = json!({"reason": err.code(), "in_force": in_force});
        let v = self.reported_doc(
            kind,
            target,
            json!(version),
            "rejected",
            err.to_string(),
            details,
        );
        self.d.publisher.reported(kind, &v);
        v
    }

    /// `reported/{kind}` (docs/protocol.md §4); `kind` is `app` for `app/{name}`.
    fn reported_doc(
        &self,
        kind: &str,
        target: &str,
        version: Value,
        status: &str,
        message: String,
        details: Value,
    ) -> Value {
        json!({
            "kind": kind.split('/').next().unwrap_or(kind),
            "target": target,
            "version": version,
            "status": status,
            "message": message,
            "ts": rfc3339(self.d.clock.now()),
            "details": details,
        })
    }

    fn security_rejected(&mut self, topic: &str, target: Option<&str>, err: &impl Reason) {
        // The journal gets what the platform gets: a flood of junk costs one line per
        // allowed event, the rest only at debug level.
        let Some(suppressed) = self.limiter.allow(std::time::Instant::now()) else {
            tracing::debug!(topic, reason = err.code(), "refused: {err}");
            return;
        };
        tracing::warn!(topic, reason = err.code(), suppressed, "refused: {err}");
        self.d.events.emit(
            Severity::Major,
            "security.rejected",
            format!("refused {topic}: {err}"),
            json!({"topic": topic, "target": target, "reason": err.code(), "suppressed": suppressed}),
        );
    }

    fn prune_seen(&mut self) {
        let now = self.d.clock.now().as_second();
        let skew = self.d.cfg.security.clock_skew_s as i64;
        self.records.seen.retain(|_, exp| *exp + skew >= now);
    }

    async fn on_command(&mut self, scope: &Scope, payload: &[u8]) {
        let target = scope.target(&self.d.cfg.terminal.id);
        let now = self.d.clock.now();
        let sec = self.d.cfg.security.clone();
        let verified = verify_document(
            payload,
            Role::Command,
            &target,
            self.trust.keyring(),
            now,
            sec.clock_skew_s,
            sec.max_message_bytes,
        );
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                self.security_rejected("cmd", Some(&target), &e);
                // The signature held but the command is refused: say so to the sender.
                if matches!(e, TrustError::Expired | TrustError::WrongTarget { .. })
                    && let Ok(p) = verify_envelope(
                        payload,
                        Role::Command,
                        self.trust.keyring(),
                        sec.max_message_bytes,
                    )
                    && let Some(id) = serde_json::from_slice::<Value>(p.payload())
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_string))
                {
                    self.reply(&id, "rejected", e.code(), &e.to_string(), json!({}));
                }
                return;
            }
        };
        let Some(cmd) = v.command().cloned() else {
            return;
        };
        if let Some(since) = self.records.replay_horizon(None)
            && v.issued_at().as_second() < since
        {
            let e = TrustError::RecordsLost {
                since: rfc3339(jiff::Timestamp::from_second(since).unwrap_or_default()),
            };
            self.security_rejected("cmd", Some(&target), &e);
            self.reply(&cmd.id, "rejected", e.code(), &e.to_string(), json!({}));
            return;
        }
        self.prune_seen();
        if self.records.seen.contains_key(&cmd.id) {
            let e = TrustError::Replayed;
            self.security_rejected("cmd", Some(&target), &e);
            self.reply(&cmd.id, "rejected", e.code(), &e.to_string(), json!({}));
            return;
        }
        // Recorded before running: a crash mid-command must not run it again on redelivery.
        let expires = v
            .expires_at()
            .map(|t| t.as_second())
            .unwrap_or(now.as_second());
        self.records.seen.insert(cmd.id.clone(), expires);
        if let Err(e) = self.records.save_seen(&self.d.store) {
            tracing::error!(error = %e, "cannot persist executed command ids; refusing to run");
            self.reply(&cmd.id, "error", "state_error", &e.to_string(), json!({}));
            return;
        }
        tracing::info!(id = %cmd.id, name = %cmd.name, "command");
        // Every command runs beside the loop and replies when done, so the commands and
        // documents behind a long one (a scan, an upload) are answered. The id is already
        // recorded above: at-most-once does not depend on the task.
        let origin = crate::actions::Origin::Platform;
        let action = match crate::actions::Name::parse(&cmd.name).filter(|n| n.remote()) {
            Some(name) => crate::actions::Action::parse(name, &cmd.args, origin),
            None => Err(crate::actions::ActionError::new(
                crate::actions::Code::Unknown,
                format!("unknown command {:?}", cmd.name),
            )),
        };
        let parts = self.parts();
        tokio::spawn(async move {
            let r = match action {
                Ok(a) => a.run(parts.clone(), origin).await,
                Err(e) => Err(e),
            };
            let (status, code, message, result) = crate::actions::reply_remote(r);
            send_reply(&parts.d, &cmd.id, status, &code, &message, result);
        });
    }

    /// The operator's way out of the lost-records state: the signed command says the floor as
    /// it stands now (every version this terminal can still prove) is the one to trust.
    fn security_reset(&mut self) -> Result<(String, Value), String> {
        let was = self
            .records
            .reset(&self.d.store)
            .map_err(|e| e.to_string())?;
        let since = was
            .as_ref()
            .map(|l| rfc3339(jiff::Timestamp::from_second(l.since).unwrap_or_default()));
        let message = match &since {
            Some(s) => format!("security records marked lost since {s} are trusted again"),
            None => "security records were whole; nothing to reset".to_string(),
        };
        if was.is_some() {
            self.d.events.emit(
                Severity::Info,
                "security.records_reset",
                message.clone(),
                json!({"lost_since": since, "versions": self.records.versions.len()}),
            );
        }
        Ok((
            message,
            json!({"was_lost": was.is_some(), "lost_since": since}),
        ))
    }

    fn reply(&self, id: &str, status: &str, code: &str, message: &str, result: Value) {
        send_reply(&self.d, id, status, code, message, result);
    }
}

/// Versions that local records other than the floor itself prove were accepted: every stored
/// document, and every final report that was not a refusal.
fn proven_versions(
    docs: &BTreeMap<String, BTreeMap<String, Stored>>,
    reports: &BTreeMap<String, Value>,
) -> BTreeMap<String, u64> {
    let mut proven: BTreeMap<String, u64> = BTreeMap::new();
    let mut raise = |key: String, v: u64| {
        let e = proven.entry(key).or_insert(v);
        *e = (*e).max(v);
    };
    for (kind, scopes) in docs {
        for (target, doc) in scopes {
            raise(format!("{kind}|{target}"), doc.version);
        }
    }
    for (kind, r) in reports {
        if r["status"] == "rejected" {
            continue;
        }
        if let (Some(target), Some(v)) = (r["target"].as_str(), r["version"].as_u64()) {
            raise(format!("{kind}|{target}"), v);
        }
    }
    proven
}

/// Tells the platform and the journal what loading the security records found.
fn announce_records(events: &EventSink, records: &Records, found: &records::LoadReport) {
    for copy in &found.repaired {
        tracing::error!(copy = %copy, "security record copy unreadable; repaired from the other copy");
        events.emit(
            Severity::Major,
            "security.records_repaired",
            format!("a copy of a security record was unreadable and was repaired: {copy}"),
            json!({"copy": copy}),
        );
    }
    if let Some(lost) = &records.lost {
        let since = rfc3339(jiff::Timestamp::from_second(lost.since).unwrap_or_default());
        tracing::error!(since = %since, what = ?lost.what, "security records lost; refusing anything signed before {since} until security_reset");
        events.emit(
            Severity::Critical,
            "security.records_lost",
            format!(
                "anti-rollback records unreadable (since {since}): documents and commands signed before then are refused until an operator sends the signed security_reset command"
            ),
            json!({"since": since, "what": lost.what, "newly_lost": found.newly_lost, "proven_versions": records.versions.len()}),
        );
    }
}

async fn sleep_opt(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn send_reply(d: &Deps, id: &str, status: &str, code: &str, message: &str, result: Value) {
    d.publisher.reply(&json!({
        "id": id,
        "terminal_id": d.cfg.terminal.id,
        "status": status,
        "code": code,
        "message": message,
        "result": result,
        "ts": rfc3339(d.clock.now()),
    }));
}
