//! Least privilege, end to end: the real daemon runs as a throwaway system account (setpriv,
//! no groups, no capabilities) against a root-owned fixture host, and the real helper runs as
//! root. The account cannot write /etc, other users' files or /opt outside what it owns, nor
//! signal other processes; the daemon still reports, verifies, remediates, restarts, installs
//! and powers off on schedule, every privileged step through the helper. Without a helper the
//! same daemon's remediation fails on permissions and the host is unchanged.

mod common;
mod common_http;
mod common_priv;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use common_priv::*;
use serde_json::{Value, json};

const P: &str = "kiosk/v1";
const ZONE: &str = "Asia/Shanghai";
/// How far ahead of the daemon's clock the scheduled power-off lies.
const OFF_IN_S: i64 = 6;

/// The daemon as the unprivileged account.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let log = config.with_extension("daemon.log");
        let mut c = as_daemon(agent_bin());
        c.arg("--config")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        Daemon {
            child: c.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A terminal tree: the host fixture and the trust root stay root's; state, socket directory
/// and apps directory are the daemon account's, as the package lays them out.
fn terminal(id: &str) -> Terminal {
    daemon_user();
    let term = Terminal::new(id);
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hosts/stock-debian"),
        &term.path("root"),
    );
    std::fs::set_permissions(
        term.path("root/etc/shadow"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::create_dir_all(term.path("root/sys/class/rtc/rtc0")).unwrap();
    std::fs::create_dir_all(term.path("helper")).unwrap();
    open_path(term.dir.path());
    for d in ["state", "run", "apps"] {
        chown_to_daemon(&term.path(d));
    }
    term
}

fn config(term: &Term, url: &str, helper: bool) -> PathBuf {
    let d = term.t.dir.path();
    let actions = d.join("actions.log");
    let sh = |what: &str| {
        format!(
            r#"["/bin/sh", "-c", "echo {what} \"$@\" >> '{}'", "sh"]"#,
            actions.display()
        )
    };
    let helper_section = if helper {
        format!(
            "[helper]\nsocket = \"{}/helper/helper.sock\"\ndaemon_user = \"{USER}\"\napp_units_allowed = [\"kiosk-ui.service\"]\n",
            d.display()
        )
    } else {
        String::new()
    };
    let cfg = term.t.config(
        url,
        &format!(
            "[power]\npoweroff_cmd = {}\nreboot_cmd = {}\nwake_lead_minutes = 5\nwake_spread_minutes = 0\n\n[commands]\nrestart_units_allowed = [\"printer.service\"]\nsystemctl = {}\n\n{helper_section}",
            sh("poweroff"),
            sh("reboot"),
            sh("systemctl")
        ),
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    cfg
}

struct Term {
    t: Terminal,
}

impl Term {
    fn actions(&self) -> String {
        std::fs::read_to_string(self.t.path("actions.log")).unwrap_or_default()
    }

    fn wait_action(&self, line: &str) {
        let start = Instant::now();
        while !self.actions().lines().any(|l| l == line) {
            assert!(
                start.elapsed() < DEADLINE,
                "{line:?} never ran; actions: {:?}",
                self.actions()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn policy(target: &str) -> Vec<u8> {
    let text =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy/baseline.json"))
            .unwrap();
    let baseline: Value = serde_json::from_slice(&text).unwrap();
    let pick = |id: &str| {
        baseline["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    serde_json::to_vec(&json!({
        "kind": "policy", "version": 1, "target": target,
        "issued_at": "2026-11-29T08:00:00Z",
        "rules": [pick("ts03-pass-max-days"), pick("ts02-no-empty-passwords")],
    }))
    .unwrap()
}

fn result<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no result for {id}: {report:#}"))
}

/// Runs `sh -c script` as the daemon account; its exit status and stderr.
fn as_daemon_sh(script: &str) -> (bool, String) {
    let out = as_daemon("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_account_cannot_write_the_system_nor_signal_others() {
    let term = Term {
        t: terminal("sz-ft-0701"),
    };
    let apps = term.t.path("apps");
    let probe = format!("/etc/kiosk-agent-probe-{}", std::process::id());
    let (ok, err) = as_daemon_sh(&format!("echo x > {probe}"));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    assert!(!Path::new(&probe).exists());
    // Another user's file (root's, in the fixture), and /opt outside its apps directory.
    let shadow = term.t.path("root/etc/shadow");
    let before = std::fs::read(&shadow).unwrap();
    let (ok, err) = as_daemon_sh(&format!("cat {0} && echo x >> {0}", shadow.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    assert_eq!(std::fs::read(&shadow).unwrap(), before);
    std::fs::create_dir_all("/opt").unwrap();
    let (ok, err) = as_daemon_sh(&format!(
        "mkdir /opt/kiosk-agent-probe-{}",
        std::process::id()
    ));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_daemon_sh(&format!(
        "mkdir {}/mine && echo x > {}/mine/f",
        apps.display(),
        apps.display()
    ));
    assert!(ok, "its own apps directory: {err}");
    // No signal to a process of another user (this test, root), not even probing it.
    let (ok, err) = as_daemon_sh(&format!("kill -0 {}", std::process::id()));
    assert!(!ok && err.contains("not permitted"), "{err}");
}

#[test]
fn without_the_helper_an_unprivileged_daemon_remediates_nothing() {
    let broker = Broker::start();
    let id = "sz-ft-0702";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Term { t: terminal(id) };
    let defs = term.t.path("root/etc/login.defs");
    let before = std::fs::read(&defs).unwrap();
    let daemon = Daemon::start(&config(&term, &broker.url(), false), &[]);
    platform.wait_json("/state", |v| v["status"] == "online");
    let me = format!("t/{id}");
    platform.publish(
        &format!("{P}/t/{id}/desired/policy"),
        sign("policy", &policy(&me), &[&term.t.admin]),
        false,
    );
    let report = platform.wait_json("/compliance", |v| v["version"] == 1);
    let fix = result(&report, "ts03-pass-max-days");
    assert_eq!(fix["status"], "fail", "{fix:#}\n{}", daemon.log());
    assert!(
        fix["message"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{fix:#}"
    );
    assert_eq!(std::fs::read(&defs).unwrap(), before, "host unchanged");
    // /etc/shadow is not readable by the account: the rule cannot be decided.
    assert_eq!(
        result(&report, "ts02-no-empty-passwords")["status"],
        "error"
    );
}

#[test]
fn through_the_helper_the_daemon_reports_verifies_remediates_installs_and_schedules() {
    // The daemon's clock: OFF_IN_S seconds before 18:00 in Shanghai, today.
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let real = jiff::Timestamp::now();
    let today = tz.to_datetime(real).date();
    let off_at = tz.to_timestamp(today.at(18, 0, 0, 0)).unwrap();
    let next_on = tz
        .to_timestamp(today.tomorrow().unwrap().at(9, 0, 0, 0))
        .unwrap();
    let offset = off_at.as_second() - OFF_IN_S - real.as_second();

    let broker = Broker::start();
    let id = "sz-ft-0703";
    let mut platform = Platform::connect(broker.port, &format!("{P}/t/{id}/#"));
    let term = Term { t: terminal(id) };
    let cfg = config(&term, &broker.url(), true);
    let helper = HelperProc::start(&cfg, &term.t.path("helper/helper.sock"));
    let daemon = Daemon::start(&cfg, &[("KIOSK_AGENT_CLOCK_OFFSET_S", &offset.to_string())]);
    platform.wait_json("/state", |v| v["status"] == "online");
    // It really is the unprivileged account, with no capability at all.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap_or_default();
    let (uid, _) = daemon_user();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "Uid:",
                    &uid.to_string(),
                    &uid.to_string(),
                    &uid.to_string(),
                    &uid.to_string()
                ]),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
    let me = format!("t/{id}");

    // Verifies and remediates: the root-owned login.defs is fixed by the helper, the shadow
    // verdict comes from it too.
    platform.publish(
        &format!("{P}/t/{id}/desired/policy"),
        sign("policy", &policy(&me), &[&term.t.admin]),
        false,
    );
    let report = platform.wait_json("/compliance", |v| v["version"] == 1);
    let fix = result(&report, "ts03-pass-max-days");
    assert_eq!(fix["status"], "remediated", "{fix:#}\n{}", daemon.log());
    assert_eq!(fix["observed"]["value"], "90");
    let defs = std::fs::read_to_string(term.t.path("root/etc/login.defs")).unwrap();
    assert!(
        defs.lines()
            .any(|l| l.split_whitespace().eq(["PASS_MAX_DAYS", "90"]))
    );
    assert_eq!(
        result(&report, "ts02-no-empty-passwords")["status"],
        "pass",
        "{report:#}"
    );
    assert!(helper.log().contains("remediate"), "{}", helper.log());

    // A signed command restarts an allowed unit through the helper.
    platform.publish(
        &format!("{P}/t/{id}/cmd"),
        sign(
            "command",
            &command(
                "c-1",
                "restart_unit",
                &me,
                json!({"unit": "printer.service"}),
                "2099-01-01T00:00:00Z",
            ),
            &[&term.t.admin],
        ),
        false,
    );
    let reply = platform.wait_json("/replies", |v| v["id"] == "c-1");
    assert_eq!(reply["status"], "ok", "{reply:#}");
    term.wait_action("systemctl restart printer.service");

    // Installs: the release is unpacked into the account's own apps directory, the app's unit
    // restarted by the helper (listed in helper.app_units_allowed).
    let bytes = release_tar_gz();
    let server = common_http::serve(bytes.clone(), common_http::Options::default());
    let doc = serde_json::to_vec(&json!({
        "kind": "app", "version": 1, "target": me,
        "issued_at": "2026-11-29T08:00:00Z",
        "name": "kiosk-ui", "release": "1.0",
        "artifact": {"url": server.url("1.0.tar.gz"), "sha256": sha256_hex(&bytes),
                     "size": bytes.len(), "format": "tar.gz"},
        "restart_units": ["kiosk-ui.service"],
        "health": {"type": "exec", "cmd": ["true"], "timeout_s": 5},
    }))
    .unwrap();
    platform.publish(
        &format!("{P}/t/{id}/desired/app/kiosk-ui"),
        sign("app", &doc, &[&term.t.admin]),
        false,
    );
    let done = platform.wait_json("/reported/app/kiosk-ui", |v| v["status"] != "in_progress");
    assert_eq!(done["status"], "applied", "{done:#}\n{}", daemon.log());
    term.wait_action("systemctl restart kiosk-ui.service");
    let current = term.t.path("apps/kiosk-ui/current");
    assert_eq!(
        std::fs::read_link(&current).unwrap(),
        PathBuf::from("releases/1.0")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(current.join("bin/app")).unwrap().uid(),
        uid
    );

    // Schedules: at closing time the helper arms the RTC for the next opening and powers off.
    platform.publish(
        &format!("{P}/t/{id}/desired/schedule"),
        sign(
            "schedule",
            &serde_json::to_vec(&json!({
                "kind": "schedule", "version": 1, "target": me,
                "issued_at": "2026-11-29T08:00:00Z", "timezone": ZONE,
                "weekly": [{"days": ["mon","tue","wed","thu","fri","sat","sun"], "on": "09:00", "off": "18:00"}],
                "dates": [], "off_action": "poweroff", "warn_minutes": 1,
            }))
            .unwrap(),
            &[&term.t.admin],
        ),
        false,
    );
    let rep = platform.wait_json("/reported/schedule", |v| v["status"] == "applied");
    assert_eq!(rep["version"], 1, "{rep:#}");
    term.wait_action("poweroff");
    let wake = std::fs::read_to_string(term.t.path("root/sys/class/rtc/rtc0/wakealarm")).unwrap();
    assert_eq!(
        wake.trim().parse::<i64>().unwrap(),
        next_on.as_second() - 5 * 60,
        "wakealarm = next_on - wake_lead_minutes"
    );
    let off = platform.event("power.off");
    assert_eq!(
        off["details"]["off_at"]
            .as_str()
            .map(|s| s.parse::<jiff::Timestamp>().unwrap()),
        Some(off_at)
    );
    let log = helper.log();
    for op in [
        "remediate",
        "empty_passwords",
        "restart_unit",
        "wake_alarm",
        "power",
    ] {
        assert!(
            log.contains(&format!("op=\"{op}\"")) || log.contains(&format!("op={op}")),
            "{op} not logged:\n{log}"
        );
    }
}

fn release_tar_gz() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in [("bin/app", &b"app 1.0"[..]), ("ok", b"")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, bytes).unwrap();
    }
    let raw = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    e.finish().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
