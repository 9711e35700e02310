//! kiosk-admin against an independent implementation (Python `cryptography`, tests/tools/dsse_verify.py):
//! envelopes signed by one side verify on the other, and keys from either side sign.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const ADMIN: &str = env!("CARGO_BIN_EXE_kiosk-admin");

fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/dsse_verify.py")
}

/// The cross-check is the point of this file: without the library it fails rather than skips.
fn require_python_cryptography() {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 with the 'cryptography' module is required for the cross-implementation test \
         (scripts/test installs it; by hand: pip install cryptography)"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("process starts")
}

fn admin(args: &[&str]) -> Output {
    run(Command::new(ADMIN).args(args))
}

fn python(args: &[&str]) -> Output {
    run(Command::new("python3").arg(tool()).args(args))
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn entry(out: Vec<u8>, roles: &[&str]) -> Value {
    let mut e: Value = serde_json::from_slice(&out).expect("trust entry is JSON");
    e["roles"] = json!(roles);
    e
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    rust_key: PathBuf,
    py_key: PathBuf,
    trust: PathBuf,
    doc: PathBuf,
    doc_bytes: Vec<u8>,
}

/// One key from each side; policy needs both (threshold 2), catalog either.
fn setup() -> Setup {
    require_python_cryptography();
    let dir = tempfile::tempdir().unwrap();
    let rust_key = dir.path().join("rust.pem");
    let py_key = dir.path().join("py.pem");
    let all = ["policy", "catalog"];
    let rust_entry = entry(
        ok(
            admin(&["keygen", "--out", s(&rust_key)]),
            "kiosk-admin keygen",
        ),
        &all,
    );
    let py_entry = entry(
        ok(python(&["keygen", "--out", s(&py_key)]), "python keygen"),
        &all,
    );
    let trust = dir.path().join("trust.json");
    let doc = json!({"kind": "trust", "version": 1, "keys": [rust_entry, py_entry, other_roles_entry()],
        "thresholds": {"trust": 1, "policy": 2, "schedule": 1, "catalog": 1, "app": 1, "command": 1}});
    std::fs::write(&trust, serde_json::to_vec(&doc).unwrap()).unwrap();
    let doc_path = dir.path().join("policy.json");
    // Exact bytes matter: non-ASCII, odd spacing, no trailing newline.
    let doc_bytes = "{\"kind\":\"policy\",  \"version\":3,\"target\":\"all\",\"issued_at\":\"2026-11-29T08:00:00Z\",\"rules\":[],\"note\":\"福田\"}".as_bytes().to_vec();
    std::fs::write(&doc_path, &doc_bytes).unwrap();
    Setup {
        _dir: dir,
        rust_key,
        py_key,
        trust,
        doc: doc_path,
        doc_bytes,
    }
}

/// A third key for the roles this file does not exercise, so the root is complete.
fn other_roles_entry() -> Value {
    let (_, kp) = common::ed25519_pkcs8();
    let public = ring::signature::KeyPair::public_key(&kp).as_ref().to_vec();
    json!({"keyid": kiosk_agent::trust::keyid_of(&public),
           "public_key": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &public),
           "roles": ["trust", "schedule", "app", "command"]})
}

/// A fresh key as ring generates it (PKCS#8 v2, public key included) and that key pair.
fn ring_key() -> (Vec<u8>, ring::signature::Ed25519KeyPair) {
    common::ed25519_pkcs8()
}

#[test]
fn sign_accepts_pkcs8_v2_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (der, kp) = ring_key();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
    let key = dir.path().join("v2.pem");
    std::fs::write(
        &key,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let doc = dir.path().join("doc");
    std::fs::write(&doc, b"{}").unwrap();
    let env: Value = serde_json::from_slice(&ok(
        admin(&["sign", "--key", s(&key), "--type", "app", s(&doc)]),
        "sign v2",
    ))
    .unwrap();
    let public = ring::signature::KeyPair::public_key(&kp).as_ref().to_vec();
    assert_eq!(
        env["signatures"][0]["keyid"],
        kiosk_agent::trust::keyid_of(&public)
    );
    assert_eq!(env["payloadType"], "application/vnd.kiosk.app+json");
}

#[test]
fn keygen_writes_a_private_0600_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let out = ok(admin(&["keygen", "--out", s(&key)]), "keygen");
    let e: Value = serde_json::from_slice(&out).unwrap();
    let public = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        e["public_key"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(public.len(), 32);
    assert_eq!(e["keyid"], kiosk_agent::trust::keyid_of(&public));
    assert_eq!(e["roles"], json!([]));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = std::fs::read(&key).unwrap();
    assert!(pem.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
    let again = admin(&["keygen", "--out", s(&key)]);
    assert!(!again.status.success(), "an existing key file is refused");
    assert_eq!(std::fs::read(&key).unwrap(), pem, "and left untouched");
}

#[test]
fn kiosk_admin_envelope_verifies_in_python() {
    let t = setup();
    let env = ok(
        admin(&[
            "sign",
            "--key",
            s(&t.rust_key),
            "--key",
            s(&t.py_key),
            "--type",
            "policy",
            s(&t.doc),
        ]),
        "kiosk-admin sign (ring v2 key and python v1 key)",
    );
    let env_path = t.doc.with_extension("env");
    std::fs::write(&env_path, &env).unwrap();
    let payload = ok(
        python(&[
            "verify",
            "--trust",
            s(&t.trust),
            "--type",
            "policy",
            s(&env_path),
        ]),
        "python verify",
    );
    assert_eq!(payload, t.doc_bytes);
    let wrong = python(&[
        "verify",
        "--trust",
        s(&t.trust),
        "--type",
        "catalog",
        s(&env_path),
    ]);
    assert!(!wrong.status.success(), "python refuses the wrong type too");

    let single = ok(
        admin(&[
            "sign",
            "--key",
            s(&t.rust_key),
            "--type",
            "policy",
            s(&t.doc),
        ]),
        "sign",
    );
    std::fs::write(&env_path, &single).unwrap();
    let below = python(&[
        "verify",
        "--trust",
        s(&t.trust),
        "--type",
        "policy",
        s(&env_path),
    ]);
    assert!(
        !below.status.success(),
        "one signature is below the policy threshold of 2"
    );
}

#[test]
fn python_envelope_verifies_in_kiosk_admin() {
    let t = setup();
    let env = ok(
        python(&[
            "sign",
            "--key",
            s(&t.py_key),
            "--key",
            s(&t.rust_key),
            "--type",
            "policy",
            s(&t.doc),
        ]),
        "python sign",
    );
    let env_path = t.doc.with_extension("env");
    std::fs::write(&env_path, &env).unwrap();
    let payload = ok(
        admin(&[
            "verify",
            "--trust",
            s(&t.trust),
            "--type",
            "policy",
            s(&env_path),
        ]),
        "kiosk-admin verify",
    );
    assert_eq!(payload, t.doc_bytes, "payload printed exactly as signed");
    let scoped = admin(&[
        "verify",
        "--trust",
        s(&t.trust),
        "--type",
        "policy",
        "--target",
        "all",
        s(&env_path),
    ]);
    assert_eq!(ok(scoped, "verify --target all"), t.doc_bytes);

    let refused = |args: &[&str], code: &str| {
        let out = admin(args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(code), "{args:?}: expected {code} in {err}");
    };
    refused(
        &[
            "verify",
            "--trust",
            s(&t.trust),
            "--type",
            "catalog",
            s(&env_path),
        ],
        "wrong_type",
    );
    refused(
        &[
            "verify",
            "--trust",
            s(&t.trust),
            "--type",
            "policy",
            "--target",
            "g/futian",
            s(&env_path),
        ],
        "wrong_target",
    );

    let single = ok(
        python(&["sign", "--key", s(&t.py_key), "--type", "policy", s(&t.doc)]),
        "python sign",
    );
    std::fs::write(&env_path, &single).unwrap();
    refused(
        &[
            "verify",
            "--trust",
            s(&t.trust),
            "--type",
            "policy",
            s(&env_path),
        ],
        "below_threshold",
    );

    let mut tampered: Value = serde_json::from_slice(&env).unwrap();
    tampered["payload"] = json!("e30=");
    std::fs::write(&env_path, serde_json::to_vec(&tampered).unwrap()).unwrap();
    refused(
        &[
            "verify",
            "--trust",
            s(&t.trust),
            "--type",
            "policy",
            s(&env_path),
        ],
        "bad_signature",
    );
}
