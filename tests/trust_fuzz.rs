//! Property tests of envelope parsing and verification: arbitrary and mutated input never panics,
//! and a change to anything signed is never accepted. `scripts/fuzz` runs these with many more
//! cases (PROPTEST_CASES).

mod common;

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use kiosk_agent::trust::{
    DEFAULT_MAX_BYTES, Envelope, Keyring, Role, TrustError, keyid_of, sign_envelope,
    verify_document,
};
use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

const TARGET: &str = "t/sz-ft-0001";

struct Fixture {
    keyring: Keyring,
    keys: Vec<Ed25519KeyPair>,
    payload: Vec<u8>,
    raw: Vec<u8>,
}

fn new_key() -> Ed25519KeyPair {
    common::ed25519_pkcs8().1
}

/// Two keys, policy threshold 2, and a policy document both signed.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let keys = vec![new_key(), new_key()];
    let entries: Vec<_> = keys
        .iter()
        .map(|k| {
            let pk = k.public_key().as_ref();
            json!({"keyid": keyid_of(pk), "public_key": STANDARD.encode(pk),
                   "roles": ["trust", "policy", "schedule", "catalog", "app", "command"]})
        })
        .collect();
    let trust = json!({"kind": "trust", "version": 1, "keys": entries,
        "thresholds": {"trust": 2, "policy": 2, "schedule": 1, "catalog": 1, "app": 1, "command": 1}});
    let keyring = Keyring::from_bytes(&serde_json::to_vec(&trust).unwrap()).unwrap();
    let payload = serde_json::to_vec(&json!({"kind": "policy", "version": 9, "target": TARGET,
        "issued_at": "2026-11-29T08:00:00Z", "expires_at": "2026-12-29T08:00:00Z", "rules": []}))
    .unwrap();
    let raw = sign_envelope(Role::Policy, &payload, &[&keys[0], &keys[1]])
        .to_json()
        .into_bytes();
    Fixture {
        keyring,
        keys,
        payload,
        raw,
    }
});

fn now() -> Timestamp {
    "2026-11-29T09:00:00Z".parse().unwrap()
}

fn check(raw: &[u8], role: Role) -> Result<Vec<u8>, kiosk_agent::trust::TrustError> {
    let f = &*FIXTURE;
    verify_document(raw, role, TARGET, &f.keyring, now(), 300, DEFAULT_MAX_BYTES)
        .map(|v| v.payload().to_vec())
}

/// Refused before the document is looked at: the envelope, its type or its signatures. A
/// forged message must never get as far as the document checks (expiry, target, content).
fn refused_at_the_signature_layer(r: &Result<Vec<u8>, TrustError>) -> bool {
    matches!(
        r,
        Err(TrustError::Malformed(_)
            | TrustError::WrongType { .. }
            | TrustError::UnknownKey
            | TrustError::BadSignature
            | TrustError::MissingRole
            | TrustError::BelowThreshold { .. })
    )
}

fn any_role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

#[test]
fn fixture_is_accepted() {
    assert_eq!(check(&FIXTURE.raw, Role::Policy).unwrap(), FIXTURE.payload);
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused(raw in prop::collection::vec(any::<u8>(), 0..4096), role in any_role()) {
        let refused = check(&raw, role);
        prop_assert!(
            matches!(refused, Err(TrustError::Malformed(_))),
            "bytes that are not an envelope are refused as such: {refused:?}"
        );
        let _ = Keyring::from_bytes(&raw);
        let _ = FIXTURE.keyring.rotate(&raw, now(), 300, DEFAULT_MAX_BYTES, TARGET);
    }

    #[test]
    fn arbitrary_envelopes_are_refused(
        ptype in prop_oneof![any_role().prop_map(|r| r.payload_type()), ".{0,40}"],
        payload in prop::collection::vec(any::<u8>(), 0..512),
        sigs in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..80)), 0..5),
        role in any_role(),
    ) {
        let f = &*FIXTURE;
        let signatures: Vec<_> = sigs.iter().enumerate().map(|(i, (known, sig))| {
            let keyid = if *known {
                keyid_of(f.keys[i % 2].public_key().as_ref())
            } else {
                hex::encode(sig)
            };
            json!({"keyid": keyid, "sig": STANDARD.encode(sig)})
        }).collect();
        let raw = serde_json::to_vec(&json!({"payloadType": ptype,
            "payload": STANDARD.encode(&payload), "signatures": signatures})).unwrap();
        let refused = check(&raw, role);
        prop_assert!(refused_at_the_signature_layer(&refused), "{refused:?}");
    }

    /// Byte-level damage to the serialized envelope. JSON may still say the same thing after a
    /// change (an inserted space), so the property is: whatever is accepted is exactly what was signed.
    #[test]
    fn mutated_raw_envelopes_never_accept_other_content(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let f = &*FIXTURE;
        let mut raw = f.raw.clone();
        for (at, byte, op) in edits {
            let i = at.index(raw.len() + 1);
            match op {
                0 if i < raw.len() => raw[i] = byte,
                1 => raw.insert(i, byte),
                _ if i < raw.len() => { raw.remove(i); }
                _ => raw.push(byte),
            }
        }
        if let Ok(payload) = check(&raw, Role::Policy) {
            prop_assert_eq!(payload, f.payload.clone());
            let env = Envelope::parse(&raw, DEFAULT_MAX_BYTES).unwrap();
            prop_assert_eq!(env.payload_type, Role::Policy.payload_type());
        }
    }

    /// Any change to the signed content (payload bytes, type) or to a needed signature is refused.
    #[test]
    fn changed_signed_content_is_refused(
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        what in 0u8..4,
        role in any_role(),
    ) {
        let f = &*FIXTURE;
        let mut env = Envelope::parse(&f.raw, DEFAULT_MAX_BYTES).unwrap();
        match what {
            0 => { let i = at.index(env.payload.len()); env.payload[i] ^= 1 << bit; }
            1 => { env.payload.truncate(at.index(env.payload.len())); }
            2 => {
                let s = &mut env.signatures[at.index(2)];
                let mut sig = STANDARD.decode(&s.sig).unwrap();
                let i = at.index(sig.len());
                sig[i] ^= 1 << bit;
                s.sig = STANDARD.encode(sig);
            }
            _ => {
                let i = at.index(env.payload_type.len());
                let mut t = env.payload_type.into_bytes();
                t[i] ^= 1 << bit.min(6);
                env.payload_type = String::from_utf8_lossy(&t).into_owned();
            }
        }
        let refused = check(env.to_json().as_bytes(), Role::Policy);
        prop_assert!(refused_at_the_signature_layer(&refused), "{refused:?}");
        if role != Role::Policy {
            let other = check(&f.raw, role);
            prop_assert!(
                matches!(other, Err(TrustError::WrongType { .. })),
                "a policy envelope is never another role: {other:?}"
            );
        }
    }
}
