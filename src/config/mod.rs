//! The agent's configuration: TOML in, validated `Config` out.
//!
//! Every section rejects unknown keys (a typo must not silently fall back to a default) and
//! validation names the key at fault (`mqtt.url: scheme must be mqtt or mqtts`), because the
//! person reading the error is a technician on site with a text editor. After `load` returns,
//! the rest of the agent may rely on every invariant checked here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod files;
pub use files::check_files;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n  {}", .errors.join("\n  "))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub terminal: Terminal,
    pub mqtt: Mqtt,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub events: Events,
    #[serde(default)]
    pub local: Local,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub power: Power,
    #[serde(default)]
    pub security: Security,
    #[serde(default)]
    pub commands: Commands,
    #[serde(default)]
    pub updates: Updates,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub patrol: Patrol,
    #[serde(default)]
    pub ui: Ui,
    #[serde(default)]
    pub probes: Vec<ProbeConfig>,
    #[serde(default)]
    pub helper: Helper,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    pub url: String,
    pub topic_prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive_s: u64,
    pub reconnect_min_s: u64,
    pub reconnect_max_s: u64,
    pub events_in_flight: usize,
    /// Days before the client certificate's expiry when renewal starts (§9); 0: only on `cert_renew`.
    pub renew_before_days: u64,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            url: String::new(),
            topic_prefix: "kiosk/v1".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            keep_alive_s: 30,
            reconnect_min_s: 1,
            reconnect_max_s: 120,
            events_in_flight: 16,
            renew_before_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub trust_file: PathBuf,
    pub apps_dir: PathBuf,
    pub root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/kiosk-agent".into(),
            socket: "/run/kiosk-agent/kioskctl.sock".into(),
            trust_file: "/etc/kiosk-agent/trust.json".into(),
            apps_dir: "/opt/kiosk/apps".into(),
            root: "/".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub interval_s: u64,
    pub disk_low_pct: f64,
    pub probe_timeout_ms: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            interval_s: 10,
            disk_low_pct: 10.0,
            probe_timeout_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    pub queue_max: usize,
    pub recent: usize,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            queue_max: 10_000,
            recent: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Local {
    pub read_group: String,
    pub admin_group: String,
    /// Open socket connections at most; further ones are refused with `busy`. Also kept below
    /// the process's open-file limit.
    pub max_connections: usize,
    /// A connection that sends no request for this long is closed, unless it holds a
    /// subscription or an inhibitor (those are long-lived by design).
    pub idle_timeout_s: u64,
}

impl Default for Local {
    fn default() -> Self {
        Self {
            read_group: "kiosk-tech".into(),
            admin_group: "kiosk-admin".into(),
            max_connections: 256,
            idle_timeout_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Power {
    pub poweroff_cmd: Vec<String>,
    pub reboot_cmd: Vec<String>,
    pub display_off_cmd: Vec<String>,
    pub display_on_cmd: Vec<String>,
    pub wake_lead_minutes: u64,
    /// Spreads the RTC wake over this many minutes before the wake lead, per terminal id
    /// (PROTOCOL §8); 0 disables.
    pub wake_spread_minutes: u64,
    pub max_inhibit_minutes: u64,
    pub on_low_battery: bool,
    /// This terminal's share of the spread, in seconds: derived from `terminal.id`, never read
    /// from the file.
    #[serde(skip)]
    pub wake_spread_s: u64,
}

impl Default for Power {
    fn default() -> Self {
        Self {
            poweroff_cmd: vec!["systemctl".into(), "poweroff".into()],
            reboot_cmd: vec!["systemctl".into(), "reboot".into()],
            display_off_cmd: vec![],
            display_on_cmd: vec![],
            wake_lead_minutes: 5,
            wake_spread_minutes: 10,
            max_inhibit_minutes: 30,
            on_low_battery: false,
            wake_spread_s: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    pub clock_skew_s: u64,
    pub rejected_events_per_min: u32,
    pub max_message_bytes: usize,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            clock_skew_s: 300,
            rejected_events_per_min: 30,
            max_message_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Commands {
    pub restart_units_allowed: Vec<String>,
    pub systemctl: Vec<String>,
    /// How `logs_upload` reads the journal (argv; the window and filters are appended).
    pub journalctl: Vec<String>,
}

impl Default for Commands {
    fn default() -> Self {
        Self {
            restart_units_allowed: vec![],
            systemctl: vec!["systemctl".into()],
            journalctl: vec!["journalctl".into()],
        }
    }
}

/// The privileged helper (`kiosk-agent-helper`). The daemon reads `socket`: set, every host
/// action that needs root is asked of the helper there; unset, they run in-process (development,
/// tests, a daemon started by hand). The helper reads the rest from this same root-owned file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Helper {
    pub socket: Option<PathBuf>,
    /// The only account whose connections the helper serves (SO_PEERCRED).
    pub daemon_user: String,
    /// Units an application document may have restarted, besides
    /// `commands.restart_units_allowed`: the helper restarts nothing else.
    pub app_units_allowed: Vec<String>,
    /// argv of the sshd syntax check; the candidate file is appended. Empty: `<root>/usr/sbin/sshd -t -f`.
    pub sshd_validator: Vec<String>,
    /// A socket-activated helper exits after this long without a request (0: never).
    pub idle_exit_s: u64,
}

impl Default for Helper {
    fn default() -> Self {
        Self {
            socket: None,
            daemon_user: "kiosk-agent".into(),
            app_units_allowed: vec![],
            sshd_validator: vec![],
            idle_exit_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Updates {
    pub max_kbps: u64,
    pub keep_releases: usize,
    pub ca_file: Option<PathBuf>,
    pub max_unpacked_bytes: u64,
    /// A download attempt that receives nothing for this long fails (and is retried).
    pub download_idle_timeout_s: u64,
    /// Slowest average (bytes per second) accepted once an attempt has run for the idle timeout.
    pub download_min_rate_bps: u64,
    /// Further attempts after a transient failure, each resuming with `Range`.
    pub download_retries: u32,
    /// Pause before the first retry, doubled for each further one (at most 300 s).
    pub download_retry_backoff_s: u64,
}

impl Default for Updates {
    fn default() -> Self {
        Self {
            max_kbps: 0,
            keep_releases: 2,
            ca_file: None,
            max_unpacked_bytes: 4 * 1024 * 1024 * 1024,
            download_idle_timeout_s: 60,
            download_min_rate_bps: 1024,
            download_retries: 3,
            download_retry_backoff_s: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub interval_s: u64,
    /// One check past this is reported as `error` and the scan moves on.
    pub check_timeout_s: u64,
    /// A scan past this reports the rules it has not reached as `error`.
    pub scan_timeout_s: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            interval_s: 3600,
            check_timeout_s: 30,
            scan_timeout_s: 300,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Patrol {
    /// Local time `HH:MM`; unset means 30 minutes before the schedule's next on, else 07:30.
    pub at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ui {
    /// Seconds without a kiosk-screen heartbeat before `ui.unresponsive`; 0 = not watched.
    pub heartbeat_timeout_s: u64,
}

/// One probe as written in the file: a flat record so a typo'd key is refused by name;
/// `validate` checks that the keys the kind needs are present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub id: String,
    pub kind: String,
    #[serde(default = "default_severity")]
    pub severity: String,
    pub vid_pid: Option<String>,
    pub path: Option<PathBuf>,
    pub addr: Option<String>,
    pub unit: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub url: Option<String>,
    pub ups: Option<String>,
    pub timeout_ms: Option<u64>,
}

fn default_severity() -> String {
    "major".into()
}

pub const PROBE_KINDS: &[&str] = &["usb", "path", "tcp", "unit", "exec", "ipp", "nut"];
pub const SEVERITIES: &[&str] = &["critical", "major", "minor", "info"];

/// `[a-z0-9][a-z0-9-]{0,63}`: terminal ids, group names, app names.
pub fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The broker address split out of `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must look like mqtt://host:port or mqtts://host:port")?;
    let tls = match scheme {
        "mqtt" => false,
        "mqtts" => true,
        _ => return Err("scheme must be mqtt or mqtts".into()),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err("must be scheme://host[:port] with no path or credentials".into());
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| "port must be 1-65535")?,
            None if after.is_empty() => default_port,
            None => return Err("unexpected text after IPv6 host".into()),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| "port must be 1-65535")?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("host is missing".into());
    }
    if port == 0 {
        return Err("port must be 1-65535".into());
    }
    Ok(BrokerUrl { tls, host, port })
}

/// Parses `HH:MM` (24h) into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Config {
    /// Reads, parses and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            LoadError::Syntax(message) => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            LoadError::Invalid(errors) => ConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            },
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, LoadError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| LoadError::Syntax(e.to_string()))?;
        cfg.power.wake_spread_s =
            crate::fleet::wake_spread_s(&cfg.terminal.id, cfg.power.wake_spread_minutes);
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(LoadError::Invalid(errors))
        }
    }

    /// Every problem, each prefixed with the key at fault.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.terminal.id.is_empty() {
            e.push("terminal.id: missing (set the terminal id assigned at provisioning)".into());
        } else if !valid_id(&self.terminal.id) {
            e.push(format!(
                "terminal.id: {:?} must match [a-z0-9][a-z0-9-]{{0,63}}",
                self.terminal.id
            ));
        }
        for (i, g) in self.terminal.groups.iter().enumerate() {
            if !valid_id(g) {
                e.push(format!(
                    "terminal.groups[{i}]: {g:?} must match [a-z0-9][a-z0-9-]{{0,63}}"
                ));
            }
        }
        if self.mqtt.url.is_empty() {
            e.push("mqtt.url: missing".into());
        } else {
            match parse_broker_url(&self.mqtt.url) {
                Ok(u) => {
                    if !u.tls
                        && (self.mqtt.ca_file.is_some()
                            || self.mqtt.cert_file.is_some()
                            || self.mqtt.key_file.is_some())
                    {
                        e.push("mqtt.url: ca_file/cert_file/key_file need an mqtts:// url".into());
                    }
                }
                Err(m) => e.push(format!("mqtt.url: {m}")),
            }
        }
        if self.mqtt.cert_file.is_some() != self.mqtt.key_file.is_some() {
            e.push("mqtt.cert_file: cert_file and key_file go together".into());
        }
        let p = &self.mqtt.topic_prefix;
        if p.is_empty()
            || p.starts_with('/')
            || p.ends_with('/')
            || p.contains(['#', '+', '\0'])
            || p.split('/').any(str::is_empty)
        {
            e.push(format!(
                "mqtt.topic_prefix: {p:?} must be non-empty, without MQTT wildcards (+ #), NUL, empty levels or leading/trailing /"
            ));
        }
        if self.mqtt.keep_alive_s < 5 {
            e.push("mqtt.keep_alive_s: must be at least 5".into());
        }
        if self.mqtt.reconnect_min_s == 0 {
            e.push("mqtt.reconnect_min_s: must be greater than 0".into());
        }
        if self.mqtt.reconnect_max_s < self.mqtt.reconnect_min_s {
            e.push("mqtt.reconnect_max_s: must be at least reconnect_min_s".into());
        }
        if self.mqtt.renew_before_days > 3650 {
            e.push("mqtt.renew_before_days: must be at most 3650".into());
        }
        if self.mqtt.events_in_flight == 0 {
            e.push("mqtt.events_in_flight: must be greater than 0".into());
        }
        for (key, path) in [
            ("paths.state_dir", &self.paths.state_dir),
            ("paths.socket", &self.paths.socket),
            ("paths.trust_file", &self.paths.trust_file),
            ("paths.apps_dir", &self.paths.apps_dir),
            ("paths.root", &self.paths.root),
        ] {
            if !path.is_absolute() {
                e.push(format!("{key}: must be an absolute path"));
            }
        }
        if self.health.interval_s == 0 {
            e.push("health.interval_s: must be greater than 0".into());
        }
        if !(0.0..=100.0).contains(&self.health.disk_low_pct) {
            e.push("health.disk_low_pct: must be between 0 and 100".into());
        }
        if self.health.probe_timeout_ms == 0 {
            e.push("health.probe_timeout_ms: must be greater than 0".into());
        }
        if self.events.queue_max < 10 {
            e.push("events.queue_max: must be at least 10".into());
        }
        if self.local.read_group.is_empty() {
            e.push("local.read_group: must not be empty".into());
        }
        if self.local.admin_group.is_empty() {
            e.push("local.admin_group: must not be empty".into());
        }
        if self.local.max_connections == 0 {
            e.push("local.max_connections: must be greater than 0".into());
        }
        if self.local.idle_timeout_s == 0 {
            e.push("local.idle_timeout_s: must be greater than 0".into());
        }
        if self.log.level.parse::<tracing::Level>().is_err() {
            e.push("log.level: must be one of error, warn, info, debug, trace".into());
        }
        for (key, cmd) in [
            ("power.poweroff_cmd", &self.power.poweroff_cmd),
            ("power.reboot_cmd", &self.power.reboot_cmd),
            ("commands.systemctl", &self.commands.systemctl),
        ] {
            if cmd.is_empty() || cmd[0].is_empty() {
                e.push(format!("{key}: must name a program"));
            }
        }
        if self.power.wake_spread_minutes > 24 * 60 {
            e.push("power.wake_spread_minutes: at most 1440 (one day)".into());
        }
        if self.power.max_inhibit_minutes == 0 {
            e.push("power.max_inhibit_minutes: must be greater than 0".into());
        }
        if self.security.rejected_events_per_min == 0 {
            e.push("security.rejected_events_per_min: must be greater than 0".into());
        }
        if self.security.max_message_bytes < 1024 {
            e.push("security.max_message_bytes: must be at least 1024".into());
        }
        for (i, u) in self.helper.app_units_allowed.iter().enumerate() {
            if !crate::policy::remediate::valid_unit_name(u) {
                e.push(format!(
                    "helper.app_units_allowed[{i}]: {u:?} is not a unit name"
                ));
            }
        }
        if self
            .helper
            .socket
            .as_ref()
            .is_some_and(|s| !s.is_absolute())
        {
            e.push("helper.socket: must be an absolute path".into());
        }
        for (i, u) in self.commands.restart_units_allowed.iter().enumerate() {
            if u.is_empty() || u.starts_with('-') || u.contains('/') {
                e.push(format!(
                    "commands.restart_units_allowed[{i}]: {u:?} is not a unit name"
                ));
            }
        }
        if self.updates.download_idle_timeout_s == 0 {
            e.push("updates.download_idle_timeout_s: must be greater than 0".into());
        }
        if self.updates.download_retries > 16 {
            e.push("updates.download_retries: must be at most 16".into());
        }
        if self.updates.keep_releases == 0 {
            e.push("updates.keep_releases: must be at least 1 (the release in force)".into());
        }
        if self.policy.interval_s == 0 {
            e.push("policy.interval_s: must be greater than 0".into());
        }
        if self.policy.check_timeout_s == 0 {
            e.push("policy.check_timeout_s: must be greater than 0".into());
        }
        if self.policy.scan_timeout_s < self.policy.check_timeout_s {
            e.push("policy.scan_timeout_s: must be at least check_timeout_s".into());
        }
        if let Some(at) = &self.patrol.at
            && parse_hhmm(at).is_none()
        {
            e.push(format!("patrol.at: {at:?} must be HH:MM"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, pr) in self.probes.iter().enumerate() {
            let k = format!("probes[{i}]");
            if !valid_id(&pr.id) {
                e.push(format!(
                    "{k}.id: {:?} must match [a-z0-9][a-z0-9-]{{0,63}}",
                    pr.id
                ));
            } else if !seen.insert(pr.id.clone()) {
                e.push(format!("{k}.id: {:?} is used twice", pr.id));
            }
            if !SEVERITIES.contains(&pr.severity.as_str()) {
                e.push(format!(
                    "{k}.severity: {:?} must be one of critical, major, minor, info",
                    pr.severity
                ));
            }
            if pr.timeout_ms == Some(0) {
                e.push(format!("{k}.timeout_ms: must be greater than 0"));
            }
            let need = |field: &str, present: bool, e: &mut Vec<String>| {
                if !present {
                    e.push(format!("{k}.{field}: required for kind {:?}", pr.kind));
                }
            };
            match pr.kind.as_str() {
                "usb" => match &pr.vid_pid {
                    Some(v) if parse_vid_pid(v).is_some() => {}
                    Some(v) => e.push(format!(
                        "{k}.vid_pid: {v:?} must be 4 hex digits:4 hex digits"
                    )),
                    None => need("vid_pid", false, &mut e),
                },
                "path" => need(
                    "path",
                    pr.path.as_ref().is_some_and(|p| p.is_absolute()),
                    &mut e,
                ),
                "tcp" => match &pr.addr {
                    Some(a)
                        if a.rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {}
                    Some(a) => e.push(format!("{k}.addr: {a:?} must be host:port")),
                    None => need("addr", false, &mut e),
                },
                "unit" => need(
                    "unit",
                    pr.unit.as_ref().is_some_and(|u| !u.is_empty()),
                    &mut e,
                ),
                "exec" => need(
                    "cmd",
                    pr.cmd
                        .as_ref()
                        .is_some_and(|c| !c.is_empty() && !c[0].is_empty()),
                    &mut e,
                ),
                "ipp" => match &pr.url {
                    Some(u) if u.starts_with("http://") || u.starts_with("ipp://") => {}
                    Some(u) => e.push(format!("{k}.url: {u:?} must be http:// or ipp://")),
                    None => need("url", false, &mut e),
                },
                "nut" => match &pr.ups {
                    Some(u)
                        if u.split_once('@')
                            .is_some_and(|(n, h)| !n.is_empty() && !h.is_empty()) => {}
                    Some(u) => e.push(format!("{k}.ups: {u:?} must be name@host[:port]")),
                    None => need("ups", false, &mut e),
                },
                other => e.push(format!(
                    "{k}.kind: unknown probe kind {other:?} (expected one of {})",
                    PROBE_KINDS.join(", ")
                )),
            }
        }
        e
    }
}

#[derive(Debug)]
pub enum LoadError {
    Syntax(String),
    Invalid(Vec<String>),
}

/// `0bda:5411` → (0x0bda, 0x5411).
pub fn parse_vid_pid(s: &str) -> Option<(u16, u16)> {
    let (v, p) = s.split_once(':')?;
    if v.len() != 4 || p.len() != 4 {
        return None;
    }
    Some((
        u16::from_str_radix(v, 16).ok()?,
        u16::from_str_radix(p, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[terminal]
id = "sz-ft-0001"
groups = ["futian"]
[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => vec![],
            Err(LoadError::Invalid(e)) => e,
            Err(LoadError::Syntax(s)) => vec![s],
        }
    }

    #[test]
    fn minimum_config_is_valid_with_defaults() {
        let c = Config::from_toml(MIN).unwrap();
        assert_eq!(c.mqtt.topic_prefix, "kiosk/v1");
        assert_eq!(c.health.interval_s, 10);
        assert_eq!(c.paths.root, PathBuf::from("/"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = errors(&MIN.replace("mqtt://", "http://"));
        assert!(
            e.iter()
                .any(|m| m.starts_with("mqtt.url: scheme must be mqtt or mqtts")),
            "{e:?}"
        );
        let e = errors(&MIN.replace("sz-ft-0001", "SZ_FT"));
        assert!(e.iter().any(|m| m.starts_with("terminal.id:")), "{e:?}");
        let e = errors(&format!("{MIN}\n[health]\ninterval_s = 0\n"));
        assert!(
            e.iter().any(|m| m.starts_with("health.interval_s:")),
            "{e:?}"
        );
        let e = errors(&format!(
            "{MIN}\n[[probes]]\nid = \"x\"\nkind = \"laser\"\n"
        ));
        assert!(
            e.iter()
                .any(|m| m.starts_with("probes[0].kind: unknown probe kind")),
            "{e:?}"
        );
        let e = errors(&MIN.replace("id = \"sz-ft-0001\"\n", ""));
        assert!(
            e.iter().any(|m| m.starts_with("terminal.id: missing")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = errors(&format!("{MIN}\n[health]\nintervall_s = 5\n"));
        assert!(e.iter().any(|m| m.contains("intervall_s")), "{e:?}");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtts://broker.example:8884").unwrap(),
            BrokerUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8884
            }
        );
        assert_eq!(parse_broker_url("mqtt://[::1]").unwrap().port, 1883);
        assert!(
            matches!(parse_broker_url("mqtt://host:0"), Err(ref e) if e.contains("port must be 1-65535"))
        );
        assert!(
            matches!(parse_broker_url("mqtt://user@host"), Err(ref e) if e.contains("no path or credentials"))
        );
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("07:30"), Some(450));
        assert_eq!(parse_hhmm("25:00"), None);
        assert_eq!(parse_hhmm("7:30"), None);
    }
}
