//! The terminal's TLS client identity and its renewal (PROTOCOL §9).
//!
//! Owns the renewal journal and the key pairs under `{state_dir}/identity/`: the pending key
//! (made here, never sent anywhere), the certificate the platform signed for it, and
//! `active.json`, the one pointer that says which pair is in force (absent: the provisioned
//! `mqtt.cert_file`/`key_file`). Switching pairs is that single atomic write, made only after the
//! broker accepted the new pair, so a crash at any point leaves a pair that works: the previous
//! pair is never touched before then. It asks the transport to reconnect through a
//! [`TlsSwitch`] and never touches rumqttc; it reports outcomes to the control layer, which owns
//! `reported/cert`.

pub mod cert;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Mqtt;
use crate::events::{EventSink, Severity};
use crate::host::{SharedClock, rfc3339};
use crate::state::{StateStore, write_atomic};
use crate::transport::{Publisher, TlsSwitch, tls};
pub use cert::{CertDoc, CertError, CertInfo, Pending};

const DIR: &str = "identity";
const JOURNAL: &str = "identity/renewal.json";
const ACTIVE: &str = "identity/active.json";
/// A request not answered is published again after this long (§9: every hour).
const CSR_REPEAT: Duration = Duration::from_secs(3600);
/// How often the expiry is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(600);

/// Where a renewal stands; persisted so a restart resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A key was made and its request sent; waiting for the platform's `cert`.
    Requested,
    /// A certificate for the key was accepted and written; the broker has not yet accepted it.
    Connecting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    request_id: String,
    phase: Phase,
    created_at: String,
    /// Unix time the request was last published (0: not yet).
    #[serde(default)]
    sent_at: i64,
    /// The accepted `cert` document's version and target, for its report.
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Active {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What `kioskctl status` and the patrol show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CertStatus {
    /// Whether TLS client authentication is configured at all.
    pub client_auth: bool,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    pub renewal: Option<Phase>,
    pub request_id: Option<String>,
}

/// The final word on an accepted `cert` document, for `reported/cert`.
#[derive(Debug, Clone)]
pub struct CertReport {
    pub version: u64,
    pub target: String,
    pub status: &'static str,
    pub message: String,
    pub details: Value,
}

enum Request {
    Renew(oneshot::Sender<Result<Value, String>>),
    Install {
        version: u64,
        target: String,
        doc: CertDoc,
        info: CertInfo,
    },
}

/// The pair in force: `identity/active.json` under `state_dir` when both its files exist, else
/// the provisioned one of `[mqtt]`.
pub fn active_pair(state_dir: &Path, mqtt: &Mqtt) -> (Option<PathBuf>, Option<PathBuf>) {
    let path = state_dir.join(ACTIVE);
    if let Some(a) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Active>(&b).ok())
        .filter(|a| a.cert_file.is_file() && a.key_file.is_file())
    {
        return (Some(a.cert_file), Some(a.key_file));
    }
    (mqtt.cert_file.clone(), mqtt.key_file.clone())
}

/// What renewal needs of the configuration: the CSR's subject, the `[mqtt]` section (the
/// provisioned pair, the CA, `renew_before_days`) and `paths.state_dir`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub terminal_id: String,
    pub mqtt: Mqtt,
    pub state_dir: PathBuf,
}

/// Cheap handle for the control layer, the socket and commands.
#[derive(Clone)]
pub struct IdentityHandle {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

struct Shared {
    status: Mutex<CertStatus>,
    pending: Mutex<Option<Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IdentityHandle {
    pub fn status(&self) -> CertStatus {
        lock(&self.shared.status).clone()
    }

    /// The checks of §9 on a verified `cert` payload; `Err` is a refusal that changes nothing.
    pub fn check(
        &self,
        payload: &[u8],
        terminal_id: &str,
        now: jiff::Timestamp,
        skew_s: u64,
    ) -> Result<(CertDoc, CertInfo), CertError> {
        let doc = CertDoc::parse(payload)?;
        let pending = lock(&self.shared.pending).clone();
        let info = cert::check(&doc, pending.as_ref(), terminal_id, now, skew_s)?;
        Ok((doc, info))
    }

    /// Starts a renewal now (the `cert_renew` command): a new key, a new request.
    pub async fn renew(&self) -> Result<Value, String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Renew(done))
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await.map_err(|_| "the agent is stopping".to_string())?
    }

    /// Hands an accepted certificate to the worker, which writes it and reconnects with it;
    /// the outcome comes back as a [`CertReport`].
    pub fn install(
        &self,
        version: u64,
        target: &str,
        doc: CertDoc,
        info: CertInfo,
    ) -> Result<(), String> {
        self.tx
            .try_send(Request::Install {
                version,
                target: target.to_string(),
                doc,
                info,
            })
            .map_err(|_| "certificate renewal is busy; send the document again".to_string())
    }
}

/// The renewal worker: the only writer of `{state_dir}/identity/`.
pub struct Renewal {
    cfg: Settings,
    clock: SharedClock,
    store: StateStore,
    publisher: Publisher,
    switch: TlsSwitch,
    events: EventSink,
    rx: mpsc::Receiver<Request>,
    reports: mpsc::UnboundedSender<CertReport>,
    shared: Arc<Shared>,
    journal: Option<Journal>,
    /// Crash-test point: `KIOSK_AGENT_PAUSE_AT=cert_written` stops the worker right after the
    /// new pair is written, before reconnecting, so the process can be killed exactly there.
    /// Debug builds only: the packaged release build never reads it.
    pause_after_write: bool,
}

impl Renewal {
    pub fn new(
        cfg: Settings,
        clock: SharedClock,
        store: StateStore,
        publisher: Publisher,
        switch: TlsSwitch,
        events: EventSink,
        reports: mpsc::UnboundedSender<CertReport>,
    ) -> (Self, IdentityHandle) {
        let (tx, rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            status: Mutex::new(CertStatus::default()),
            pending: Mutex::new(None),
        });
        let journal = match store.load::<Journal>(JOURNAL) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "certificate renewal journal unreadable; starting over");
                None
            }
        };
        let mut r = Self {
            cfg,
            clock,
            store,
            publisher,
            switch,
            events,
            rx,
            reports,
            shared: shared.clone(),
            journal,
            pause_after_write: cfg!(debug_assertions)
                && std::env::var("KIOSK_AGENT_PAUSE_AT").as_deref() == Ok("cert_written"),
        };
        r.load_pending();
        r.refresh_status();
        (r, IdentityHandle { tx, shared })
    }

    fn dir(&self) -> PathBuf {
        self.store.path(DIR)
    }

    fn key_path(&self, rid: &str) -> PathBuf {
        self.dir().join(format!("{rid}.key"))
    }

    fn cert_path(&self, rid: &str) -> PathBuf {
        self.dir().join(format!("{rid}.pem"))
    }

    fn client_auth(&self) -> bool {
        self.cfg.mqtt.cert_file.is_some() && self.cfg.mqtt.key_file.is_some()
    }

    /// The public key of the journal's pending key, for `check`; a journal whose key file is
    /// gone is dropped (nothing can answer it).
    fn load_pending(&mut self) {
        let pending = self.journal.as_ref().and_then(|j| {
            let pem = std::fs::read(self.key_path(&j.request_id)).ok()?;
            let der = cert::key_from_pem(&pem).ok()?;
            Some(Pending {
                request_id: j.request_id.clone(),
                public_key: cert::public_key_of(&der).ok()?,
            })
        });
        if pending.is_none() && self.journal.is_some() {
            tracing::warn!("renewal journal without its key; the renewal starts over");
            self.journal = None;
            let _ = std::fs::remove_file(self.store.path(JOURNAL));
        }
        *lock(&self.shared.pending) = pending;
    }

    fn current_info(&self) -> Option<CertInfo> {
        let (cert, _) = active_pair(&self.cfg.state_dir, &self.cfg.mqtt);
        let pem = std::fs::read(cert?).ok()?;
        cert::parse_leaf_pem(&pem).ok()
    }

    /// Status for the socket, and `cert_not_after` for the birth.
    fn refresh_status(&self) -> Option<CertInfo> {
        let info = self.current_info();
        let now = self.clock.now().as_second();
        let not_after = info.as_ref().map(|i| rfc3339(i.not_after));
        *lock(&self.shared.status) = CertStatus {
            client_auth: self.client_auth(),
            not_after: not_after.clone(),
            days_left: info
                .as_ref()
                .map(|i| (i.not_after.as_second() - now).div_euclid(86_400)),
            renewal: self.journal.as_ref().map(|j| j.phase),
            request_id: self.journal.as_ref().map(|j| j.request_id.clone()),
        };
        if self.client_auth()
            && let Some(na) = not_after
        {
            self.publisher.update_birth(|b| {
                b.insert("cert_not_after".into(), json!(na));
            });
        }
        info
    }

    fn save_journal(&self) -> Result<(), String> {
        match &self.journal {
            Some(j) => self.store.save(JOURNAL, j).map_err(|e| e.to_string()),
            None => match std::fs::remove_file(self.store.path(JOURNAL)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut connected = self.publisher.connected_watch();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                req = self.rx.recv() => match req {
                    Some(Request::Renew(done)) => {
                        let r = self.start_request().await;
                        let _ = done.send(r);
                    }
                    Some(Request::Install { version, target, doc, info }) => {
                        match self.write_candidate(version, &target, &doc, &info) {
                            Ok(()) => self.connect_candidate(&cancel).await,
                            Err(message) => {
                                let _ = self.reports.send(CertReport {
                                    version,
                                    target,
                                    status: "failed",
                                    message,
                                    details: json!({"request_id": doc.request_id}),
                                });
                            }
                        }
                    }
                    None => break,
                },
                changed = connected.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if *connected.borrow_and_update() {
                        self.on_tick(&cancel).await;
                    }
                }
                _ = tick.tick() => self.on_tick(&cancel).await,
            }
        }
    }

    /// Resumes a renewal left half-done, repeats an unanswered request, or starts one when the
    /// certificate is about to expire. Only while connected: a request is worthless offline.
    async fn on_tick(&mut self, cancel: &CancellationToken) {
        if !self.client_auth() || !self.publisher.is_connected() {
            return;
        }
        let info = self.refresh_status();
        let now = self.clock.now().as_second();
        match self.journal.clone() {
            Some(j) if j.phase == Phase::Connecting => self.connect_candidate(cancel).await,
            Some(j) => {
                if now - j.sent_at >= CSR_REPEAT.as_secs() as i64 {
                    let _ = self.publish_request(info.as_ref());
                }
            }
            None => {
                let days = self.cfg.mqtt.renew_before_days as i64;
                let due = days > 0
                    && info
                        .as_ref()
                        .is_some_and(|i| i.not_after.as_second() - now < days * 86_400);
                if due {
                    tracing::info!(
                        "client certificate expires within mqtt.renew_before_days; requesting a new one"
                    );
                    if let Err(e) = self.start_request().await {
                        tracing::error!(error = %e, "cannot start certificate renewal");
                    }
                }
            }
        }
    }

    /// A new key (replacing any pending one) and its request.
    async fn start_request(&mut self) -> Result<Value, String> {
        if !self.client_auth() {
            return Err(
                "no TLS client certificate is configured (mqtt.cert_file, key_file)".into(),
            );
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.phase == Phase::Connecting)
        {
            return Err("a new certificate is being connected with; try again shortly".into());
        }
        let key = cert::generate_key().map_err(|e| e.to_string())?;
        let rid = random_id();
        std::fs::create_dir_all(self.dir()).map_err(|e| e.to_string())?;
        write_atomic(
            &self.key_path(&rid),
            cert::key_pem(&key.pkcs8).as_bytes(),
            Some(0o600),
        )
        .map_err(|e| e.to_string())?;
        let old = self.journal.replace(Journal {
            request_id: rid.clone(),
            phase: Phase::Requested,
            created_at: rfc3339(self.clock.now()),
            sent_at: 0,
            version: None,
            target: None,
        });
        self.save_journal()?;
        if let Some(old) = old {
            let _ = std::fs::remove_file(self.key_path(&old.request_id));
            let _ = std::fs::remove_file(self.cert_path(&old.request_id));
        }
        *lock(&self.shared.pending) = Some(Pending {
            request_id: rid.clone(),
            public_key: key.public,
        });
        let info = self.refresh_status();
        self.publish_request(info.as_ref())
    }

    fn publish_request(&mut self, current: Option<&CertInfo>) -> Result<Value, String> {
        let dir = self.dir();
        let Some(j) = self.journal.as_mut() else {
            return Err("no renewal pending".into());
        };
        let pem =
            std::fs::read(dir.join(format!("{}.key", j.request_id))).map_err(|e| e.to_string())?;
        let der = cert::key_from_pem(&pem).map_err(|e| e.to_string())?;
        let csr = cert::csr_pem(&der, &self.cfg.terminal_id).map_err(|e| e.to_string())?;
        let current_not_after = current.map(|i| rfc3339(i.not_after));
        let msg =
            json!({"request_id": j.request_id, "csr": csr, "current_not_after": current_not_after});
        if !self.publisher.csr(&msg) {
            return Err("the request could not be queued for the broker".into());
        }
        j.sent_at = self.clock.now().as_second();
        let rid = j.request_id.clone();
        self.save_journal()?;
        tracing::info!(request_id = %rid, "certificate signing request sent");
        Ok(json!({"request_id": rid, "current_not_after": current_not_after}))
    }

    /// Writes the accepted certificate beside its key and records that it is being tried.
    fn write_candidate(
        &mut self,
        version: u64,
        target: &str,
        doc: &CertDoc,
        info: &CertInfo,
    ) -> Result<(), String> {
        let dir = self.dir();
        let Some(j) = self.journal.as_mut() else {
            return Err(CertError::NoPending.to_string());
        };
        if j.request_id != doc.request_id {
            return Err(CertError::WrongRequest {
                pending: j.request_id.clone(),
                got: doc.request_id.clone(),
            }
            .to_string());
        }
        let path = dir.join(format!("{}.pem", j.request_id));
        write_atomic(&path, doc.certificate.as_bytes(), Some(0o644)).map_err(|e| e.to_string())?;
        j.phase = Phase::Connecting;
        j.version = Some(version);
        j.target = Some(target.to_string());
        self.save_journal()?;
        self.refresh_status();
        tracing::info!(request_id = %doc.request_id, not_after = %rfc3339(info.not_after), "new client certificate written");
        Ok(())
    }

    /// Reconnects with the candidate pair; on success makes it the pair in force, on refusal
    /// stays with the previous one (the transport has already gone back to it).
    async fn connect_candidate(&mut self, cancel: &CancellationToken) {
        let Some(j) = self.journal.clone() else {
            return;
        };
        if self.pause_after_write {
            tracing::warn!("paused at cert_written (KIOSK_AGENT_PAUSE_AT)");
            cancel.cancelled().await;
            return;
        }
        let rid = j.request_id.clone();
        let (cert_path, key_path) = (self.cert_path(&rid), self.key_path(&rid));
        let version = j.version.unwrap_or(0);
        let target = j
            .target
            .clone()
            .unwrap_or_else(|| format!("t/{}", self.cfg.terminal_id));
        let info = std::fs::read(&cert_path)
            .ok()
            .and_then(|p| cert::parse_leaf_pem(&p).ok());
        let ca = self.cfg.mqtt.ca_file.as_deref();
        let (old_cert, old_key) = active_pair(&self.cfg.state_dir, &self.cfg.mqtt);
        let configs = tls::client_config(ca, Some(&cert_path), Some(&key_path)).and_then(|new| {
            tls::client_config(ca, old_cert.as_deref(), old_key.as_deref()).map(|old| (new, old))
        });
        let result = match (configs, &info) {
            (Ok((new, old)), Some(info)) => {
                let mut birth = serde_json::Map::new();
                birth.insert("cert_not_after".into(), json!(rfc3339(info.not_after)));
                self.switch.swap(new, old, birth).await
            }
            (Err(e), _) => Err(format!("the new pair is unusable: {e}")),
            (_, None) => Err("the new certificate file is unreadable".into()),
        };
        match result {
            Ok(()) => {
                let active = Active {
                    cert_file: cert_path,
                    key_file: key_path,
                };
                if let Err(e) = self.store.save(ACTIVE, &active) {
                    // Still connected with the new pair; the next start uses the old one and
                    // resumes from the journal.
                    tracing::error!(error = %e, "cannot record the new pair in force");
                    return;
                }
                self.journal = None;
                let _ = self.save_journal();
                *lock(&self.shared.pending) = None;
                self.remove_unused(&active);
                let not_after = info.map(|i| rfc3339(i.not_after));
                self.refresh_status();
                self.events.emit(
                    Severity::Info,
                    "cert.renewed",
                    format!(
                        "client certificate renewed; valid until {}",
                        not_after.clone().unwrap_or_default()
                    ),
                    json!({"request_id": rid, "not_after": not_after}),
                );
                let _ = self.reports.send(CertReport {
                    version,
                    target,
                    status: "applied",
                    message: "new client certificate in force".into(),
                    details: json!({"request_id": rid, "not_after": not_after}),
                });
            }
            Err(e) => {
                // The request stays open: the platform may answer it with a corrected certificate.
                let _ = std::fs::remove_file(&cert_path);
                if let Some(j) = self.journal.as_mut() {
                    j.phase = Phase::Requested;
                    j.version = None;
                    j.target = None;
                }
                let _ = self.save_journal();
                self.refresh_status();
                self.events.emit(
                    Severity::Major,
                    "cert.failed",
                    format!("the new client certificate was not accepted: {e}; the previous one stays in force"),
                    json!({"request_id": rid, "error": e}),
                );
                let _ = self.reports.send(CertReport {
                    version,
                    target,
                    status: "failed",
                    message: format!(
                        "the broker refused the new certificate; previous one in force: {e}"
                    ),
                    details: json!({"request_id": rid, "error": e}),
                });
            }
        }
    }

    /// Deletes renewed pairs that are neither in force nor pending.
    fn remove_unused(&self, active: &Active) {
        let Ok(rd) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str());
            if matches!(ext, Some("pem" | "key")) && p != active.cert_file && p != active.key_file {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}
