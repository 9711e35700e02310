use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::*;

const MAX: usize = DEFAULT_MAX_BYTES;
const SKEW: u64 = 300;
const TARGET: &str = "t/sz-ft-0001";

struct Key {
    kp: Ed25519KeyPair,
    id: String,
}

fn key() -> Key {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let id = keyid_of(kp.public_key().as_ref());
    Key { kp, id }
}

fn entry(k: &Key, roles: &[&str]) -> Value {
    json!({"keyid": k.id, "public_key": STANDARD.encode(k.kp.public_key().as_ref()), "roles": roles})
}

fn thresholds(n: u32) -> Value {
    json!({"trust": n, "policy": n, "schedule": n, "catalog": n, "app": n, "command": n})
}

fn trust_json(version: u64, keys: Vec<Value>, th: Value) -> Value {
    json!({"kind": "trust", "version": version, "keys": keys, "thresholds": th})
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn ring_of(v: &Value) -> Keyring {
    Keyring::from_bytes(&bytes(v)).unwrap()
}

const ALL_ROLES: &[&str] = &["trust", "policy", "schedule", "catalog", "app", "command"];

fn now() -> Timestamp {
    "2026-11-29T08:00:00Z".parse().unwrap()
}

fn policy_doc(version: u64) -> Value {
    json!({"kind": "policy", "version": version, "target": TARGET,
           "issued_at": "2026-11-29T07:59:00Z", "rules": []})
}

fn signed(role: Role, payload: &Value, keys: &[&Key]) -> Vec<u8> {
    let kps: Vec<&Ed25519KeyPair> = keys.iter().map(|k| &k.kp).collect();
    sign_envelope(role, &bytes(payload), &kps)
        .to_json()
        .into_bytes()
}

fn one_key_ring() -> (Key, Keyring) {
    let k = key();
    let ring = ring_of(&trust_json(1, vec![entry(&k, ALL_ROLES)], thresholds(1)));
    (k, ring)
}

fn verify_policy(raw: &[u8], ring: &Keyring) -> Result<Verified, TrustError> {
    verify_document(raw, Role::Policy, TARGET, ring, now(), SKEW, MAX)
}

#[test]
fn role_names_and_payload_types() {
    for r in Role::ALL {
        assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        assert_eq!(r.payload_type(), format!("application/vnd.kiosk.{r}+json"));
    }
    assert!(matches!("Policy".parse::<Role>(), Err(UnknownRole(ref r)) if r == "Policy"));
}

#[test]
fn accepts_a_valid_document_and_exposes_exact_bytes() {
    let (k, ring) = one_key_ring();
    let payload = br#"{"kind":"policy", "version":4,"target":"t/sz-ft-0001","issued_at":"2026-11-29T16:00:00+08:00","rules":[]}"#;
    let raw = sign_envelope(Role::Policy, payload, &[&k.kp]).to_json();
    let v = verify_policy(raw.as_bytes(), &ring).unwrap();
    assert_eq!(
        v.payload(),
        payload,
        "payload bytes are those signed, not re-serialised"
    );
    assert_eq!(v.version(), Some(4));
    assert_eq!(v.target(), TARGET);
    assert_eq!(v.issued_at(), now());
    assert_eq!(v.expires_at(), None);
    assert_eq!(v.value()["rules"], json!([]));
    assert_eq!(v.signers(), std::slice::from_ref(&k.id));
    assert!(v.command().is_none());
}

#[test]
fn too_large() {
    let (k, ring) = one_key_ring();
    let raw = signed(Role::Policy, &policy_doc(1), &[&k]);
    let r = verify_document(
        &raw,
        Role::Policy,
        TARGET,
        &ring,
        now(),
        SKEW,
        raw.len() - 1,
    );
    assert!(matches!(r, Err(TrustError::TooLarge)), "{r:?}");
    assert!(verify_document(&raw, Role::Policy, TARGET, &ring, now(), SKEW, raw.len()).is_ok());
}

#[test]
fn malformed() {
    let (_, ring) = one_key_ring();
    for raw in [
        &b"not json"[..],
        b"{}",
        b"\xff\xfe",
        br#"{"payloadType":"application/vnd.kiosk.policy+json","payload":"!!","signatures":[]}"#,
    ] {
        let r = verify_policy(raw, &ring);
        assert!(matches!(r, Err(TrustError::Malformed(_))), "{r:?}");
    }
}

#[test]
fn wrong_type() {
    let (k, ring) = one_key_ring();
    let raw = signed(Role::Catalog, &policy_doc(1), &[&k]);
    match verify_policy(&raw, &ring) {
        Err(TrustError::WrongType { expected, got }) => {
            assert_eq!(expected, "application/vnd.kiosk.policy+json");
            assert_eq!(got, "application/vnd.kiosk.catalog+json");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_key() {
    let (_, ring) = one_key_ring();
    let stranger = key();
    let r = verify_policy(&signed(Role::Policy, &policy_doc(1), &[&stranger]), &ring);
    assert!(matches!(r, Err(TrustError::UnknownKey)), "{r:?}");
}

#[test]
fn bad_signature() {
    let (k, ring) = one_key_ring();
    let mut env = sign_envelope(Role::Policy, &bytes(&policy_doc(1)), &[&k.kp]);
    env.payload = bytes(&policy_doc(2));
    let r = verify_policy(env.to_json().as_bytes(), &ring);
    assert!(matches!(r, Err(TrustError::BadSignature)), "{r:?}");
    // A signature that is not base64 at all is just another bad signature.
    env.signatures[0].sig = "%%%".into();
    let r = verify_policy(env.to_json().as_bytes(), &ring);
    assert!(matches!(r, Err(TrustError::BadSignature)), "{r:?}");
}

#[test]
fn missing_role() {
    let (ops, root) = (key(), key());
    let ring = ring_of(&trust_json(
        1,
        vec![
            entry(&ops, &["catalog"]),
            entry(&root, &["trust", "policy", "schedule", "app", "command"]),
        ],
        thresholds(1),
    ));
    let r = verify_policy(&signed(Role::Policy, &policy_doc(1), &[&ops]), &ring);
    assert!(matches!(r, Err(TrustError::MissingRole)), "{r:?}");
    assert!(verify_policy(&signed(Role::Policy, &policy_doc(1), &[&ops, &root]), &ring).is_ok());
}

#[test]
fn below_threshold_counts_distinct_keys() {
    let (a, b) = (key(), key());
    let ring = ring_of(&trust_json(
        1,
        vec![entry(&a, ALL_ROLES), entry(&b, ALL_ROLES)],
        thresholds(2),
    ));
    let twice = signed(Role::Policy, &policy_doc(1), &[&a, &a]);
    match verify_policy(&twice, &ring) {
        Err(TrustError::BelowThreshold { role, have, need }) => {
            assert_eq!((role, have, need), (Role::Policy, 1, 2));
        }
        other => panic!("{other:?}"),
    }
    let empty = sign_envelope(Role::Policy, &bytes(&policy_doc(1)), &[]).to_json();
    let r = verify_policy(empty.as_bytes(), &ring);
    assert!(
        matches!(
            r,
            Err(TrustError::BelowThreshold {
                have: 0,
                need: 2,
                ..
            })
        ),
        "{r:?}"
    );
    let both = signed(Role::Policy, &policy_doc(1), &[&a, &b]);
    assert_eq!(verify_policy(&both, &ring).unwrap().signers().len(), 2);
}

#[test]
fn unknown_and_bad_signatures_are_ignored_when_threshold_met() {
    let (k, ring) = one_key_ring();
    let stranger = key();
    let mut env = sign_envelope(
        Role::Policy,
        &bytes(&policy_doc(1)),
        &[&stranger.kp, &k.kp, &k.kp],
    );
    env.signatures[1].sig = STANDARD.encode([0u8; 64]);
    assert!(verify_policy(env.to_json().as_bytes(), &ring).is_ok());
}

#[test]
fn wrong_target() {
    let (k, ring) = one_key_ring();
    let raw = signed(Role::Policy, &policy_doc(1), &[&k]);
    match verify_document(&raw, Role::Policy, "t/sz-ft-0002", &ring, now(), SKEW, MAX) {
        Err(TrustError::WrongTarget { expected, got }) => {
            assert_eq!((expected.as_str(), got.as_str()), ("t/sz-ft-0002", TARGET));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn expired_allows_clock_skew() {
    let (k, ring) = one_key_ring();
    let mut doc = policy_doc(1);
    doc["expires_at"] = json!("2026-11-29T07:56:00Z"); // now - 240 s
    let raw = signed(Role::Policy, &doc, &[&k]);
    assert!(verify_policy(&raw, &ring).is_ok(), "within skew");
    let r = verify_document(&raw, Role::Policy, TARGET, &ring, now(), 60, MAX);
    assert!(matches!(r, Err(TrustError::Expired)), "{r:?}");
}

#[test]
fn invalid_documents() {
    let (k, ring) = one_key_ring();
    let cases: Vec<(&str, Value)> = vec![
        ("not an object", json!([1])),
        (
            "kind differs from role",
            json!({"kind":"catalog","version":1,"target":TARGET,"issued_at":"2026-11-29T07:00:00Z"}),
        ),
        (
            "no version",
            json!({"kind":"policy","target":TARGET,"issued_at":"2026-11-29T07:00:00Z"}),
        ),
        (
            "negative version",
            json!({"kind":"policy","version":-1,"target":TARGET,"issued_at":"2026-11-29T07:00:00Z"}),
        ),
        (
            "no target",
            json!({"kind":"policy","version":1,"issued_at":"2026-11-29T07:00:00Z"}),
        ),
        (
            "bad issued_at",
            json!({"kind":"policy","version":1,"target":TARGET,"issued_at":"yesterday"}),
        ),
        (
            "bad expires_at",
            json!({"kind":"policy","version":1,"target":TARGET,"issued_at":"2026-11-29T07:00:00Z","expires_at":5}),
        ),
    ];
    for (what, doc) in cases {
        let r = verify_policy(&signed(Role::Policy, &doc, &[&k]), &ring);
        assert!(
            matches!(r, Err(TrustError::InvalidDocument(_))),
            "{what}: {r:?}"
        );
    }
    let not_json = sign_envelope(Role::Policy, b"\x00nope", &[&k.kp]).to_json();
    assert!(matches!(
        verify_policy(not_json.as_bytes(), &ring),
        Err(TrustError::InvalidDocument(_))
    ));
}

fn command(id: &str, expires: Option<&str>) -> Value {
    let mut c = json!({"kind":"command","id":id,"name":"reboot","args":{"delay_s":5},
                       "target":TARGET,"issued_at":"2026-11-29T07:59:00Z"});
    if let Some(e) = expires {
        c["expires_at"] = json!(e);
    }
    c
}

#[test]
fn commands_need_id_and_expiry_but_no_version() {
    let (k, ring) = one_key_ring();
    let check = |doc: &Value| {
        verify_document(
            &signed(Role::Command, doc, &[&k]),
            Role::Command,
            TARGET,
            &ring,
            now(),
            SKEW,
            MAX,
        )
    };
    let ok = check(&command("c-1", Some("2026-11-29T08:10:00Z"))).unwrap();
    let c = ok.command().unwrap();
    assert_eq!((c.id.as_str(), c.name.as_str()), ("c-1", "reboot"));
    assert_eq!(c.args["delay_s"], json!(5));
    assert_eq!(ok.version(), None);

    let mut no_args = command("c-2", Some("2026-11-29T08:10:00Z"));
    no_args.as_object_mut().unwrap().remove("args");
    assert!(check(&no_args).unwrap().command().unwrap().args.is_empty());

    let long = "x".repeat(65);
    for bad in [
        command("c-3", None),
        command("", Some("2026-11-29T08:10:00Z")),
        command(&long, Some("2026-11-29T08:10:00Z")),
    ] {
        assert!(
            matches!(check(&bad), Err(TrustError::InvalidDocument(_))),
            "{bad}"
        );
    }
    assert!(check(&command(&"x".repeat(64), Some("2026-11-29T08:10:00Z"))).is_ok());
    assert!(matches!(
        check(&command("c-4", Some("2026-11-29T07:50:00Z"))),
        Err(TrustError::Expired)
    ));
}

#[test]
fn keyid_mismatch() {
    let (a, b) = (key(), key());
    let mut e = entry(&a, ALL_ROLES);
    e["keyid"] = json!(b.id);
    let r = Keyring::from_bytes(&bytes(&trust_json(1, vec![e], thresholds(1))));
    assert!(matches!(r, Err(TrustError::KeyidMismatch)), "{r:?}");
    let mut upper = entry(&a, ALL_ROLES);
    upper["keyid"] = json!(a.id.to_uppercase());
    let r = Keyring::from_bytes(&bytes(&trust_json(1, vec![upper], thresholds(1))));
    assert!(
        matches!(r, Err(TrustError::KeyidMismatch)),
        "keyids are lowercase: {r:?}"
    );
}

#[test]
fn trust_document_validation() {
    let k = key();
    let mut short = entry(&k, ALL_ROLES);
    short["public_key"] = json!(STANDARD.encode([1u8; 31]));
    let mut zero = thresholds(1);
    zero["app"] = json!(0);
    let mut missing = thresholds(1);
    missing.as_object_mut().unwrap().remove("command");
    let mut typo = thresholds(1);
    typo["catalogue"] = json!(1);
    let cases = vec![
        (
            "threshold 0",
            trust_json(1, vec![entry(&k, ALL_ROLES)], zero),
        ),
        (
            "role without threshold",
            trust_json(1, vec![entry(&k, ALL_ROLES)], missing),
        ),
        (
            "unknown role in thresholds",
            trust_json(1, vec![entry(&k, ALL_ROLES)], typo),
        ),
        (
            "unreachable threshold",
            trust_json(1, vec![entry(&k, ALL_ROLES)], thresholds(2)),
        ),
        (
            "role nobody holds",
            trust_json(1, vec![entry(&k, &["policy"])], thresholds(1)),
        ),
        (
            "unknown role on key",
            trust_json(1, vec![entry(&k, &["trust", "root"])], thresholds(1)),
        ),
        ("short key", trust_json(1, vec![short], thresholds(1))),
        (
            "duplicate key",
            trust_json(
                1,
                vec![entry(&k, ALL_ROLES), entry(&k, ALL_ROLES)],
                thresholds(1),
            ),
        ),
        (
            "wrong kind",
            json!({"kind":"policy","version":1,"keys":[entry(&k, ALL_ROLES)],"thresholds":thresholds(1)}),
        ),
    ];
    for (what, doc) in cases {
        let r = Keyring::from_bytes(&bytes(&doc));
        assert!(
            matches!(r, Err(TrustError::InvalidDocument(_))),
            "{what}: {r:?}"
        );
    }
    let ok = ring_of(&trust_json(7, vec![entry(&k, ALL_ROLES)], thresholds(1)));
    assert_eq!(ok.version(), 7);
    assert_eq!(ok.threshold(Role::App), 1);
    assert!(ok.key(&k.id).unwrap().holds(Role::Trust));
}

/// A root with a trust key, an ops key for everything else, and a trust document v2 replacing both.
struct Rotation {
    old_root: Key,
    new_root: Key,
    new_ops: Key,
    ring: Keyring,
    v2: Value,
}

fn rotation() -> Rotation {
    let (old_root, old_ops, new_root, new_ops) = (key(), key(), key(), key());
    let ops_roles = &["policy", "schedule", "catalog", "app", "command"];
    let ring = ring_of(&trust_json(
        1,
        vec![entry(&old_root, &["trust"]), entry(&old_ops, ops_roles)],
        thresholds(1),
    ));
    let mut v2 = trust_json(
        2,
        vec![entry(&new_root, &["trust"]), entry(&new_ops, ops_roles)],
        thresholds(1),
    );
    v2["target"] = json!("all");
    v2["issued_at"] = json!("2026-11-29T07:00:00Z");
    Rotation {
        old_root,
        new_root,
        new_ops,
        ring,
        v2,
    }
}

#[test]
fn rotation_needs_both_roots_and_a_higher_version() {
    let r = rotation();
    let rotate = |raw: &[u8]| r.ring.rotate(raw, now(), SKEW, MAX, "all");

    let only_new = signed(Role::Trust, &r.v2, &[&r.new_root]);
    assert!(
        matches!(rotate(&only_new), Err(TrustError::UnknownKey)),
        "new root alone is refused"
    );
    let only_old = signed(Role::Trust, &r.v2, &[&r.old_root]);
    assert!(
        matches!(rotate(&only_old), Err(TrustError::NewRootUnsigned { .. })),
        "new root must sign itself"
    );

    let both = signed(Role::Trust, &r.v2, &[&r.old_root, &r.new_root]);
    let (next, persisted) = rotate(&both).unwrap();
    assert_eq!(next.version(), 2);
    assert_eq!(
        persisted,
        bytes(&r.v2),
        "the signed bytes are what gets persisted"
    );
    assert_eq!(Keyring::from_bytes(&persisted).unwrap(), next);

    // After v2 the old root's keys are gone; the new ops key works.
    let doc = policy_doc(1);
    let by_old = signed(Role::Policy, &doc, &[&r.old_root]);
    assert!(matches!(
        verify_policy(&by_old, &next),
        Err(TrustError::UnknownKey)
    ));
    assert!(verify_policy(&signed(Role::Policy, &doc, &[&r.new_ops]), &next).is_ok());

    // Replaying v2 (or anything older) on v2 is a rollback.
    let again = next.rotate(&both, now(), SKEW, MAX, "all");
    assert!(
        matches!(again, Err(TrustError::Rollback { have: 2, got: 2 })),
        "{again:?}"
    );
}

#[test]
fn rotation_refuses_lower_version_wrong_target_and_bad_key() {
    let r = rotation();
    let mut v0 = r.v2.clone();
    v0["version"] = json!(0);
    let raw = signed(Role::Trust, &v0, &[&r.old_root, &r.new_root]);
    assert!(matches!(
        r.ring.rotate(&raw, now(), SKEW, MAX, "all"),
        Err(TrustError::Rollback { have: 1, got: 0 })
    ));
    let raw = signed(Role::Trust, &r.v2, &[&r.old_root, &r.new_root]);
    assert!(matches!(
        r.ring.rotate(&raw, now(), SKEW, MAX, "g/futian"),
        Err(TrustError::WrongTarget { .. })
    ));
    let mut bad = r.v2.clone();
    bad["keys"][1]["keyid"] = json!(r.old_root.id);
    let raw = signed(Role::Trust, &bad, &[&r.old_root, &r.new_root]);
    assert!(matches!(
        r.ring.rotate(&raw, now(), SKEW, MAX, "all"),
        Err(TrustError::KeyidMismatch)
    ));
}

#[test]
fn trust_store_persists_atomically_and_keeps_mode() {
    let r = rotation();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust.json");
    std::fs::write(&path, r.ring.document_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut store = TrustStore::load(&path).unwrap();
    assert_eq!(store.keyring().version(), 1);

    let only_new = signed(Role::Trust, &r.v2, &[&r.new_root]);
    assert!(matches!(
        store.rotate(&only_new, now(), SKEW, MAX, "all"),
        Err(TrustError::UnknownKey)
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        r.ring.document_bytes(),
        "refusal writes nothing"
    );

    let both = signed(Role::Trust, &r.v2, &[&r.old_root, &r.new_root]);
    assert_eq!(store.rotate(&both, now(), SKEW, MAX, "all").unwrap(), 2);
    assert_eq!(store.keyring().version(), 2);
    assert_eq!(std::fs::read(&path).unwrap(), bytes(&r.v2));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(
        TrustStore::load(&path).unwrap().keyring().version(),
        2,
        "survives a restart"
    );
}

#[test]
fn trust_store_keeps_old_root_when_persist_fails() {
    let r = rotation();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("trust.json");
    std::fs::write(&path, r.ring.document_bytes()).unwrap();
    let mut store = TrustStore::load(&path).unwrap();
    std::fs::remove_dir_all(&sub).unwrap();

    let both = signed(Role::Trust, &r.v2, &[&r.old_root, &r.new_root]);
    let e = store.rotate(&both, now(), SKEW, MAX, "all").unwrap_err();
    assert!(matches!(e, TrustError::PersistTrust { .. }), "{e:?}");
    assert_eq!(e.code(), "trust_not_persisted");
    assert_eq!(store.keyring().version(), 1, "old root stays in force");
}

#[test]
fn missing_trust_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = TrustStore::load(dir.path().join("absent.json")).unwrap_err();
    assert!(matches!(e, TrustError::ReadTrust { .. }), "{e:?}");
}

#[test]
fn codes_are_distinct_and_stable() {
    let all = [
        TrustError::TooLarge,
        TrustError::Malformed(String::new()),
        TrustError::WrongType {
            expected: String::new(),
            got: String::new(),
        },
        TrustError::UnknownKey,
        TrustError::BadSignature,
        TrustError::MissingRole,
        TrustError::BelowThreshold {
            role: Role::App,
            have: 0,
            need: 1,
        },
        TrustError::WrongTarget {
            expected: String::new(),
            got: String::new(),
        },
        TrustError::Expired,
        TrustError::InvalidDocument(String::new()),
        TrustError::KeyidMismatch,
        TrustError::Rollback { have: 2, got: 1 },
        TrustError::Replayed,
    ];
    let codes: std::collections::BTreeSet<_> = all.iter().map(TrustError::code).collect();
    assert_eq!(codes.len(), all.len());
    assert_eq!(TrustError::Malformed("x".into()).code(), "bad_envelope");
    assert_eq!(TrustError::Replayed.code(), "replayed");
    assert_eq!(TrustError::Expired.code(), "expired");
    assert_eq!(
        TrustError::WrongTarget {
            expected: "a".into(),
            got: "b".into()
        }
        .code(),
        "wrong_target"
    );
    let msg = TrustError::BelowThreshold {
        role: Role::Policy,
        have: 1,
        need: 2,
    }
    .to_string();
    assert!(
        msg.contains("1 of the 2") && msg.contains("policy"),
        "{msg}"
    );
}
