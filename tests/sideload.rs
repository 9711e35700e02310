//! Side-loading against a real Mosquitto and the real daemon: a signed document handed in on
//! the local socket (`kioskctl apply`, a USB bundle) takes the path of one from
//! `P/{its target}/desired/{kind}`: applied while the broker is down and reported once it is
//! back, refused for a rollback, a forgery or another target without changing anything, sharing
//! the anti-rollback counter with MQTT, and reserved to the admin group.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";

fn catalog(version: u64, target: &str, status: &str) -> Vec<u8> {
    format!(
        "{{\"kind\": \"catalog\", \"version\": {version}, \"target\": \"{target}\", \"issued_at\": \"2026-11-29T08:00:00Z\",\n \"items\": [{{\"id\": \"id-card-renewal\", \"name\": \"身份证换领\", \"status\": \"{status}\"}}]}}"
    )
    .into_bytes()
}

fn setup(id: &str, extra: &str) -> Rig {
    Rig::new(P, id, extra)
}

impl Rig {
    fn start(&mut self) -> Agent {
        let a = Agent::start(&self.cfg);
        self.wait_online();
        a
    }

    /// Writes an envelope to a file, as it would sit on a stick.
    fn envelope(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.term.path(&format!("stick/{name}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn kioskctl(&self, args: &[&str]) -> (bool, String) {
        let (ok, out, err) = kioskctl(&self.term.socket(), args);
        (ok, out + &err)
    }

    fn apply(&self, kind: &str, envelope: &[u8]) -> Value {
        let env: Value = serde_json::from_slice(envelope).unwrap();
        socket_call(
            &self.term.socket(),
            &json!({"op": "apply", "kind": kind, "envelope": env}),
        )
    }

    fn catalog_file(&self) -> Vec<u8> {
        std::fs::read(self.term.path("state/catalog/current.json")).unwrap_or_default()
    }
}

#[test]
fn a_catalog_side_loaded_while_the_broker_is_down_is_applied_and_reported_after_reconnect() {
    let mut s = setup("sz-ft-0701", "");
    let _agent = s.start();
    s.broker.stop();
    let doc = catalog(4, "g/futian", "suspended");
    let file = s.envelope("catalog.dsse", &sign("catalog", &doc, &[&s.term.admin]));
    let (ok, out) = s.kioskctl(&["apply", "--kind", "catalog", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("applied") && out.contains("g/futian"), "{out}");
    assert_eq!(s.catalog_file(), doc, "in force at once, byte for byte");

    s.broker.restart();
    let r = s
        .platform
        .wait_json("/reported/catalog", |v| v["status"] == "applied");
    assert_eq!(
        (r["version"].as_u64(), r["target"].as_str()),
        (Some(4), Some("g/futian"))
    );
    // The group's scope holds it: the terminal's own document still takes precedence.
    let me = s.me();
    let mine = catalog(1, &me, "active");
    let r = s.apply("catalog", &sign("catalog", &mine, &[&s.term.admin]));
    assert_eq!(r["data"]["status"], "applied", "{r}");
    assert_eq!(s.catalog_file(), mine);
    let newer_group = catalog(5, "g/futian", "offline");
    let r = s.apply("catalog", &sign("catalog", &newer_group, &[&s.term.admin]));
    assert_eq!(r["data"]["status"], "superseded", "{r}");
    assert_eq!(r["data"]["details"]["in_force"]["target"], me.as_str());
    assert_eq!(s.catalog_file(), mine);
}

#[test]
fn a_side_loaded_rollback_forgery_or_wrong_target_is_refused_and_changes_nothing() {
    let mut s = setup("sz-ft-0702", "");
    let _agent = s.start();
    let me = s.me();
    let admin = &s.term.admin;
    let good = catalog(3, &me, "suspended");
    let r = s.apply("catalog", &sign("catalog", &good, &[admin]));
    assert_eq!(r["data"]["status"], "applied", "{r}");
    assert_eq!(s.catalog_file(), good);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "rollback",
            sign("catalog", &catalog(2, &me, "active"), &[admin]),
        ),
        (
            "unknown_key",
            sign("catalog", &catalog(9, &me, "active"), &[&key()]),
        ),
        ("bad_signature", {
            let mut env: Value =
                serde_json::from_slice(&sign("catalog", &catalog(9, &me, "active"), &[admin]))
                    .unwrap();
            use base64::Engine as _;
            env["payload"] =
                json!(base64::engine::general_purpose::STANDARD.encode(catalog(9, &me, "offline")));
            serde_json::to_vec(&env).unwrap()
        }),
        (
            "wrong_target",
            sign("catalog", &catalog(9, "t/sz-ft-9999", "active"), &[admin]),
        ),
        (
            "wrong_target",
            sign("catalog", &catalog(9, "g/luohu", "active"), &[admin]),
        ),
        (
            "wrong_type",
            sign("schedule", &catalog(9, &me, "active"), &[admin]),
        ),
    ];
    for (reason, env) in &cases {
        let r = s.apply("catalog", env);
        assert_eq!(r["ok"], false, "{reason}: {r}");
        assert_eq!(r["error"]["code"], *reason, "{r}");
        assert_eq!(r["error"]["report"]["status"], "rejected", "{r}");
        let want = reason.to_string();
        s.platform.wait_json("/events", move |v| {
            v["code"] == "security.rejected" && v["details"]["reason"] == want.as_str()
        });
    }
    assert_eq!(s.catalog_file(), good, "nothing changed");
    // kioskctl says why and exits non-zero.
    let file = s.envelope("catalog.dsse", &cases[0].1);
    let (ok, out) = s.kioskctl(&["apply", file.to_str().unwrap()]);
    assert!(!ok && out.contains("rollback"), "{out}");
    // The side-loaded version counts on MQTT too: an older one from the broker is a rollback.
    s.platform.publish(
        &format!("{P}/t/{}/desired/catalog", s.term.id),
        sign("catalog", &catalog(2, &me, "offline"), &[&s.term.admin]),
        false,
    );
    let r = s.platform.wait_json("/reported/catalog", |v| {
        v["status"] == "rejected" && v["version"] == 2 && v["details"]["reason"] == "rollback"
    });
    assert_eq!(r["details"]["in_force"]["version"], 3);
    assert_eq!(s.catalog_file(), good);
}

fn release_tar_gz() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let body = b"kiosk-ui 2.4.0";
    h.set_size(body.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, "bin/kiosk-ui", &body[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    e.finish().unwrap()
}

fn admin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiosk-admin")
}

#[test]
fn a_usb_bundle_is_applied_in_order_with_the_app_from_the_stick() {
    let mut s = setup("sz-ft-0703", "");
    let _agent = s.start();
    let me = s.me();
    // The platform side: signed documents and the artifact, the app pointing at the stick.
    let work = s.term.path("platform");
    std::fs::create_dir_all(&work).unwrap();
    let mount = s.term.path("media/kiosk-usb");
    let art = release_tar_gz();
    std::fs::write(work.join("kiosk-ui-2.4.0.tar.gz"), &art).unwrap();
    let sha = {
        let d = ring::digest::digest(&ring::digest::SHA256, &art);
        hex::encode(d.as_ref())
    };
    let app = serde_json::to_vec(&json!({
        "kind": "app", "version": 1, "target": me, "issued_at": "2026-11-29T08:00:00Z",
        "name": "kiosk-ui", "release": "2.4.0",
        "artifact": {"url": format!("file://{}/artifacts/kiosk-ui-2.4.0.tar.gz", mount.display()),
            "sha256": sha, "size": art.len(), "format": "tar.gz"},
        "restart_units": [],
    }))
    .unwrap();
    let schedule = serde_json::to_vec(&json!({
        "kind": "schedule", "version": 1, "target": "all", "issued_at": "2026-11-29T08:00:00Z",
        "timezone": "Asia/Shanghai",
        "weekly": [{"days": ["mon","tue","wed","thu","fri","sat","sun"], "on": "00:00", "off": "23:59"}],
        "off_action": "none", "warn_minutes": 10,
    }))
    .unwrap();
    let mut envs = Vec::new();
    for (role, name, bytes) in [
        ("app", "app.env", app),
        ("catalog", "cat.env", catalog(1, "g/futian", "active")),
        ("schedule", "sched.env", schedule),
    ] {
        let p = work.join(name);
        std::fs::write(&p, sign(role, &bytes, &[&s.term.admin])).unwrap();
        envs.push(p);
    }
    run_ok(
        Command::new(admin_bin())
            .arg("bundle")
            .arg("--out")
            .arg(&mount)
            .arg("--mount")
            .arg(&mount)
            .arg("--artifact")
            .arg(work.join("kiosk-ui-2.4.0.tar.gz"))
            .args(&envs),
    );
    for f in [
        "catalog.dsse",
        "schedule.dsse",
        "app-kiosk-ui.dsse",
        "artifacts/kiosk-ui-2.4.0.tar.gz",
    ] {
        assert!(mount.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read(mount.join("catalog.dsse")).unwrap(),
        std::fs::read(&envs[1]).unwrap(),
        "envelopes copied byte for byte"
    );
    // A stray file on the stick is listed, not applied.
    std::fs::write(mount.join("firmware.dsse"), "{}").unwrap();

    let (ok, out) = s.kioskctl(&["apply", mount.to_str().unwrap()]);
    assert!(!ok, "the stray file makes the run fail: {out}");
    let lines: Vec<&str> = out.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {out}"))
    };
    assert!(pos("schedule.dsse") < pos("catalog.dsse"), "{out}");
    assert!(pos("catalog.dsse") < pos("app-kiosk-ui.dsse"), "{out}");
    assert!(pos("app-kiosk-ui.dsse") < pos("firmware.dsse"), "{out}");
    assert!(lines[pos("schedule.dsse")].contains("applied"), "{out}");
    assert!(lines[pos("catalog.dsse")].contains("applied"), "{out}");
    assert!(
        lines[pos("app-kiosk-ui.dsse")].contains("in_progress"),
        "{out}"
    );
    assert!(lines[pos("firmware.dsse")].contains("skipped"), "{out}");
    let r = s.platform.wait_json("/reported/app/kiosk-ui", |v| {
        v["status"] == "applied" || v["status"] == "failed"
    });
    assert_eq!(r["status"], "applied", "{r}");
    let current = s.term.path("apps/kiosk-ui/current/bin/kiosk-ui");
    assert_eq!(std::fs::read(current).unwrap(), b"kiosk-ui 2.4.0");
    s.platform.wait_json("/reported/schedule", |v| {
        v["status"] == "applied" && v["target"] == "all"
    });
}

#[test]
fn apply_from_a_read_group_peer_is_forbidden() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root to run a peer under another uid"
    );
    let mut s = setup(
        "sz-ft-0704",
        "[local]\nread_group = \"nogroup\"\nadmin_group = \"adm\"\n",
    );
    let _agent = s.start();
    for d in [s.term.dir.path().to_path_buf(), s.term.path("run")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let me = s.me();
    let doc = catalog(2, &me, "active");
    let file = s.envelope("catalog.dsse", &sign("catalog", &doc, &[&s.term.admin]));
    std::fs::set_permissions(s.term.path("stick"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sock = s.term.socket();
    // The kiosk UI's user (read group) may count usage and beat, not side-load.
    let (ok, out) = kioskctl_as(
        65534,
        &[gid("nogroup")],
        &sock,
        &["apply", file.to_str().unwrap()],
    );
    assert!(!ok && out.contains("forbidden"), "{out}");
    assert!(s.catalog_file().is_empty(), "nothing applied");
    let (ok, out) = kioskctl_as(65534, &[gid("nogroup")], &sock, &["usage", "--lang", "en"]);
    assert!(ok && out.contains("nothing recorded today"), "{out}");
    // An admin-group member may.
    let (ok, out) = kioskctl_as(
        65534,
        &[gid("nogroup"), gid("adm")],
        &sock,
        &["apply", file.to_str().unwrap()],
    );
    assert!(ok && out.contains("applied"), "{out}");
    assert_eq!(s.catalog_file(), doc);
}

#[test]
fn a_side_loaded_trust_root_is_in_force_for_what_follows_it() {
    let mut s = setup("sz-ft-0705", "");
    let _agent = s.start();
    let me = s.me();
    let next = key();
    let mut root = trust_doc(2, &[(&next, ALL_ROLES)], thresholds(1));
    root["target"] = json!(me);
    root["issued_at"] = json!("2026-11-29T08:00:00Z");
    let root = serde_json::to_vec(&root).unwrap();
    // Signed by the root in force and by the new one, as a rotation must be.
    let r = s.apply("trust", &sign("trust", &root, &[&s.term.admin, &next]));
    assert_eq!(r["data"]["status"], "applied", "{r}");
    assert_eq!(r["data"]["version"], 2);
    let old = s.apply(
        "catalog",
        &sign("catalog", &catalog(1, &me, "active"), &[&s.term.admin]),
    );
    assert_eq!(
        old["error"]["code"], "unknown_key",
        "the old key is retired: {old}"
    );
    let doc = catalog(1, &me, "active");
    let r = s.apply("catalog", &sign("catalog", &doc, &[&next]));
    assert_eq!(r["data"]["status"], "applied", "{r}");
    assert_eq!(s.catalog_file(), doc);
    s.platform.wait_json("/reported/trust", |v| {
        v["status"] == "applied" && v["version"] == 2
    });
    // A kind outside the contract is a bad request, not a document.
    let r = s.apply("firmware", &sign("catalog", &doc, &[&next]));
    assert_eq!(r["error"]["code"], "invalid", "{r}");
}

#[test]
fn kiosk_admin_bundle_refuses_an_artifact_that_does_not_match_its_document() {
    let term = Terminal::new("sz-ft-0706");
    let work = term.path("platform");
    std::fs::create_dir_all(&work).unwrap();
    let art = release_tar_gz();
    std::fs::write(work.join("ui.tar.gz"), &art).unwrap();
    let doc = |url: &str, sha: &str| {
        serde_json::to_vec(&json!({
            "kind": "app", "version": 1, "target": "all", "issued_at": "2026-11-29T08:00:00Z",
            "name": "kiosk-ui", "release": "2.4.0",
            "artifact": {"url": url, "sha256": sha, "size": art.len(), "format": "tar.gz"},
        }))
        .unwrap()
    };
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &art).as_ref());
    let run = |bytes: &[u8], out: &str| {
        let env = work.join("app.env");
        std::fs::write(&env, sign("app", bytes, &[&term.admin])).unwrap();
        let o = Command::new(admin_bin())
            .args(["bundle", "--mount", "/media/kiosk-usb", "--artifact"])
            .arg(work.join("ui.tar.gz"))
            .arg("--out")
            .arg(term.path(out))
            .arg(&env)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, err) = run(
        &doc(
            "file:///media/kiosk-usb/artifacts/ui.tar.gz",
            &"0".repeat(64),
        ),
        "b1",
    );
    assert!(
        !ok && err.contains("does not match the signed sha256"),
        "{err}"
    );
    let (ok, err) = run(&doc("file:///mnt/elsewhere/ui.tar.gz", &sha), "b2");
    assert!(
        !ok && err.contains("file:///media/kiosk-usb/artifacts/ui.tar.gz"),
        "{err}"
    );
    assert!(
        !term.path("b1").exists() && !term.path("b2").exists(),
        "nothing written"
    );
    let (ok, err) = run(
        &doc("file:///media/kiosk-usb/artifacts/ui.tar.gz", &sha),
        "b3",
    );
    assert!(ok, "{err}");
    assert!(term.path("b3/app-kiosk-ui.dsse").is_file());
}
