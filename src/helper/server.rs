//! The helper's side: who may ask (SO_PEERCRED), what may be asked (the closed [`Request`]
//! set) and how each request is checked before anything changes. Fully blocking, one
//! connection at a time: mutations are serialised, and the idle helper is a single thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::proto::{MAX_REQUEST_BYTES, PowerAction, Reply, Request, codes};
use crate::config::{self, Config};
use crate::host::{HostPaths, SharedClock};
use crate::policy::remediate::{FsRemediator, RemediateError, valid_unit_name};
use crate::policy::{CheckStatus, Ctx, SystemRunner};
use crate::trust::{Keyring, Role, TrustStore, verify_document, verify_envelope};

/// Longest a power command or unit restart may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// A peer that connects and then stalls cannot hold the helper longer than this.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The sections of the root-owned configuration the helper acts on, read once at start: whom
/// documents are for (`[terminal]`), where the host and the trust root are (`[paths]`), what
/// it may run (`[power]`, `[commands]`, `[helper]`) and how large a document may be
/// (`[security]`). The rest of the file is the daemon's.
#[derive(Debug, Clone)]
pub struct Settings {
    pub terminal: config::Terminal,
    pub paths: config::Paths,
    pub power: config::Power,
    pub commands: config::Commands,
    pub helper: config::Helper,
    pub security: config::Security,
}

impl From<Config> for Settings {
    fn from(c: Config) -> Self {
        Self {
            terminal: c.terminal,
            paths: c.paths,
            power: c.power,
            commands: c.commands,
            helper: c.helper,
            security: c.security,
        }
    }
}

/// The helper's state: its settings and the host it acts on.
#[derive(Debug)]
pub struct Helper {
    cfg: Settings,
    host: HostPaths,
    daemon_uid: u32,
    clock: SharedClock,
}

impl Helper {
    /// `daemon_uid` is the only peer served (the uid of `helper.daemon_user`).
    pub fn new(cfg: Settings, daemon_uid: u32, clock: SharedClock) -> Self {
        let host = HostPaths::new(&cfg.paths.root);
        Self {
            cfg,
            host,
            daemon_uid,
            clock,
        }
    }

    /// Serves connections until the listener fails, or, with `idle_exit`, until no connection
    /// came for that long (socket activation: systemd keeps the socket and starts the helper
    /// again on the next request, so an idle terminal has no helper resident at all).
    pub fn serve(
        self: &Arc<Self>,
        listener: &UnixListener,
        idle_exit: Option<Duration>,
    ) -> std::io::Result<()> {
        if let Some(idle) = idle_exit {
            // accept(2) honours the listening socket's receive timeout on Linux.
            let tv =
                nix::sys::time::TimeVal::new(i64::try_from(idle.as_secs()).unwrap_or(i64::MAX), 0);
            nix::sys::socket::setsockopt(listener, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
                .map_err(std::io::Error::from)?;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    // A connection inherits nothing from the listener's timeout: it gets its own.
                    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
                    self.handle_conn(stream);
                }
                Err(e)
                    if idle_exit.is_some()
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    tracing::info!("no request for helper.idle_exit_s; exiting until the next one");
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection: check the peer, read one bounded line, answer it, log both.
    pub fn handle_conn(&self, mut stream: UnixStream) {
        let peer = peer_uid(&stream);
        let (op, reply) = match peer {
            Some(uid) if uid == self.daemon_uid => match read_line(&stream) {
                Ok(line) => match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => {
                        let op = req.op();
                        tracing::info!(peer_uid = uid, op, request = %summary(&req), "helper request");
                        (op, self.handle(req))
                    }
                    Err(e) => (
                        "-",
                        Reply::refuse(codes::MALFORMED, format!("not a helper request: {e}")),
                    ),
                },
                Err(reply) => ("-", reply),
            },
            Some(uid) => (
                "-",
                Reply::refuse(
                    codes::PEER_NOT_ALLOWED,
                    format!("uid {uid} may not use the helper; only the daemon's account may"),
                ),
            ),
            None => (
                "-",
                Reply::refuse(codes::PEER_NOT_ALLOWED, "peer credentials unavailable"),
            ),
        };
        tracing::info!(
            peer_uid = peer.map(i64::from).unwrap_or(-1),
            op,
            ok = reply.ok,
            code = %reply.code,
            message = %reply.message,
            "helper outcome"
        );
        if let Ok(mut line) = serde_json::to_vec(&reply) {
            line.push(b'\n');
            let _ = stream.write_all(&line);
        }
    }

    /// Performs one request of the closed set, after its own checks.
    pub fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Power { action } => self.power(action),
            Request::WakeAlarm { at } => self.wake_alarm(at),
            Request::RestartUnit { unit } => self.restart_unit(&unit),
            Request::Remediate { policy, rule } => self.remediate(&policy, &rule),
            Request::RotateTrust { envelope, target } => self.rotate_trust(&envelope, &target),
            Request::EmptyPasswords {} => self.empty_passwords(),
        }
    }

    fn power(&self, action: PowerAction) -> Reply {
        let p = &self.cfg.power;
        let argv = match action {
            PowerAction::Poweroff => &p.poweroff_cmd,
            PowerAction::Reboot => &p.reboot_cmd,
            PowerAction::DisplayOff => &p.display_off_cmd,
            PowerAction::DisplayOn => &p.display_on_cmd,
        };
        if argv.is_empty() {
            return Reply::refuse(
                codes::NOT_CONFIGURED,
                format!("power.{}_cmd is not configured", action.label()),
            );
        }
        run(argv, action.label())
    }

    fn wake_alarm(&self, at: Option<i64>) -> Reply {
        let at = match at.map(Timestamp::from_second).transpose() {
            Ok(at) => at,
            Err(e) => return Reply::refuse(codes::MALFORMED, format!("wake time: {e}")),
        };
        use crate::power::PowerActions as _;
        let rtc = crate::power::HostActions::new(&self.host, COMMAND_TIMEOUT);
        match rtc.set_wake_alarm(at) {
            Ok(()) => Reply::ok(
                match at {
                    Some(t) => format!("RTC wake alarm set for {}", crate::host::rfc3339(t)),
                    None => "RTC wake alarm cleared".into(),
                },
                json!({"at": at.map(|t| t.as_second())}),
            ),
            Err(e) => Reply::refuse(codes::FAILED, e.to_string()),
        }
    }

    fn restart_unit(&self, unit: &str) -> Reply {
        let listed = self
            .cfg
            .commands
            .restart_units_allowed
            .iter()
            .any(|u| u == unit)
            || self.cfg.helper.app_units_allowed.iter().any(|u| u == unit);
        if !valid_unit_name(unit) || !listed {
            return Reply::refuse(
                codes::UNIT_NOT_ALLOWED,
                format!(
                    "{unit:?} is in neither commands.restart_units_allowed nor helper.app_units_allowed"
                ),
            );
        }
        let mut argv = self.cfg.commands.systemctl.clone();
        argv.extend(["restart".to_string(), unit.to_string()]);
        run(&argv, "restart")
    }

    /// The targets a document for this terminal may carry (PROTOCOL §2 scopes).
    fn accepted_targets(&self) -> Vec<String> {
        let t = &self.cfg.terminal;
        let mut v = vec![format!("t/{}", t.id), "all".to_string()];
        v.extend(t.groups.iter().map(|g| format!("g/{g}")));
        v
    }

    fn keyring(&self) -> Result<Keyring, Reply> {
        Keyring::load(&self.cfg.paths.trust_file)
            .map_err(|e| Reply::refuse(e.code(), e.to_string()))
    }

    fn remediate(&self, policy_b64: &str, rule_id: &str) -> Reply {
        let raw = match STANDARD.decode(policy_b64) {
            Ok(r) => r,
            Err(e) => return Reply::refuse(codes::MALFORMED, format!("policy: not base64: {e}")),
        };
        let keyring = match self.keyring() {
            Ok(k) => k,
            Err(r) => return r,
        };
        let sec = &self.cfg.security;
        // The signature first; only then is the target read from the signed payload.
        let target = match verify_envelope(&raw, Role::Policy, &keyring, sec.max_message_bytes) {
            Ok(v) => serde_json::from_slice::<Value>(v.payload())
                .ok()
                .and_then(|v| v.get("target").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default(),
            Err(e) => return Reply::refuse(e.code(), e.to_string()),
        };
        if !self.accepted_targets().contains(&target) {
            let e = crate::trust::TrustError::WrongTarget {
                expected: format!("t/{}", self.cfg.terminal.id),
                got: target,
            };
            return Reply::refuse(e.code(), e.to_string());
        }
        let verified = match verify_document(
            &raw,
            Role::Policy,
            &target,
            &keyring,
            self.clock.now(),
            sec.clock_skew_s,
            sec.max_message_bytes,
        ) {
            Ok(v) => v,
            Err(e) => return Reply::refuse(e.code(), e.to_string()),
        };
        let policy = match crate::policy::parse(verified.payload()) {
            Ok(p) => p,
            Err(e) => return Reply::refuse("invalid_document", e.to_string()),
        };
        let Some(rule) = policy.rules.iter().find(|r| r.id == rule_id) else {
            return Reply::refuse(
                codes::NOT_IN_POLICY,
                format!("policy version {} has no rule {rule_id:?}", policy.version),
            );
        };
        if !rule.remediate {
            return Reply::refuse(
                codes::NOT_IN_POLICY,
                format!(
                    "rule {rule_id:?} of policy version {} does not ask for remediation",
                    policy.version
                ),
            );
        }
        if !rule.check.can_remediate() {
            return Reply::refuse(
                codes::NO_REMEDIATION,
                format!("rule {rule_id:?}: this check has no remediation"),
            );
        }
        let runner = SystemRunner;
        let ctx = Ctx {
            host: &self.host,
            runner: &runner,
        };
        let before = rule.check.evaluate(&ctx);
        match before.status {
            CheckStatus::Fail => {}
            // The check itself could not look (a path out of the root, a special file): the
            // daemon's engine never asks to remediate such a rule, and neither is done here.
            CheckStatus::Error => {
                let code = if before.message.contains("outside the host root") {
                    codes::OUTSIDE_ROOT
                } else {
                    codes::REFUSED
                };
                return Reply::refuse(
                    code,
                    format!(
                        "rule {rule_id:?} cannot be checked ({}); nothing changed",
                        before.message
                    ),
                );
            }
            _ => {
                return Reply::refuse(
                    codes::COMPLIANT,
                    format!("rule {rule_id:?} does not fail; nothing changed"),
                );
            }
        }
        let mut rem = FsRemediator::new(self.host.clone());
        if !self.cfg.helper.sshd_validator.is_empty() {
            rem = rem.with_sshd_validator(self.cfg.helper.sshd_validator.clone());
        }
        let details = json!({"rule": rule_id, "policy_version": policy.version});
        match rule.check.remediate(&ctx, &rem) {
            Ok(action) => Reply::ok(action, details),
            Err(e) => {
                let code = match &e {
                    RemediateError::OutsideRoot { .. } => codes::OUTSIDE_ROOT,
                    RemediateError::Refused { .. } => codes::REFUSED,
                    RemediateError::Validation { .. } => codes::VALIDATION_FAILED,
                    RemediateError::Unsupported => codes::NO_REMEDIATION,
                    RemediateError::Io { .. } | RemediateError::Write(_) => codes::FAILED,
                };
                Reply {
                    ok: false,
                    code: code.into(),
                    message: e.to_string(),
                    details,
                }
            }
        }
    }

    fn rotate_trust(&self, envelope_b64: &str, target: &str) -> Reply {
        let raw = match STANDARD.decode(envelope_b64) {
            Ok(r) => r,
            Err(e) => return Reply::refuse(codes::MALFORMED, format!("envelope: not base64: {e}")),
        };
        if !self.accepted_targets().iter().any(|t| t == target) {
            let e = crate::trust::TrustError::WrongTarget {
                expected: format!("t/{}", self.cfg.terminal.id),
                got: target.to_string(),
            };
            return Reply::refuse(e.code(), e.to_string());
        }
        let mut store = match TrustStore::load(&self.cfg.paths.trust_file) {
            Ok(s) => s,
            Err(e) => return Reply::refuse(e.code(), e.to_string()),
        };
        let sec = &self.cfg.security;
        match store.rotate(
            &raw,
            self.clock.now(),
            sec.clock_skew_s,
            sec.max_message_bytes,
            target,
        ) {
            Ok(v) => Reply::ok(
                format!("trust root version {v} in force"),
                json!({"version": v}),
            ),
            Err(crate::trust::TrustError::Rollback { have, got }) => Reply {
                ok: false,
                code: "rollback".into(),
                message: format!("version {got} is not newer than {have}"),
                details: json!({"have": have, "got": got}),
            },
            Err(e) => Reply::refuse(e.code(), e.to_string()),
        }
    }

    fn empty_passwords(&self) -> Reply {
        let path = self.host.resolve("/etc/shadow");
        match crate::policy::text::read_text(&path) {
            Ok(t) => {
                let names: Vec<&str> = t
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split(':');
                        let (name, hash) = (f.next()?, f.next()?);
                        (!name.is_empty() && hash.is_empty()).then_some(name)
                    })
                    .collect();
                Reply::ok(
                    format!("{} account(s) with an empty password", names.len()),
                    json!({"empty_password": names}),
                )
            }
            Err(e) => Reply::refuse(codes::FAILED, format!("cannot read /etc/shadow: {e}")),
        }
    }
}

/// The request as logged: what was asked, without bulk (envelopes are summarised by size).
fn summary(req: &Request) -> String {
    match req {
        Request::Power { action } => action.label().to_string(),
        Request::WakeAlarm { at } => format!("at={at:?}"),
        Request::RestartUnit { unit } => unit.clone(),
        Request::Remediate { policy, rule } => format!("rule={rule} policy={}B", policy.len()),
        Request::RotateTrust { envelope, target } => {
            format!("target={target} envelope={}B", envelope.len())
        }
        Request::EmptyPasswords {} => String::new(),
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// One line, at most [`MAX_REQUEST_BYTES`]; a longer one is refused unparsed.
fn read_line(stream: &UnixStream) -> Result<Vec<u8>, Reply> {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut line = Vec::new();
    let n = BufReader::new(stream)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| Reply::refuse(codes::MALFORMED, format!("reading the request: {e}")))?;
    if n > MAX_REQUEST_BYTES {
        return Err(Reply::refuse(
            codes::TOO_LARGE,
            format!("request longer than {MAX_REQUEST_BYTES} bytes; not parsed"),
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(Reply::refuse(
            codes::MALFORMED,
            "request line not terminated",
        ));
    }
    Ok(line)
}

fn run(argv: &[String], label: &str) -> Reply {
    match crate::process::run(argv, COMMAND_TIMEOUT, 4096) {
        Ok(f) if f.success => Reply::ok(
            format!("{label}: {} succeeded", argv.join(" ")),
            json!({"stdout": f.stdout.trim_end()}),
        ),
        Ok(f) => Reply::refuse(
            codes::FAILED,
            format!(
                "{label}: {} failed ({}): {}",
                argv.join(" "),
                f.status,
                f.stderr.trim_end()
            ),
        ),
        Err(e) => Reply::refuse(codes::FAILED, format!("{label}: {e}")),
    }
}
