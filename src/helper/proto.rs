//! The helper's wire format: one JSON request line in, one JSON reply line out, then the
//! connection closes. The request set is closed (an unknown `op` or field is refused before
//! anything runs) and names *what* to do, never *how*: no argv, no shell, no free path.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line accepted, newline included. A policy envelope (at most
/// `security.max_message_bytes`, 1 MiB by default) in base64 fits; anything longer is refused
/// without being parsed.
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// The power actions the schedule and commands take; the helper runs its own configured argv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Poweroff,
    Reboot,
    DisplayOff,
    DisplayOn,
}

impl PowerAction {
    pub fn from_label(label: &str) -> Option<Self> {
        Some(match label {
            "poweroff" => Self::Poweroff,
            "reboot" => Self::Reboot,
            "display_off" => Self::DisplayOff,
            "display_on" => Self::DisplayOn,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::DisplayOff => "display_off",
            Self::DisplayOn => "display_on",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Runs the configured `power.*_cmd` for this action.
    Power { action: PowerAction },
    /// Arms the RTC wake alarm at `at` (Unix seconds), or disarms it with `null`.
    WakeAlarm { at: Option<i64> },
    /// Restarts a unit listed in `commands.restart_units_allowed` or `helper.app_units_allowed`.
    RestartUnit { unit: String },
    /// Applies the remediation of rule `rule` of the signed policy `policy` (the DSSE envelope
    /// exactly as received, base64). The helper verifies the envelope itself.
    Remediate { policy: String, rule: String },
    /// Puts a signed `desired/trust` rotation in force (the envelope as received, base64) for
    /// `target` (`t/{id}`, `g/{group}` or `all`).
    RotateTrust { envelope: String, target: String },
    /// The accounts rule's root-only half: which accounts in `/etc/shadow` have an empty hash.
    /// Only names come back, never hashes.
    EmptyPasswords {},
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Power { .. } => "power",
            Request::WakeAlarm { .. } => "wake_alarm",
            Request::RestartUnit { .. } => "restart_unit",
            Request::Remediate { .. } => "remediate",
            Request::RotateTrust { .. } => "rotate_trust",
            Request::EmptyPasswords {} => "empty_passwords",
        }
    }
}

/// The outcome. `code` is stable: `ok`, or the refusal/failure (see [`codes`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl Reply {
    pub fn ok(message: impl Into<String>, details: Value) -> Self {
        Self {
            ok: true,
            code: codes::OK.into(),
            message: message.into(),
            details,
        }
    }

    pub fn refuse(code: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            code: code.into(),
            message: message.into(),
            details: Value::Null,
        }
    }
}

/// Stable reply codes. Trust refusals use [`crate::trust::TrustError::code`] unchanged
/// (`bad_signature`, `unknown_key`, `wrong_target`, `expired`, ...).
pub mod codes {
    pub const OK: &str = "ok";
    /// The peer is not the daemon's account.
    pub const PEER_NOT_ALLOWED: &str = "peer_not_allowed";
    /// Not a request of the closed set (bad JSON, unknown op or field, bad base64).
    pub const MALFORMED: &str = "malformed";
    /// The request line is longer than [`super::MAX_REQUEST_BYTES`].
    pub const TOO_LARGE: &str = "too_large";
    pub const UNIT_NOT_ALLOWED: &str = "unit_not_allowed";
    /// The signed policy has no such rule, or does not ask for its remediation.
    pub const NOT_IN_POLICY: &str = "not_in_policy";
    /// The rule's check type has no remediation.
    pub const NO_REMEDIATION: &str = "no_remediation";
    /// The rule passes: nothing was changed.
    pub const COMPLIANT: &str = "compliant";
    /// A remediation path resolves outside `paths.root` (also through a symlink).
    pub const OUTSIDE_ROOT: &str = "outside_root";
    /// The remediation refused the target (not a regular file, dangling link, bad key...).
    pub const REFUSED: &str = "refused";
    /// The candidate file failed its syntax check (`sshd -t`); the original is kept.
    pub const VALIDATION_FAILED: &str = "validation_failed";
    pub const NOT_CONFIGURED: &str = "not_configured";
    /// The action ran and failed (command exit status, I/O error).
    pub const FAILED: &str = "failed";
    /// The helper could not be reached or answered nonsense (daemon side only).
    pub const UNAVAILABLE: &str = "helper_unavailable";
}
