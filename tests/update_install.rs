//! The app update flow end to end on real files, a real loopback HTTP(S) server and real
//! child processes standing in for `systemctl` (a shell that appends its arguments to a log).

mod common_http;

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Entry, sha256_hex, tar};
use common_http::{Options, serve, test_pki};
use kiosk_agent::host::FixedClock;
use kiosk_agent::state::StateStore;
use kiosk_agent::update::fetch::FetchOptions;
use kiosk_agent::update::journal::{Journal, JournalStore, Phase};
use kiosk_agent::update::{
    AppDoc, Installer, InstallerConfig, Outcome, Progress, Recovery, Status, Step, last_outcomes,
    list_releases,
};

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    apps: PathBuf,
    state: PathBuf,
    log: PathBuf,
    limit: u64,
    ca_file: Option<PathBuf>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Env {
            apps: root.join("apps"),
            state: root.join("state"),
            log: root.join("systemctl.log"),
            root,
            _dir: dir,
            limit: 64 * 1024 * 1024,
            ca_file: None,
        }
    }

    fn installer(&self) -> Installer {
        let cfg = InstallerConfig {
            apps_dir: self.apps.clone(),
            state_dir: self.state.clone(),
            fetch: FetchOptions {
                ca_file: self.ca_file.clone(),
                ..Default::default()
            },
            keep_releases: 2,
            max_unpacked_bytes: self.limit,
            systemctl: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo \"$*\" >> '{}'", self.log.display()),
                "systemctl".into(),
            ],
            command_timeout: Duration::from_secs(30),
            health_retry_interval: Duration::from_millis(100),
            helper: None,
        };
        let clock = Arc::new(FixedClock::new("2026-03-01T03:00:00Z".parse().unwrap()));
        Installer::new(cfg, clock).unwrap()
    }

    fn app(&self) -> PathBuf {
        self.apps.join("demo")
    }

    fn current(&self) -> Option<String> {
        let t = fs::read_link(self.app().join("current")).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    fn log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Everything under the app directory except the releases' contents.
    fn app_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.app())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.app().join("releases"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn write_artifact(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.root.join("artifacts").join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        format!("file://{}", p.display())
    }
}

/// Health passes only when the switched-to release holds a file called `ok`, so the check
/// really looks at what `current` points to.
fn doc(env: &Env, release: &str, url: &str, bytes: &[u8], format: &str) -> AppDoc {
    doc_with(
        env,
        release,
        url,
        &sha256_hex(bytes),
        bytes.len() as u64,
        format,
    )
}

fn doc_with(env: &Env, release: &str, url: &str, sha256: &str, size: u64, format: &str) -> AppDoc {
    let v = serde_json::json!({
        "kind": "app", "version": 1, "target": "t/sz-ft-0001", "issued_at": "2026-03-01T00:00:00Z",
        "name": "demo", "release": release,
        "artifact": {"url": url, "sha256": sha256, "size": size, "format": format},
        "restart_units": ["kiosk-ui.service"],
        "health": {"type": "exec", "cmd": ["test", "-f", env.app().join("current/ok").display().to_string()], "timeout_s": 1}
    });
    AppDoc::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
}

/// A release archive: `ok` (when healthy), `bin/app`, and `lib -> bin` (a link inside).
fn release_tar(release: &str, healthy: bool, gz: bool) -> Vec<u8> {
    let app = format!("app {release}");
    let mut entries = vec![Entry::File("bin/app", app.as_bytes())];
    if healthy {
        entries.push(Entry::File("ok", b""));
    }
    entries.push(Entry::Link("lib", "bin"));
    let raw = tar(&entries);
    if gz { gzip(&raw) } else { raw }
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    common::gzip(raw, flate2::Compression::fast())
}

/// A raw tar entry whose name is written byte for byte, bypassing the builder's own checks,
/// as a hostile or broken pipeline could produce.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_old();
    {
        let bytes = h.as_mut_bytes();
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// Installs release 1.0 (healthy) from a file URL so a later test has something to protect.
fn install_base(env: &Env, inst: &Installer) {
    let bytes = release_tar("1.0", true, true);
    let url = env.write_artifact("1.0.tar.gz", &bytes);
    let o = inst.install(&doc(env, "1.0", &url, &bytes, "tar.gz"), &mut |_| {});
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(env.current().as_deref(), Some("1.0"));
}

fn assert_untouched(env: &Env, o: &Outcome, code: &str) {
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert_eq!(o.code, code, "{o:?}");
    assert_eq!(o.event_code(), "update.failed");
    assert_eq!(env.current().as_deref(), Some("1.0"));
    assert_eq!(env.releases(), vec!["1.0"]);
    assert_eq!(
        env.app_entries(),
        vec!["current", "releases"],
        "no staging left behind"
    );
    assert_eq!(
        fs::read_to_string(env.app().join("current/bin/app")).unwrap(),
        "app 1.0"
    );
}

#[test]
fn installs_over_http_switches_and_reports_progress() {
    let env = Env::new();
    let inst = env.installer();
    install_base(&env, &inst);

    let bytes = release_tar("2.0", true, true);
    let srv = serve(
        bytes.clone(),
        Options {
            honour_range: true,
            ..Default::default()
        },
    );
    let d = doc(&env, "2.0", &srv.url("ui-2.0.tar.gz"), &bytes, "tar.gz");
    let mut seen: Vec<Progress> = vec![];
    let o = inst.install(&d, &mut |p| seen.push(p));

    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(o.event_code(), "update.applied");
    assert_eq!(o.previous.as_deref(), Some("1.0"));
    assert_eq!(env.current().as_deref(), Some("2.0"));
    assert_eq!(
        fs::read_to_string(env.app().join("current/lib/app")).unwrap(),
        "app 2.0"
    );
    assert_eq!(srv.ranges(), vec![None]);
    assert_eq!(
        env.log_lines(),
        vec!["restart kiosk-ui.service", "restart kiosk-ui.service"]
    );

    let steps: Vec<Step> = seen.iter().filter_map(|p| p.step).collect();
    assert_eq!(steps.first(), Some(&Step::Downloading));
    assert_eq!(steps.last(), Some(&Step::HealthCheck));
    assert!(steps.contains(&Step::Verifying) && steps.contains(&Step::Installing));
    let dl: Vec<u8> = seen
        .iter()
        .filter(|p| p.step == Some(Step::Downloading))
        .map(|p| p.percent)
        .collect();
    assert_eq!(dl.last(), Some(&100));
    assert!(seen.iter().all(|p| p.status == Status::InProgress));

    let apps = list_releases(&env.apps).unwrap();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].current.as_deref(), Some("2.0"));
    assert_eq!(apps[0].releases, vec!["1.0", "2.0"]);
    let last = last_outcomes(&env.state);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].release, "2.0");
    assert_eq!(last[0].status, Status::Applied);

    // The same release again changes nothing.
    let again = inst.install(&d, &mut |_| {});
    assert_eq!(again.code, "already_current");
    assert_eq!(srv.ranges().len(), 1);
}

#[test]
fn prunes_beyond_keep_releases_but_keeps_current_and_previous() {
    let env = Env::new();
    let inst = env.installer();
    install_base(&env, &inst);
    for r in ["2.0", "3.0"] {
        let bytes = release_tar(r, true, false);
        let url = env.write_artifact(r, &bytes);
        let o = inst.install(&doc(&env, r, &url, &bytes, "tar"), &mut |_| {});
        assert_eq!(o.status, Status::Applied, "{o:?}");
    }
    assert_eq!(env.releases(), vec!["2.0", "3.0"]);
    assert_eq!(env.current().as_deref(), Some("3.0"));
}

#[test]
fn hash_mismatch_is_refused_and_discarded() {
    let env = Env::new();
    let inst = env.installer();
    install_base(&env, &inst);
    let bytes = release_tar("2.0", true, true);
    let url = env.write_artifact("2.0.tar.gz", &bytes);
    let wrong = "0".repeat(64);
    let o = inst.install(
        &doc_with(&env, "2.0", &url, &wrong, bytes.len() as u64, "tar.gz"),
        &mut |_| {},
    );
    assert_untouched(&env, &o, "hash_mismatch");
    assert!(
        o.message
            .contains(&format!("expected {wrong}, got {}", sha256_hex(&bytes))),
        "{}",
        o.message
    );
    assert!(o.message.contains("discarded"));
    assert!(!o.retryable);
    let downloads = env.state.join("update/downloads");
    assert_eq!(
        fs::read_dir(downloads).unwrap().count(),
        0,
        "bad download deleted"
    );
    assert!(!env.state.join("update/journal/demo.json").exists());
}

#[test]
fn size_mismatch_over_http_is_refused() {
    let env = Env::new();
    let inst = env.installer();
    install_base(&env, &inst);
    let bytes = release_tar("2.0", true, true);
    let srv = serve(bytes.clone(), Options::default());
    // Declared shorter than what the server sends: never read past the declared size.
    let short = (bytes.len() - 10) as u64;
    let o = inst.install(
        &doc_with(
            &env,
            "2.0",
            &srv.url("a"),
            &sha256_hex(&bytes[..short as usize]),
            short,
            "tar.gz",
        ),
        &mut |_| {},
    );
    assert_untouched(&env, &o, "size_mismatch");
    // Declared longer: the server ends early; the partial is kept to resume, still nothing switches.
    let o = inst.install(
        &doc_with(
            &env,
            "2.0",
            &srv.url("a"),
            &"1".repeat(64),
            bytes.len() as u64 + 10,
            "tar.gz",
        ),
        &mut |_| {},
    );
    assert_untouched(&env, &o, "size_mismatch");
}

fn refused_archive(
    entries: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    limit: Option<u64>,
) -> (Env, Outcome) {
    let mut env = Env::new();
    if let Some(l) = limit {
        env.limit = l;
    }
    let inst = env.installer();
    install_base(&env, &inst);
    let mut b = tar::Builder::new(Vec::new());
    entries(&mut b);
    let bytes = gzip(&b.into_inner().unwrap());
    let url = env.write_artifact("bad.tar.gz", &bytes);
    let o = inst.install(&doc(&env, "2.0", &url, &bytes, "tar.gz"), &mut |_| {});
    (env, o)
}

#[test]
fn traversal_archive_is_refused() {
    let (env, o) = refused_archive(
        |b| {
            raw_entry(b, "ok", tar::EntryType::Regular, "", b"");
            raw_entry(b, "../x", tar::EntryType::Regular, "", b"escaped");
            raw_entry(b, "a/../../../y", tar::EntryType::Regular, "", b"escaped");
        },
        None,
    );
    assert_untouched(&env, &o, "unpack_refused");
    assert!(o.message.contains("../x"), "{}", o.message);
    assert!(!env.app().join("x").exists());
    assert!(!env.apps.join("y").exists());
}

#[test]
fn absolute_path_archive_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned");
    let (env, o) = refused_archive(
        |b| {
            raw_entry(
                b,
                &target.display().to_string(),
                tar::EntryType::Regular,
                "",
                b"x",
            )
        },
        None,
    );
    assert_untouched(&env, &o, "unpack_refused");
    assert!(o.message.contains("absolute path"), "{}", o.message);
    assert!(!target.exists());
}

#[test]
fn symlink_out_archives_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            outside.path().display().to_string(),
            "symlink to an absolute path",
        ),
        ("../../../..".into(), "outside the release"),
        ("sub/../..".into(), "after a name"),
    ];
    for (link, why) in cases {
        let (env, o) = refused_archive(
            |b| {
                raw_entry(b, "evil", tar::EntryType::Symlink, &link, b"");
                raw_entry(b, "evil/pwned", tar::EntryType::Regular, "", b"x");
            },
            None,
        );
        assert_untouched(&env, &o, "unpack_refused");
        assert!(o.message.contains(why), "{link}: {}", o.message);
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
    // A hard link to a file outside the release is refused too.
    let (env, o) = refused_archive(
        |b| raw_entry(b, "h", tar::EntryType::Link, "../../../etc/passwd", b""),
        None,
    );
    assert_untouched(&env, &o, "unpack_refused");
    // Device files never reach the disk.
    let (env, o) = refused_archive(|b| raw_entry(b, "dev", tar::EntryType::Char, "", b""), None);
    assert_untouched(&env, &o, "unpack_refused");
}

#[test]
fn gzip_bomb_is_stopped_at_the_limit() {
    let (env, o) = refused_archive(
        |b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(8 * 1024 * 1024);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(
                &mut h,
                "zeros",
                std::io::Read::take(std::io::repeat(0), 8 * 1024 * 1024),
            )
            .unwrap();
        },
        Some(1024 * 1024),
    );
    assert_untouched(&env, &o, "too_large");
    assert!(o.message.contains("max_unpacked_bytes"), "{}", o.message);
}

#[test]
fn failing_health_check_rolls_back() {
    let env = Env::new();
    let inst = env.installer();
    install_base(&env, &inst);
    let bytes = release_tar("2.0", false, true);
    let url = env.write_artifact("2.0.tar.gz", &bytes);
    let o = inst.install(&doc(&env, "2.0", &url, &bytes, "tar.gz"), &mut |_| {});
    assert_eq!(o.status, Status::RolledBack, "{o:?}");
    assert_eq!(o.event_code(), "update.rolled_back");
    assert_eq!(o.code, "health_failed");
    assert!(
        o.message.contains("switched back to release 1.0"),
        "{}",
        o.message
    );
    assert_eq!(env.current().as_deref(), Some("1.0"));
    assert_eq!(o.current.as_deref(), Some("1.0"));
    // Restarted for 1.0, for 2.0, and again after switching back.
    assert_eq!(env.log_lines().len(), 3);
    assert_eq!(last_outcomes(&env.state)[0].status, Status::RolledBack);
    assert!(!env.state.join("update/journal/demo.json").exists());
}

#[test]
fn unit_health_check_goes_through_systemctl() {
    let env = Env::new();
    let inst = env.installer();
    let bytes = b"#!/bin/sh\n".to_vec();
    let url = env.write_artifact("kiosk-tool", &bytes);
    let v = serde_json::json!({
        "kind": "app", "version": 1, "target": "all", "issued_at": "2026-03-01T00:00:00Z",
        "name": "demo", "release": "1.0",
        "artifact": {"url": url, "sha256": sha256_hex(&bytes), "size": bytes.len(), "format": "file"},
        "restart_units": ["kiosk-ui.service"],
        "health": {"type": "unit", "unit": "kiosk-ui.service", "timeout_s": 0}
    });
    let d = AppDoc::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    let o = inst.install(&d, &mut |_| {});
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(
        env.log_lines(),
        vec![
            "restart kiosk-ui.service",
            "is-active --quiet kiosk-ui.service"
        ]
    );
    assert_eq!(
        fs::read(env.app().join("current/kiosk-tool")).unwrap(),
        bytes
    );
}

#[test]
fn interrupted_download_resumes_after_restart_with_range() {
    let env = Env::new();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let srv = serve(
        body.clone(),
        Options {
            honour_range: true,
            cut_first_after: Some(100_000),
            ..Default::default()
        },
    );
    let mut d = doc(&env, "1.0", &srv.url("tool"), &body, "file");
    d.health = None;
    let o = env.installer().install(&d, &mut |_| {});
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert_eq!(o.code, "download_failed");
    assert!(o.retryable);
    assert!(o.message.contains("will resume"), "{}", o.message);
    assert_eq!(env.current(), None);
    let partial = env
        .state
        .join(format!("update/downloads/demo-{}.part", sha256_hex(&body)));
    let kept = fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < body.len() as u64, "kept {kept}");

    // A new agent process: recovery hands the interrupted install back to run again.
    let inst = env.installer();
    let rec = inst.resume_or_recover(&mut |_| {}).unwrap();
    assert_eq!(rec, vec![Recovery::Resume(d.clone())]);
    let o = inst.install(&d, &mut |_| {});
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(srv.ranges(), vec![None, Some(format!("bytes={kept}-"))]);
    assert_eq!(fs::read(env.app().join("current/tool")).unwrap(), body);
    assert!(!partial.exists(), "download removed once installed");
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let env = Env::new();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    let srv = serve(
        body.clone(),
        Options {
            honour_range: false,
            cut_first_after: Some(50_000),
            ..Default::default()
        },
    );
    let mut d = doc(&env, "1.0", &srv.url("tool"), &body, "file");
    d.health = None;
    let inst = env.installer();
    assert_eq!(inst.install(&d, &mut |_| {}).status, Status::Failed);
    let o = inst.install(&d, &mut |_| {});
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(srv.ranges().len(), 2);
    assert!(srv.ranges()[1].is_some(), "a range was asked for");
    assert_eq!(fs::read(env.app().join("current/tool")).unwrap(), body);
}

#[test]
fn https_download_with_test_ca() {
    let pki = test_pki();
    let mut env = Env::new();
    let ca = env.root.join("ca.pem");
    fs::write(&ca, &pki.ca_pem).unwrap();
    let bytes = release_tar("1.0", true, true);
    let srv = serve(
        bytes.clone(),
        Options {
            honour_range: true,
            tls: Some(pki.server.clone()),
            ..Default::default()
        },
    );
    let url = srv.https_url("ui.tar.gz");

    // Without the CA the server is not trusted and nothing is installed.
    let other = test_pki();
    let other_ca = env.root.join("other.pem");
    fs::write(&other_ca, &other.ca_pem).unwrap();
    env.ca_file = Some(other_ca);
    let o = env
        .installer()
        .install(&doc(&env, "1.0", &url, &bytes, "tar.gz"), &mut |_| {});
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert_eq!(env.current(), None);

    env.ca_file = Some(ca);
    let o = env
        .installer()
        .install(&doc(&env, "1.0", &url, &bytes, "tar.gz"), &mut |_| {});
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(env.current().as_deref(), Some("1.0"));
}

// ---- recovery from a journal left in each phase ----------------------------------------

/// Sets up 1.0 in force and release 2.0 (healthy or not) unpacked on disk, with a journal in
/// `phase` and `current` where a crash in that phase would have left it. The artifact file is
/// deleted, so a recovery that tried to download again would fail.
fn crashed_in(phase: Phase, healthy: bool, current_at_new: bool) -> (Env, AppDoc) {
    let env = Env::new();
    let inst = env.installer();
    install_base(&env, &inst);
    fs::remove_file(&env.log).unwrap();
    let bytes = release_tar("2.0", healthy, true);
    let url = env.write_artifact("2.0.tar.gz", &bytes);
    let d = doc(&env, "2.0", &url, &bytes, "tar.gz");
    if phase != Phase::Downloading {
        let art = PathBuf::from(url.trim_start_matches("file://"));
        kiosk_agent::update::unpack::unpack_release(
            &art,
            d.artifact.format,
            "x",
            &env.app().join(".staging-2.0"),
            &env.app().join("releases/2.0"),
            env.limit,
        )
        .unwrap();
        fs::remove_file(&art).unwrap();
    }
    if current_at_new {
        let tmp = env.app().join(".cur");
        std::os::unix::fs::symlink("releases/2.0", &tmp).unwrap();
        fs::rename(&tmp, env.app().join("current")).unwrap();
    }
    let j = Journal {
        doc: d.clone(),
        phase,
        previous: Some("1.0".into()),
        started_at: "2026-03-01T02:59:00Z".into(),
        updated_at: "2026-03-01T02:59:30Z".into(),
    };
    JournalStore::new(StateStore::open(&env.state).unwrap())
        .save(&j)
        .unwrap();
    (env, d)
}

fn recover_finished(env: &Env) -> Outcome {
    let rec = env.installer().resume_or_recover(&mut |_| {}).unwrap();
    assert_eq!(rec.len(), 1);
    match rec.into_iter().next().unwrap() {
        Recovery::Finished(o) => o,
        other => panic!("expected a finished recovery, got {other:?}"),
    }
}

fn assert_settled(env: &Env, release: &str) {
    assert_eq!(env.current().as_deref(), Some(release));
    assert_eq!(
        fs::read_to_string(env.app().join("current/bin/app")).unwrap(),
        format!("app {release}"),
        "current points at a complete release"
    );
    assert!(!env.state.join("update/journal/demo.json").exists());
    assert!(env.app_entries().iter().all(|e| !e.starts_with('.')));
}

#[test]
fn recovery_from_downloading_resumes_to_applied() {
    let (env, d) = crashed_in(Phase::Downloading, true, false);
    let inst = env.installer();
    assert_eq!(
        inst.resume_or_recover(&mut |_| {}).unwrap(),
        vec![Recovery::Resume(d.clone())]
    );
    assert_eq!(
        env.current().as_deref(),
        Some("1.0"),
        "nothing switched before the caller acts"
    );
    assert_eq!(inst.install(&d, &mut |_| {}).status, Status::Applied);
    assert_settled(&env, "2.0");
}

#[test]
fn recovery_from_unpacked_reuses_the_release_without_downloading() {
    let (env, d) = crashed_in(Phase::Unpacked, true, false);
    let inst = env.installer();
    assert_eq!(
        inst.resume_or_recover(&mut |_| {}).unwrap(),
        vec![Recovery::Resume(d.clone())]
    );
    let o = inst.install(&d, &mut |_| {});
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_settled(&env, "2.0");
}

#[test]
fn recovery_from_unpacked_after_the_rename_landed_finishes() {
    let (env, _) = crashed_in(Phase::Unpacked, true, true);
    let o = recover_finished(&env);
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_settled(&env, "2.0");
}

#[test]
fn recovery_from_switched_restarts_and_applies() {
    let (env, _) = crashed_in(Phase::Switched, true, true);
    let o = recover_finished(&env);
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert_eq!(env.log_lines(), vec!["restart kiosk-ui.service"]);
    assert_settled(&env, "2.0");
}

#[test]
fn recovery_from_health_with_a_bad_release_rolls_back() {
    let (env, _) = crashed_in(Phase::Health, false, true);
    let o = recover_finished(&env);
    assert_eq!(o.status, Status::RolledBack, "{o:?}");
    assert_eq!(
        env.log_lines().len(),
        2,
        "restarted for the check and after switching back"
    );
    assert_settled(&env, "1.0");
}

#[test]
fn recovery_from_rolling_back_completes_the_rollback() {
    for current_at_new in [true, false] {
        let (env, _) = crashed_in(Phase::RollingBack, true, current_at_new);
        let o = recover_finished(&env);
        assert_eq!(o.status, Status::RolledBack, "{o:?}");
        assert_settled(&env, "1.0");
    }
}

#[test]
fn recovery_from_done_only_tidies_up() {
    let (env, _) = crashed_in(Phase::Done, true, true);
    let o = recover_finished(&env);
    assert_eq!(o.status, Status::Applied, "{o:?}");
    assert!(env.log_lines().is_empty(), "nothing restarted again");
    assert_settled(&env, "2.0");
}
