//! Who may tell a kiosk what to do.
//!
//! Owns the trust root (the keyring of Ed25519 keys, their roles and thresholds), its rotation and
//! atomic persistence, and the verification of every downstream DSSE envelope (docs/protocol.md §2):
//! the bytes as received are checked against the keyring before any document field is read, and
//! the only way to get a [`Verified`] document is through this module. It also checks the fields
//! every signed document shares (`kind`, `target`, `issued_at`, `expires_at`, and a command's `id`).
//!
//! It never keeps version or replay state (the control layer owns "last accepted version" and
//! "command ids seen" and returns [`TrustError::Rollback`] / [`TrustError::Replayed`] itself), never
//! reads the wall clock (the caller passes `now`), never acts on a document, and never touches the
//! network. Signing lives here too, for `kiosk-admin` and tests, so both sides share one PAE.

mod envelope;
mod keyring;
mod verify;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use envelope::{Envelope, EnvelopeSignature, pae, sign_envelope};
pub use keyring::{Keyring, TrustStore, TrustedKey, keyid_of};
pub use verify::{
    CommandFields, DocumentHeader, Verified, VerifiedPayload, verify_document, verify_envelope,
};

/// Default cap on one downstream message. Documents are small JSON; anything near this is an
/// attack or a mistake, and refusing it before parsing keeps memory use on the kiosk bounded.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// Default allowance for a kiosk clock that is off (docs/protocol.md §2, `security.clock_skew_s`).
pub const DEFAULT_CLOCK_SKEW_S: u64 = 300;

/// What a key may sign. Each role is also the `kind` of the documents it signs and names the
/// DSSE `payloadType`, so a policy signature can never be replayed as a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Trust,
    Policy,
    Schedule,
    Catalog,
    App,
    Command,
    /// Signs `cert` documents: the platform's answer to a terminal's certificate request (§9).
    Cert,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Trust,
        Role::Policy,
        Role::Schedule,
        Role::Catalog,
        Role::App,
        Role::Command,
        Role::Cert,
    ];

    /// Roles added after v1: a trust root written for v1 has no threshold for them, and one
    /// key is then enough (the same as every v1 default).
    pub const ADDED_V1_1: [Role; 1] = [Role::Cert];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Trust => "trust",
            Role::Policy => "policy",
            Role::Schedule => "schedule",
            Role::Catalog => "catalog",
            Role::App => "app",
            Role::Command => "command",
            Role::Cert => "cert",
        }
    }

    /// The DSSE `payloadType` a message of this role must carry.
    pub fn payload_type(self) -> String {
        format!("application/vnd.kiosk.{}+json", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the roles of docs/protocol.md §2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?} (expected one of trust, policy, schedule, catalog, app, command, cert)"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Why a downstream message or a trust root was refused. Each security refusal is its own
/// variant so tests and the control layer can tell them apart; [`TrustError::code`] is the
/// stable string that goes on the wire.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("message is larger than the configured size limit; it was not parsed")]
    TooLarge,
    #[error("not a valid DSSE envelope: {0}")]
    Malformed(String),
    #[error(
        "payloadType is {got:?} but this topic takes {expected:?}; sign with the matching --type"
    )]
    WrongType { expected: String, got: String },
    #[error(
        "no signature is from a key in this kiosk's trust root; check the signing key is enrolled"
    )]
    UnknownKey,
    #[error(
        "signatures from trusted keys do not verify over this payload; the message was altered or signed over other bytes"
    )]
    BadSignature,
    #[error(
        "valid signatures only come from keys that do not hold this role; sign with a key that holds it"
    )]
    MissingRole,
    #[error(
        "{have} of the {need} required {role} signatures verify; collect more signatures from distinct keys"
    )]
    BelowThreshold { role: Role, have: u32, need: u32 },
    #[error("document targets {got:?} but arrived for {expected:?}; publish it on its own scope")]
    WrongTarget { expected: String, got: String },
    #[error("document has expired (allowing for clock skew); sign a fresh one")]
    Expired,
    #[error("signed document is not valid: {0}")]
    InvalidDocument(String),
    #[error("a trust key's keyid is not the lowercase hex SHA-256 of its public key; recompute it")]
    KeyidMismatch,
    #[error(
        "version {got} is not newer than version {have} already in force; sign with a higher version"
    )]
    Rollback { have: u64, got: u64 },
    #[error("this command id was already executed; send a new id")]
    Replayed,
    #[error(
        "this terminal's anti-rollback records were lost on {since}; until an operator sends the signed security_reset command only messages signed after that time are accepted"
    )]
    RecordsLost { since: String },
    #[error(
        "the new trust root's own signatures are missing or too few ({detail}); a rotation must be signed by the trust threshold of the current root and of the new root"
    )]
    NewRootUnsigned { detail: String },
    #[error("cannot read trust root {path}: {source}")]
    ReadTrust {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot persist rotated trust root to {path}; the previous root stays in force: {source}"
    )]
    PersistTrust {
        path: PathBuf,
        source: crate::state::StateError,
    },
}

impl TrustError {
    /// Stable short code for events, replies and logs. Never changes meaning once released.
    pub fn code(&self) -> &'static str {
        match self {
            TrustError::TooLarge => "too_large",
            TrustError::Malformed(_) => "bad_envelope",
            TrustError::WrongType { .. } => "wrong_type",
            TrustError::UnknownKey => "unknown_key",
            TrustError::BadSignature => "bad_signature",
            TrustError::MissingRole => "missing_role",
            TrustError::BelowThreshold { .. } => "below_threshold",
            TrustError::WrongTarget { .. } => "wrong_target",
            TrustError::Expired => "expired",
            TrustError::InvalidDocument(_) => "invalid_document",
            TrustError::KeyidMismatch => "keyid_mismatch",
            TrustError::Rollback { .. } => "rollback",
            TrustError::Replayed => "replayed",
            TrustError::RecordsLost { .. } => "records_lost",
            TrustError::NewRootUnsigned { .. } => "new_root_unsigned",
            TrustError::ReadTrust { .. } => "trust_unreadable",
            TrustError::PersistTrust { .. } => "trust_not_persisted",
        }
    }
}

#[cfg(test)]
mod tests;
