//! The shared DSSE vectors (tests/data/dsse.json, made with Python `cryptography`) must give the
//! same verdict here: every vector's `expect` is matched, and the known vectors to the exact variant.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use kiosk_agent::trust::{
    DEFAULT_MAX_BYTES, Keyring, Role, TrustError, keyid_of, sign_envelope, verify_document,
    verify_envelope,
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

const VECTORS: &str = include_str!("data/dsse.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).expect("tests/data/dsse.json is JSON")
}

fn keyring(v: &Value) -> Keyring {
    Keyring::from_bytes(&serde_json::to_vec(&v["trust"]).unwrap())
        .expect("vector trust root is valid")
}

/// Whether a refusal falls under the vector file's coarser reason. The vectors say
/// `below_threshold` for every "not enough good signatures" case; the agent tells the operator more.
fn matches_reason(reason: &str, err: &TrustError) -> bool {
    match reason {
        "below_threshold" => matches!(
            err,
            TrustError::BelowThreshold { .. }
                | TrustError::BadSignature
                | TrustError::UnknownKey
                | TrustError::MissingRole
        ),
        "wrong_type" => matches!(err, TrustError::WrongType { .. }),
        "malformed" => matches!(err, TrustError::Malformed(_)),
        "too_large" => matches!(err, TrustError::TooLarge),
        "wrong_target" => matches!(err, TrustError::WrongTarget { .. }),
        "expired" => matches!(err, TrustError::Expired),
        other => {
            panic!("vector reason {other:?} is not mapped to a TrustError variant; add it here")
        }
    }
}

/// The exact variant each known vector must give.
fn exact(name: &str, r: &Result<(), TrustError>) -> Option<bool> {
    use TrustError::*;
    Some(match name {
        "valid single signature" | "threshold 2 met, a bad and an unknown signature ignored" => {
            r.is_ok()
        }
        "threshold 2 not met" | "same key twice counts once" => matches!(
            r,
            Err(BelowThreshold {
                role: Role::Policy,
                have: 1,
                need: 2
            })
        ),
        "signature over other bytes"
        | "zeroed signature"
        | "keyid of one key, signature of another" => {
            matches!(r, Err(BadSignature))
        }
        "unknown key only" => matches!(r, Err(UnknownKey)),
        "payloadType of another role" => matches!(r, Err(WrongType { .. })),
        "payload not base64" | "envelope not JSON" => matches!(r, Err(Malformed(_))),
        "no signatures" => matches!(
            r,
            Err(BelowThreshold {
                have: 0,
                need: 1,
                ..
            })
        ),
        _ => return None,
    })
}

#[test]
fn every_vector_gives_its_expected_verdict() {
    let v = vectors();
    let ring = keyring(&v);
    let list = v["vectors"].as_array().expect("vectors array");
    assert!(list.len() >= 12, "vector file lost entries");
    let mut exact_checked = 0;
    for vector in list {
        let name = vector["name"].as_str().unwrap();
        let role: Role = vector["role"].as_str().unwrap().parse().unwrap();
        let raw = vector["envelope"].as_str().unwrap().as_bytes();
        let expect = vector["expect"].as_str().unwrap();
        let r = verify_envelope(raw, role, &ring, DEFAULT_MAX_BYTES).map(|_| ());
        match (&r, expect) {
            (Ok(()), "ok") => {}
            (Err(e), reason) if reason != "ok" => {
                assert!(
                    matches_reason(reason, e),
                    "{name}: expected {reason}, got {e:?}"
                )
            }
            _ => panic!("{name}: expected {expect}, got {r:?}"),
        }
        if let Some(ok) = exact(name, &r) {
            assert!(ok, "{name}: wrong variant {r:?}");
            exact_checked += 1;
        }
    }
    assert_eq!(
        exact_checked, 12,
        "every known vector checked to the exact variant"
    );
}

#[test]
fn valid_vectors_pass_document_checks_for_their_own_target_only() {
    let v = vectors();
    let ring = keyring(&v);
    for vector in v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["expect"] == "ok")
    {
        let role: Role = vector["role"].as_str().unwrap().parse().unwrap();
        let raw = vector["envelope"].as_str().unwrap().as_bytes();
        let env: Value = serde_json::from_slice(raw).unwrap();
        let payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
        let doc: Value = serde_json::from_slice(&payload).unwrap();
        let target = doc["target"].as_str().unwrap();
        let now: Timestamp = doc["issued_at"].as_str().unwrap().parse().unwrap();
        let ok = verify_document(raw, role, target, &ring, now, 300, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(ok.payload(), payload.as_slice());
        assert_eq!(ok.version(), doc["version"].as_u64());
        let elsewhere = verify_document(
            raw,
            role,
            "t/sz-ft-9999",
            &ring,
            now,
            300,
            DEFAULT_MAX_BYTES,
        );
        assert!(
            matches!(elsewhere, Err(TrustError::WrongTarget { .. })),
            "{elsewhere:?}"
        );
    }
}

/// The vector keys' seeds are the SHA-256 of the names the file lists, so new cases (expiry)
/// can be signed by the same keys the Python side used.
fn vector_key(v: &Value, i: usize) -> Ed25519KeyPair {
    let name = v["private_seeds_sha256_of"][i].as_str().unwrap();
    let seed = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).unwrap()
}

#[test]
fn vector_seeds_are_the_trusted_keys_and_expiry_is_enforced() {
    let v = vectors();
    let ring = keyring(&v);
    let k0 = vector_key(&v, 0);
    assert_eq!(
        keyid_of(k0.public_key().as_ref()),
        v["trust"]["keys"][0]["keyid"].as_str().unwrap()
    );
    let cmd = json!({"kind": "command", "id": "c-77", "name": "ping", "target": "t/sz-ft-0001",
                     "issued_at": "2026-11-29T08:00:00Z", "expires_at": "2026-11-29T08:05:00Z"});
    let raw = sign_envelope(Role::Command, &serde_json::to_vec(&cmd).unwrap(), &[&k0]).to_json();
    let at = |t: &str| {
        verify_document(
            raw.as_bytes(),
            Role::Command,
            "t/sz-ft-0001",
            &ring,
            t.parse().unwrap(),
            300,
            DEFAULT_MAX_BYTES,
        )
    };
    assert!(
        at("2026-11-29T08:10:00Z").is_ok(),
        "expiry plus skew is still valid"
    );
    assert!(matches!(
        at("2026-11-29T08:10:01Z"),
        Err(TrustError::Expired)
    ));
}
