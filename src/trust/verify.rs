//! From bytes as received to a [`Verified`] document: signatures first, fields second.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::{SignedDuration, Timestamp};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Envelope, Keyring, Role, TrustError};

/// Longest command id the agent keeps in its replay record (docs/protocol.md §5).
const MAX_COMMAND_ID_CHARS: usize = 64;

/// A payload whose envelope met the role's threshold. Only this module builds one, so holding
/// one proves the check happened; its fields have not been interpreted yet.
#[derive(Debug, Clone)]
pub struct VerifiedPayload {
    role: Role,
    payload: Vec<u8>,
    signers: Vec<String>,
}

impl VerifiedPayload {
    pub fn role(&self) -> Role {
        self.role
    }

    /// The payload bytes exactly as signed.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Keyids of the trusted keys holding the role whose signatures verified, for audit logs.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }

    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

/// The fields of a command document (docs/protocol.md §5).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandFields {
    pub id: String,
    pub name: String,
    pub args: Map<String, Value>,
}

/// The fields every signed document shares (docs/protocol.md §2, "Common document fields").
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentHeader {
    pub kind: Role,
    /// `None` only for commands, which are identified by `command.id` instead.
    pub version: Option<u64>,
    pub target: String,
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// `Some` exactly when `kind` is `command`.
    pub command: Option<CommandFields>,
}

/// A document that is signed by enough trusted keys, is of the expected kind, is addressed to
/// the scope it arrived on and has not expired. Private fields and no public constructor: the
/// rest of the agent can only get one from [`verify_document`].
#[derive(Debug, Clone)]
pub struct Verified {
    header: DocumentHeader,
    payload: Vec<u8>,
    value: Value,
    signers: Vec<String>,
}

impl Verified {
    /// The payload bytes, for a caller that keeps them after the header has been read.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    pub fn header(&self) -> &DocumentHeader {
        &self.header
    }

    pub fn role(&self) -> Role {
        self.header.kind
    }

    /// The payload bytes exactly as signed (the catalog writes these to disk unchanged).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn version(&self) -> Option<u64> {
        self.header.version
    }

    pub fn target(&self) -> &str {
        &self.header.target
    }

    pub fn issued_at(&self) -> Timestamp {
        self.header.issued_at
    }

    pub fn expires_at(&self) -> Option<Timestamp> {
        self.header.expires_at
    }

    pub fn command(&self) -> Option<&CommandFields> {
        self.header.command.as_ref()
    }

    pub fn signers(&self) -> &[String] {
        &self.signers
    }

    /// Reads the body into a capability's own type; a mismatch is an invalid document.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, TrustError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| TrustError::InvalidDocument(format!("{} document: {e}", self.role())))
    }
}

/// Checks the envelope's type and that `threshold[role]` distinct trusted keys holding `role`
/// signed its PAE. Unknown keyids and bad signatures are skipped, not fatal; when the threshold
/// is not met the error says why in the most useful terms for the operator.
pub fn verify_envelope(
    raw: &[u8],
    role: Role,
    keyring: &Keyring,
    max_bytes: usize,
) -> Result<VerifiedPayload, TrustError> {
    let env = Envelope::parse(raw, max_bytes)?;
    let expected = role.payload_type();
    if env.payload_type != expected {
        return Err(TrustError::WrongType {
            expected,
            got: env.payload_type,
        });
    }
    let message = env.pae();
    let need = keyring.threshold(role);
    let mut counted: BTreeSet<&str> = BTreeSet::new();
    let mut valid_without_role: BTreeSet<&str> = BTreeSet::new();
    let (mut unknown, mut bad) = (0usize, 0usize);
    for s in &env.signatures {
        let keyid = s.keyid.as_str();
        let Some(key) = keyring.key(keyid) else {
            unknown += 1;
            continue;
        };
        if counted.contains(keyid) || valid_without_role.contains(keyid) {
            continue;
        }
        let verifies = STANDARD.decode(s.sig.as_bytes()).ok().is_some_and(|sig| {
            UnparsedPublicKey::new(&ED25519, key.public_key())
                .verify(&message, &sig)
                .is_ok()
        });
        if !verifies {
            bad += 1;
        } else if key.holds(role) {
            counted.insert(keyid);
            if counted.len() >= need as usize {
                break;
            }
        } else {
            valid_without_role.insert(keyid);
        }
    }
    let have = u32::try_from(counted.len()).unwrap_or(u32::MAX);
    if have >= need {
        let signers = counted.into_iter().map(str::to_string).collect();
        return Ok(VerifiedPayload {
            role,
            payload: env.payload,
            signers,
        });
    }
    Err(if have > 0 {
        TrustError::BelowThreshold { role, have, need }
    } else if !valid_without_role.is_empty() {
        TrustError::MissingRole
    } else if bad > 0 {
        TrustError::BadSignature
    } else if unknown > 0 {
        TrustError::UnknownKey
    } else {
        TrustError::BelowThreshold { role, have, need }
    })
}

/// Verifies the envelope, then the common document fields: `kind` is the role, `target` is the
/// scope the message arrived on, and it is not past `expires_at` (plus `clock_skew_s`).
/// Version and replay are the caller's (it keeps the state); everything else is checked here.
pub fn verify_document(
    raw: &[u8],
    role: Role,
    expected_target: &str,
    keyring: &Keyring,
    now: Timestamp,
    clock_skew_s: u64,
    max_bytes: usize,
) -> Result<Verified, TrustError> {
    let verified = verify_envelope(raw, role, keyring, max_bytes)?;
    let value: Value = serde_json::from_slice(verified.payload())
        .map_err(|e| TrustError::InvalidDocument(format!("payload is not JSON: {e}")))?;
    let header = parse_header(&value, role)?;
    crate::limits::strings("", &value, crate::limits::DOC_STRING_CHARS).map_err(invalid)?;
    if header.target != expected_target {
        return Err(TrustError::WrongTarget {
            expected: expected_target.to_string(),
            got: header.target,
        });
    }
    if let Some(expires_at) = header.expires_at {
        if is_expired(expires_at, now, clock_skew_s) {
            return Err(TrustError::Expired);
        }
    }
    Ok(Verified {
        header,
        signers: verified.signers,
        payload: verified.payload,
        value,
    })
}

fn is_expired(expires_at: Timestamp, now: Timestamp, clock_skew_s: u64) -> bool {
    let skew = SignedDuration::from_secs(i64::try_from(clock_skew_s).unwrap_or(i64::MAX));
    match expires_at.checked_add(skew) {
        Ok(limit) => now > limit,
        // Beyond the representable range: that far in the future is not expired.
        Err(_) => false,
    }
}

fn invalid(msg: impl Into<String>) -> TrustError {
    TrustError::InvalidDocument(msg.into())
}

fn parse_header(value: &Value, role: Role) -> Result<DocumentHeader, TrustError> {
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("payload is not a JSON object"))?;
    let kind = required_str(obj, "kind")?;
    if kind != role.as_str() {
        return Err(invalid(format!(
            "kind is {kind:?} but the envelope is signed as {role}"
        )));
    }
    let version = match obj.get("version") {
        None if role == Role::Command => None,
        None => return Err(invalid("version is missing")),
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| invalid("version is not an unsigned integer"))?,
        ),
    };
    let target = required_str(obj, "target")?.to_string();
    let issued_at = required_time(obj, "issued_at")?;
    let expires_at = match obj.get("expires_at") {
        None | Some(Value::Null) if role == Role::Command => {
            return Err(invalid("a command needs expires_at"));
        }
        None | Some(Value::Null) => None,
        Some(_) => Some(required_time(obj, "expires_at")?),
    };
    let command = if role == Role::Command {
        Some(parse_command(obj)?)
    } else {
        None
    };
    Ok(DocumentHeader {
        kind: role,
        version,
        target,
        issued_at,
        expires_at,
        command,
    })
}

fn parse_command(obj: &Map<String, Value>) -> Result<CommandFields, TrustError> {
    let id = required_str(obj, "id")?;
    if id.is_empty() || id.chars().count() > MAX_COMMAND_ID_CHARS {
        return Err(invalid(format!(
            "command id must be 1 to {MAX_COMMAND_ID_CHARS} characters"
        )));
    }
    let name = required_str(obj, "name")?;
    if name.is_empty() {
        return Err(invalid("command name is empty"));
    }
    let args = match obj.get("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("command args is not an object")),
    };
    Ok(CommandFields {
        id: id.to_string(),
        name: name.to_string(),
        args,
    })
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, TrustError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("{field} is not a string"))),
        None => Err(invalid(format!("{field} is missing"))),
    }
}

fn required_time(obj: &Map<String, Value>, field: &str) -> Result<Timestamp, TrustError> {
    let s = required_str(obj, field)?;
    crate::host::parse_time(s)
        .ok_or_else(|| invalid(format!("{field} is not an RFC 3339 time: {s:?}")))
}
