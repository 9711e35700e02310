//! The agent's configuration: TOML in, validated `Config` out.
//!
//! Every section rejects unknown keys (a typo must not silently fall back to a default) and
//! every error names the key at fault (`mqtt.url: scheme must be mqtt or mqtts`), because the
//! person reading it is a technician on site with a text editor. Each section checks its own
//! invariants ([`Section`]), so a part handed only its section may rely on them; the few rules
//! that span sections live in [`Config::validate`]. Closed sets (probe kinds, severities, the
//! log level) are enums: an unknown value is refused while parsing, with the allowed values.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::events::Severity;

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
    pub level: LogLevel,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
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
    pub kind: ProbeKind,
    /// The severity of its `probe.failed` event.
    #[serde(default = "default_severity", deserialize_with = "severity")]
    pub severity: Severity,
    pub vid_pid: Option<String>,
    pub path: Option<PathBuf>,
    pub addr: Option<String>,
    pub unit: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub url: Option<String>,
    pub ups: Option<String>,
    pub timeout_ms: Option<u64>,
}

fn default_severity() -> Severity {
    Severity::Major
}

/// The four severities by their canonical names only: event documents also accept the
/// `low`/`medium`/`high` aliases, but a configuration file holds what its example documents.
fn severity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
    const NAMES: [Severity; 4] = [
        Severity::Critical,
        Severity::Major,
        Severity::Minor,
        Severity::Info,
    ];
    let s = String::deserialize(d)?;
    NAMES.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown severity {s:?} (expected one of critical, major, minor, info)"
        ))
    })
}

/// An enum read from one of a fixed list of names; any other name is refused while parsing,
/// the message listing the names (`unknown probe kind "laser" (expected one of usb, ...)`).
macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident, $what:literal, fold_case = $fold:literal,
     { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$(Self::$variant),+];

            /// The name as written in the file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| {
                        if $fold {
                            v.as_str().eq_ignore_ascii_case(s)
                        } else {
                            v.as_str() == s
                        }
                    })
                    .ok_or_else(|| {
                        let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        format!(
                            concat!("unknown ", $what, " {:?} (expected one of {})"),
                            s,
                            names.join(", ")
                        )
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

closed_set!(
    /// What a probe checks (PROTOCOL §3, probes); each kind needs its own keys.
    ProbeKind, "probe kind", fold_case = false, {
        /// A USB `vid_pid` is present under `/sys/bus/usb/devices`.
        Usb = "usb",
        /// A `path` exists.
        Path = "path",
        /// `addr` (`host:port`) accepts a TCP connection.
        Tcp = "tcp",
        /// A systemd `unit` is active.
        Unit = "unit",
        /// `cmd` exits 0.
        Exec = "exec",
        /// An IPP printer at `url`, with its markers.
        Ipp = "ipp",
        /// A UPS (`ups = name@host[:port]`) through upsd.
        Nut = "nut",
    }
);

closed_set!(
    /// `log.level`. Case is not significant (`INFO` has always been accepted).
    LogLevel, "log level", fold_case = true, {
        Error = "error",
        Warn = "warn",
        Info = "info",
        Debug = "debug",
        Trace = "trace",
    }
);

impl ProbeKind {
    /// The key this kind cannot do without.
    pub fn required_key(self) -> &'static str {
        match self {
            Self::Usb => "vid_pid",
            Self::Path => "path",
            Self::Tcp => "addr",
            Self::Unit => "unit",
            Self::Exec => "cmd",
            Self::Ipp => "url",
            Self::Nut => "ups",
        }
    }
}

/// Where one section's problems go, each prefixed with the section's key so the message names
/// the key exactly as written in the file (`health.interval_s: must be greater than 0`).
pub struct Problems<'a> {
    prefix: &'a str,
    out: &'a mut Vec<String>,
}

impl<'a> Problems<'a> {
    pub fn new(prefix: &'a str, out: &'a mut Vec<String>) -> Self {
        Self { prefix, out }
    }

    /// A problem with `key`, relative to the section (`interval_s`, `groups[2]`).
    pub fn at(&mut self, key: impl fmt::Display, message: impl fmt::Display) {
        self.out.push(format!("{}.{key}: {message}", self.prefix));
    }
}

/// A part of the file that checks its own invariants.
pub trait Section {
    fn validate(&self, p: &mut Problems<'_>);
}

const ID_PATTERN: &str = "must match [a-z0-9][a-z0-9-]{0,63}";

impl Section for Terminal {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.id.is_empty() {
            p.at(
                "id",
                "missing (set the terminal id assigned at provisioning)",
            );
        } else if !valid_id(&self.id) {
            p.at("id", format!("{:?} {ID_PATTERN}", self.id));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_id(g) {
                p.at(format!("groups[{i}]"), format!("{g:?} {ID_PATTERN}"));
            }
        }
    }
}

impl Section for Mqtt {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.url.is_empty() {
            p.at("url", "missing");
        } else {
            match parse_broker_url(&self.url) {
                Ok(u) => {
                    if !u.tls
                        && (self.ca_file.is_some()
                            || self.cert_file.is_some()
                            || self.key_file.is_some())
                    {
                        p.at("url", "ca_file/cert_file/key_file need an mqtts:// url");
                    }
                }
                Err(m) => p.at("url", m),
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.at("cert_file", "cert_file and key_file go together");
        }
        let t = &self.topic_prefix;
        if t.is_empty()
            || t.starts_with('/')
            || t.ends_with('/')
            || t.contains(['#', '+', '\0'])
            || t.split('/').any(str::is_empty)
        {
            p.at(
                "topic_prefix",
                format!(
                    "{t:?} must be non-empty, without MQTT wildcards (+ #), NUL, empty levels or leading/trailing /"
                ),
            );
        }
        if self.keep_alive_s < 5 {
            p.at("keep_alive_s", "must be at least 5");
        }
        if self.reconnect_min_s == 0 {
            p.at("reconnect_min_s", "must be greater than 0");
        }
        if self.reconnect_max_s < self.reconnect_min_s {
            p.at("reconnect_max_s", "must be at least reconnect_min_s");
        }
        if self.renew_before_days > 3650 {
            p.at("renew_before_days", "must be at most 3650");
        }
        if self.events_in_flight == 0 {
            p.at("events_in_flight", "must be greater than 0");
        }
    }
}

impl Section for Paths {
    fn validate(&self, p: &mut Problems<'_>) {
        for (key, path) in [
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("trust_file", &self.trust_file),
            ("apps_dir", &self.apps_dir),
            ("root", &self.root),
        ] {
            if !path.is_absolute() {
                p.at(key, "must be an absolute path");
            }
        }
    }
}

impl Section for Health {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.interval_s == 0 {
            p.at("interval_s", "must be greater than 0");
        }
        if !(0.0..=100.0).contains(&self.disk_low_pct) {
            p.at("disk_low_pct", "must be between 0 and 100");
        }
        if self.probe_timeout_ms == 0 {
            p.at("probe_timeout_ms", "must be greater than 0");
        }
    }
}

impl Section for Events {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.queue_max < 10 {
            p.at("queue_max", "must be at least 10");
        }
    }
}

impl Section for Local {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.read_group.is_empty() {
            p.at("read_group", "must not be empty");
        }
        if self.admin_group.is_empty() {
            p.at("admin_group", "must not be empty");
        }
        if self.max_connections == 0 {
            p.at("max_connections", "must be greater than 0");
        }
        if self.idle_timeout_s == 0 {
            p.at("idle_timeout_s", "must be greater than 0");
        }
    }
}

impl Section for Log {
    /// `level` is an enum: a bad one is refused while parsing.
    fn validate(&self, _: &mut Problems<'_>) {}
}

/// An argv whose program is named.
fn names_program(cmd: &[String]) -> bool {
    cmd.first().is_some_and(|p| !p.is_empty())
}

impl Section for Power {
    fn validate(&self, p: &mut Problems<'_>) {
        for (key, cmd) in [
            ("poweroff_cmd", &self.poweroff_cmd),
            ("reboot_cmd", &self.reboot_cmd),
        ] {
            if !names_program(cmd) {
                p.at(key, "must name a program");
            }
        }
        if self.wake_spread_minutes > 24 * 60 {
            p.at("wake_spread_minutes", "at most 1440 (one day)");
        }
        if self.max_inhibit_minutes == 0 {
            p.at("max_inhibit_minutes", "must be greater than 0");
        }
    }
}

impl Section for Security {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.rejected_events_per_min == 0 {
            p.at("rejected_events_per_min", "must be greater than 0");
        }
        if self.max_message_bytes < 1024 {
            p.at("max_message_bytes", "must be at least 1024");
        }
    }
}

impl Section for Commands {
    fn validate(&self, p: &mut Problems<'_>) {
        if !names_program(&self.systemctl) {
            p.at("systemctl", "must name a program");
        }
        for (i, u) in self.restart_units_allowed.iter().enumerate() {
            if u.is_empty() || u.starts_with('-') || u.contains('/') {
                p.at(
                    format!("restart_units_allowed[{i}]"),
                    format!("{u:?} is not a unit name"),
                );
            }
        }
    }
}

impl Section for Helper {
    fn validate(&self, p: &mut Problems<'_>) {
        for (i, u) in self.app_units_allowed.iter().enumerate() {
            if !crate::policy::remediate::valid_unit_name(u) {
                p.at(
                    format!("app_units_allowed[{i}]"),
                    format!("{u:?} is not a unit name"),
                );
            }
        }
        if self.socket.as_ref().is_some_and(|s| !s.is_absolute()) {
            p.at("socket", "must be an absolute path");
        }
    }
}

impl Section for Updates {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.download_idle_timeout_s == 0 {
            p.at("download_idle_timeout_s", "must be greater than 0");
        }
        if self.download_retries > 16 {
            p.at("download_retries", "must be at most 16");
        }
        if self.keep_releases == 0 {
            p.at("keep_releases", "must be at least 1 (the release in force)");
        }
    }
}

impl Section for Policy {
    fn validate(&self, p: &mut Problems<'_>) {
        if self.interval_s == 0 {
            p.at("interval_s", "must be greater than 0");
        }
        if self.check_timeout_s == 0 {
            p.at("check_timeout_s", "must be greater than 0");
        }
        if self.scan_timeout_s < self.check_timeout_s {
            p.at("scan_timeout_s", "must be at least check_timeout_s");
        }
    }
}

impl Section for Patrol {
    fn validate(&self, p: &mut Problems<'_>) {
        if let Some(at) = &self.at
            && parse_hhmm(at).is_none()
        {
            p.at("at", format!("{at:?} must be HH:MM"));
        }
    }
}

impl Section for Ui {
    /// Every value is meaningful (0: not watched).
    fn validate(&self, _: &mut Problems<'_>) {}
}

impl Section for ProbeConfig {
    /// One probe on its own; that ids are unique is checked over the list.
    fn validate(&self, p: &mut Problems<'_>) {
        if !valid_id(&self.id) {
            p.at("id", format!("{:?} {ID_PATTERN}", self.id));
        }
        if self.timeout_ms == Some(0) {
            p.at("timeout_ms", "must be greater than 0");
        }
        let key = self.kind.required_key();
        let missing = format!("required for kind {:?}", self.kind.as_str());
        match self.kind {
            ProbeKind::Usb => match &self.vid_pid {
                Some(v) if parse_vid_pid(v).is_some() => {}
                Some(v) => p.at(key, format!("{v:?} must be 4 hex digits:4 hex digits")),
                None => p.at(key, missing),
            },
            ProbeKind::Path => {
                if !self.path.as_ref().is_some_and(|x| x.is_absolute()) {
                    p.at(key, missing);
                }
            }
            ProbeKind::Tcp => match &self.addr {
                Some(a)
                    if a.rsplit_once(':')
                        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok()) => {}
                Some(a) => p.at(key, format!("{a:?} must be host:port")),
                None => p.at(key, missing),
            },
            ProbeKind::Unit => {
                if self.unit.as_ref().is_none_or(|u| u.is_empty()) {
                    p.at(key, missing);
                }
            }
            ProbeKind::Exec => {
                if !self.cmd.as_deref().is_some_and(names_program) {
                    p.at(key, missing);
                }
            }
            ProbeKind::Ipp => match &self.url {
                Some(u) if u.starts_with("http://") || u.starts_with("ipp://") => {}
                Some(u) => p.at(key, format!("{u:?} must be http:// or ipp://")),
                None => p.at(key, missing),
            },
            ProbeKind::Nut => match &self.ups {
                Some(u)
                    if u.split_once('@')
                        .is_some_and(|(n, h)| !n.is_empty() && !h.is_empty()) => {}
                Some(u) => p.at(key, format!("{u:?} must be name@host[:port]")),
                None => p.at(key, missing),
            },
        }
    }
}

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
        let mut cfg = parse(text).map_err(LoadError::Syntax)?;
        cfg.power.wake_spread_s =
            crate::fleet::wake_spread_s(&cfg.terminal.id, cfg.power.wake_spread_minutes);
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(LoadError::Invalid(errors))
        }
    }

    /// Every problem, each prefixed with the key at fault: each section's own, then the rules
    /// that span entries.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        let sections: [(&str, &dyn Section); 15] = [
            ("terminal", &self.terminal),
            ("mqtt", &self.mqtt),
            ("paths", &self.paths),
            ("health", &self.health),
            ("events", &self.events),
            ("local", &self.local),
            ("log", &self.log),
            ("power", &self.power),
            ("security", &self.security),
            ("commands", &self.commands),
            ("helper", &self.helper),
            ("updates", &self.updates),
            ("policy", &self.policy),
            ("patrol", &self.patrol),
            ("ui", &self.ui),
        ];
        for (key, section) in sections {
            section.validate(&mut Problems::new(key, &mut e));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, probe) in self.probes.iter().enumerate() {
            let key = format!("probes[{i}]");
            probe.validate(&mut Problems::new(&key, &mut e));
            // A probe's id names it in results and events: one probe per id.
            if valid_id(&probe.id) && !seen.insert(probe.id.as_str()) {
                e.push(format!("{key}.id: {:?} is used twice", probe.id));
            }
        }
        e
    }
}

/// Parses the file. A value of the wrong type, an unknown key or an unknown name in a closed
/// set is reported with the full key path and the position
/// (`probes[1].kind: unknown probe kind "laser" (expected one of usb, ...) at line 30, column 8`);
/// toml alone would show the line but not which probe or section it belongs to.
fn parse(text: &str) -> Result<Config, String> {
    let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .span()
            // A span over the whole document (a missing section) says nothing.
            .filter(|s| s.start > 0 || path != ".")
            .map(|s| {
                let before = text.get(..s.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = before[line_start..].chars().count() + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        if path == "." {
            format!("{}{at}", inner.message())
        } else {
            format!("{path}: {}{at}", inner.message())
        }
    })
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
    fn closed_sets_are_refused_while_parsing_with_the_key_and_the_names() {
        let probe = |extra: &str| {
            format!(
                "{MIN}\n[[probes]]\nid = \"x\"\nkind = \"unit\"\nunit = \"a.service\"\n[[probes]]\nid = \"y\"\n{extra}\n"
            )
        };
        assert_eq!(
            errors(&probe("kind = \"laser\"")),
            [
                "probes[1].kind: unknown probe kind \"laser\" (expected one of usb, path, tcp, unit, exec, ipp, nut) at line 14, column 8"
            ]
        );
        // Event documents accept `high`; a configuration file only the canonical names.
        assert_eq!(
            errors(&probe(
                "kind = \"tcp\"\naddr = \"h:1\"\nseverity = \"high\""
            )),
            [
                "probes[1].severity: unknown severity \"high\" (expected one of critical, major, minor, info) at line 16, column 12"
            ]
        );
        assert_eq!(
            errors(&format!("{MIN}[log]\nlevel = \"loud\"\n")),
            [
                "log.level: unknown log level \"loud\" (expected one of error, warn, info, debug, trace) at line 8, column 9"
            ]
        );
        // A kind in upper case is no kind; the log level never cared about case.
        assert!(
            errors(&probe("kind = \"USB\"\nvid_pid = \"0bda:5411\""))[0]
                .starts_with("probes[1].kind: unknown probe kind \"USB\"")
        );
        let c = Config::from_toml(&format!("{MIN}[log]\nlevel = \"DEBUG\"\n")).unwrap();
        assert_eq!(c.log.level, LogLevel::Debug);
        let c = Config::from_toml(&probe(
            "kind = \"nut\"\nups = \"ups@localhost\"\nseverity = \"critical\"",
        ))
        .unwrap();
        assert_eq!(
            (c.probes[0].kind, c.probes[0].severity),
            (ProbeKind::Unit, Severity::Major)
        );
        assert_eq!(
            (c.probes[1].kind, c.probes[1].severity),
            (ProbeKind::Nut, Severity::Critical)
        );
        assert_eq!(Config::from_toml(MIN).unwrap().log.level, LogLevel::Info);
    }

    #[test]
    fn parse_errors_name_the_full_key_and_the_line() {
        // Bad TOML itself keeps toml's own report, which shows the line.
        let e = errors(&format!("{MIN}[mqtt]\n"));
        assert!(
            e.len() == 1
                && e[0].starts_with("TOML parse error at line 7, column 2\n")
                && e[0].contains("7 | [mqtt]")
                && e[0].contains("duplicate key"),
            "{e:?}"
        );
        assert_eq!(errors("[terminal]\nid = \"a\"\n"), ["missing field `mqtt`"]);
        assert_eq!(
            errors(&format!("{MIN}[mqtt.x]\n")),
            [
                "mqtt.x: unknown field `x`, expected one of `url`, `topic_prefix`, `ca_file`, `cert_file`, `key_file`, `username`, `password_file`, `keep_alive_s`, `reconnect_min_s`, `reconnect_max_s`, `events_in_flight`, `renew_before_days` at line 7, column 7"
            ]
        );
    }

    #[test]
    fn a_section_checks_itself_under_its_own_key() {
        let mut e = Vec::new();
        let health = Health {
            interval_s: 0,
            disk_low_pct: 101.0,
            ..Health::default()
        };
        health.validate(&mut Problems::new("health", &mut e));
        assert_eq!(
            e,
            [
                "health.interval_s: must be greater than 0",
                "health.disk_low_pct: must be between 0 and 100"
            ]
        );
        let mut e = Vec::new();
        let policy = Policy {
            check_timeout_s: 60,
            scan_timeout_s: 30,
            ..Policy::default()
        };
        policy.validate(&mut Problems::new("policy", &mut e));
        assert_eq!(
            e,
            ["policy.scan_timeout_s: must be at least check_timeout_s"]
        );
        let mut e = Vec::new();
        Health::default().validate(&mut Problems::new("health", &mut e));
        Policy::default().validate(&mut Problems::new("policy", &mut e));
        Power::default().validate(&mut Problems::new("power", &mut e));
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn every_problem_of_every_section_is_reported_at_once() {
        let text = format!(
            "{MIN}[health]\ninterval_s = 0\n[power]\nreboot_cmd = []\n[commands]\nsystemctl = [\"\"]\n[policy]\ninterval_s = 0\n\
             [[probes]]\nid = \"cam\"\nkind = \"usb\"\nvid_pid = \"0bda\"\n[[probes]]\nid = \"cam\"\nkind = \"exec\"\n"
        );
        assert_eq!(
            errors(&text),
            [
                "health.interval_s: must be greater than 0",
                "power.reboot_cmd: must name a program",
                "commands.systemctl: must name a program",
                "policy.interval_s: must be greater than 0",
                "probes[0].vid_pid: \"0bda\" must be 4 hex digits:4 hex digits",
                "probes[1].cmd: required for kind \"exec\"",
                "probes[1].id: \"cam\" is used twice",
            ]
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = errors(&format!("{MIN}\n[health]\nintervall_s = 5\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("health.intervall_s: unknown field `intervall_s`, expected one of"),
            "{e:?}"
        );
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
