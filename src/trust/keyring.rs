//! The trust root: which keys may sign which roles, how many must agree, and how the root is
//! replaced by a newer one without ever leaving the kiosk without a usable root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use serde::Deserialize;

use super::{Role, TrustError, verify_document, verify_envelope};

/// The keyid of a raw Ed25519 public key: lowercase hex SHA-256, so a keyid can be checked
/// against its key rather than taken on faith.
pub fn keyid_of(raw_public_key: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, raw_public_key))
}

#[derive(Deserialize)]
struct TrustDoc {
    kind: String,
    version: u64,
    keys: Vec<KeyEntry>,
    thresholds: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct KeyEntry {
    keyid: String,
    public_key: String,
    roles: Vec<String>,
}

/// One key of the root and the roles it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    public_key: [u8; 32],
    roles: BTreeSet<Role>,
}

impl TrustedKey {
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    pub fn holds(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A validated trust root. It keeps the exact bytes it was read from so saving it writes back
/// what was signed, not a re-serialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    version: u64,
    keys: BTreeMap<String, TrustedKey>,
    thresholds: BTreeMap<Role, u32>,
    document: Vec<u8>,
}

impl Keyring {
    /// Parses and validates a trust document (docs/protocol.md §2). Fields other than those of the
    /// trust root (`target`, `issued_at`, …) are allowed, so a rotated root's signed payload
    /// is itself a valid trust file. Unknown role names are refused: a typo in a root would
    /// otherwise silently change who may sign what.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        if !crate::limits::is_object_text(bytes) {
            return Err(TrustError::InvalidDocument(
                "trust document: not a JSON object".into(),
            ));
        }
        let doc: TrustDoc = serde_json::from_slice(bytes)
            .map_err(|e| TrustError::InvalidDocument(format!("trust document: {e}")))?;
        if doc.kind != "trust" {
            return Err(TrustError::InvalidDocument(format!(
                "trust document has kind {:?}, expected \"trust\"",
                doc.kind
            )));
        }
        let keys = parse_keys(doc.keys)?;
        let explicit: BTreeSet<String> = doc.thresholds.keys().cloned().collect();
        let thresholds = parse_thresholds(doc.thresholds)?;
        for (role, need) in &thresholds {
            let holders = keys.values().filter(|k| k.holds(*role)).count();
            // A v1 root names no threshold for a later role: no key may sign it, which is
            // how a v1 terminal behaves.
            let implied = !explicit.contains(role.as_str());
            if holders < *need as usize && !(implied && holders == 0) {
                return Err(TrustError::InvalidDocument(format!(
                    "threshold for {role} is {need} but only {holders} key(s) hold that role"
                )));
            }
        }
        Ok(Keyring {
            version: doc.version,
            keys,
            thresholds,
            document: bytes.to_vec(),
        })
    }

    /// Reads the provisioned trust file (`paths.trust_file`).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::ReadTrust {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Writes the document atomically, keeping the mode of the file it replaces, so a power cut
    /// leaves either the old root or the new one on disk.
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        crate::state::write_atomic(path, &self.document, None).map_err(|source| {
            TrustError::PersistTrust {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many distinct keys holding `role` must sign. Validation guarantees every role has one.
    pub fn threshold(&self, role: Role) -> u32 {
        self.thresholds.get(&role).copied().unwrap_or(u32::MAX)
    }

    pub fn key(&self, keyid: &str) -> Option<&TrustedKey> {
        self.keys.get(keyid)
    }

    pub fn keyids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The trust document exactly as read or as signed.
    pub fn document_bytes(&self) -> &[u8] {
        &self.document
    }

    /// Checks a `desired/trust` envelope and returns the new root and the bytes to persist.
    /// The current root's `trust` threshold must sign it (no one else may replace the root), the
    /// new root's own `trust` threshold must sign it too (the new keys are proven to work before
    /// the kiosk depends on them), and its version must be higher (an old root cannot be
    /// replayed to bring back a retired key). An equal version is reported as `Rollback` with
    /// `have == got`, which the caller may treat as "already in force".
    pub fn rotate(
        &self,
        raw_envelope: &[u8],
        now: Timestamp,
        clock_skew_s: u64,
        max_bytes: usize,
        expected_target: &str,
    ) -> Result<(Keyring, Vec<u8>), TrustError> {
        let verified = verify_document(
            raw_envelope,
            Role::Trust,
            expected_target,
            self,
            now,
            clock_skew_s,
            max_bytes,
        )?;
        let next = Keyring::from_bytes(verified.payload())?;
        if next.version <= self.version {
            return Err(TrustError::Rollback {
                have: self.version,
                got: next.version,
            });
        }
        // The current root's threshold held; what is missing now is the new root's own.
        verify_envelope(raw_envelope, Role::Trust, &next, max_bytes).map_err(|e| match e {
            TrustError::UnknownKey
            | TrustError::BadSignature
            | TrustError::MissingRole
            | TrustError::BelowThreshold { .. } => TrustError::NewRootUnsigned {
                detail: e.to_string(),
            },
            e => e,
        })?;
        let bytes = next.document.clone();
        Ok((next, bytes))
    }
}

fn parse_keys(entries: Vec<KeyEntry>) -> Result<BTreeMap<String, TrustedKey>, TrustError> {
    let mut keys = BTreeMap::new();
    for entry in entries {
        let raw = STANDARD.decode(entry.public_key.as_bytes()).map_err(|e| {
            TrustError::InvalidDocument(format!(
                "key {}: public_key is not base64: {e}",
                entry.keyid
            ))
        })?;
        let public_key: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            TrustError::InvalidDocument(format!(
                "key {}: public_key is {} bytes, an Ed25519 key is 32",
                entry.keyid,
                raw.len()
            ))
        })?;
        if keyid_of(&public_key) != entry.keyid {
            return Err(TrustError::KeyidMismatch);
        }
        let roles = entry
            .roles
            .iter()
            .map(|r| r.parse::<Role>())
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| TrustError::InvalidDocument(format!("key {}: {e}", entry.keyid)))?;
        if keys
            .insert(entry.keyid.clone(), TrustedKey { public_key, roles })
            .is_some()
        {
            return Err(TrustError::InvalidDocument(format!(
                "key {} is listed twice",
                entry.keyid
            )));
        }
    }
    Ok(keys)
}

fn parse_thresholds(raw: BTreeMap<String, u64>) -> Result<BTreeMap<Role, u32>, TrustError> {
    let mut thresholds = BTreeMap::new();
    for (name, n) in raw {
        let role = name
            .parse::<Role>()
            .map_err(|e| TrustError::InvalidDocument(format!("thresholds: {e}")))?;
        let n = u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
            TrustError::InvalidDocument(format!("threshold for {role} must be at least 1, got {n}"))
        })?;
        thresholds.insert(role, n);
    }
    for role in Role::ADDED_V1_1 {
        thresholds.entry(role).or_insert(1);
    }
    if let Some(missing) = Role::ALL.iter().find(|r| !thresholds.contains_key(r)) {
        return Err(TrustError::InvalidDocument(format!(
            "thresholds has no entry for {missing}; every role needs one"
        )));
    }
    Ok(thresholds)
}

/// The trust root in force and the file it lives in. The daemon loads it once at start and
/// hands `keyring()` to verification; a rotation replaces it only after the new root is on disk.
#[derive(Debug)]
pub struct TrustStore {
    path: PathBuf,
    keyring: Keyring,
}

impl TrustStore {
    /// Loads `paths.trust_file`. A missing or invalid root is an error: the agent must not run
    /// accepting nothing, nor everything.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, TrustError> {
        let path = path.into();
        let keyring = Keyring::load(&path)?;
        Ok(TrustStore { path, keyring })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Reads the file again (another process, the privileged helper, wrote a rotation).
    pub fn reload(&mut self) -> Result<u64, TrustError> {
        self.keyring = Keyring::load(&self.path)?;
        Ok(self.keyring.version)
    }

    /// Verifies a `desired/trust` envelope ([`Keyring::rotate`]), writes the new root atomically
    /// (keeping the file's mode), and only then puts it in force. If the write fails the previous
    /// root stays in force and on disk. Returns the new version.
    pub fn rotate(
        &mut self,
        raw_envelope: &[u8],
        now: Timestamp,
        clock_skew_s: u64,
        max_bytes: usize,
        expected_target: &str,
    ) -> Result<u64, TrustError> {
        let (next, _bytes) =
            self.keyring
                .rotate(raw_envelope, now, clock_skew_s, max_bytes, expected_target)?;
        next.save(&self.path)?;
        let version = next.version;
        self.keyring = next;
        tracing::info!(path = %self.path.display(), version, "trust root rotated");
        Ok(version)
    }
}
