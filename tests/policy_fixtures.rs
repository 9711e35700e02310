//! The shipped baseline policy against fixture hosts: a hardened kiosk passes every rule, a stock
//! Debian 12 fails the expected ones with the observed values in the report, remediation fixes
//! every remediable rule without touching files the agent must never touch, and unsafe cases
//! (symlinks out of the root, a write failing part-way, a malformed policy) change nothing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::copy_tree;
use kiosk_agent::host::HostPaths;
use kiosk_agent::policy::{
    CommandOutput, CommandRunner, ComplianceReport, Engine, FsRemediator, Policy, PolicyError,
    ResultStatus, parse, render_table, transitions,
};
use serde_json::{Value, json};

fn fixture_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hosts")
        .join(name)
}

/// A fixture copied into a temp dir, with the modes git cannot carry set as Debian ships them.
fn fixture(name: &str) -> (tempfile::TempDir, HostPaths) {
    let d = tempfile::tempdir().unwrap();
    copy_tree(&fixture_src(name), d.path());
    fs::set_permissions(
        d.path().join("etc/shadow"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let h = HostPaths::new(d.path());
    (d, h)
}

/// Answers `systemctl is-active <unit>` from the fixture's list of running units.
#[derive(Debug)]
struct FixtureSystemd(PathBuf);

impl CommandRunner for FixtureSystemd {
    fn run(&self, argv: &[String], _: Duration) -> Result<CommandOutput, String> {
        match argv {
            [cmd, verb, unit] if cmd == "systemctl" && verb == "is-active" => {
                let list =
                    fs::read_to_string(self.0.join(".fixture-active-units")).unwrap_or_default();
                let active = list.lines().any(|l| l.trim() == unit);
                Ok(CommandOutput {
                    code: Some(if active { 0 } else { 3 }),
                    stdout: if active { "active\n" } else { "inactive\n" }.into(),
                    stderr: String::new(),
                })
            }
            _ => Err(format!("unexpected command {argv:?}")),
        }
    }
}

fn baseline_bytes() -> Vec<u8> {
    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy/baseline.json")).unwrap()
}

fn baseline() -> Policy {
    parse(&baseline_bytes()).expect("the shipped baseline parses")
}

fn engine(h: &HostPaths) -> Engine {
    Engine::new(h.clone()).with_runner(Arc::new(FixtureSystemd(h.root().to_path_buf())))
}

fn scan(h: &HostPaths, remediate: bool, seq: u64) -> ComplianceReport {
    let rem =
        FsRemediator::new(h.clone()).with_runner(Arc::new(FixtureSystemd(h.root().to_path_buf())));
    engine(h).evaluate(
        &baseline(),
        &rem,
        remediate,
        seq,
        "2026-03-02T07:30:00Z".parse().unwrap(),
    )
}

fn by_id(r: &ComplianceReport) -> BTreeMap<&str, &kiosk_agent::policy::RuleResult> {
    r.results.iter().map(|x| (x.id.as_str(), x)).collect()
}

fn not_passing(r: &ComplianceReport) -> Vec<String> {
    r.results
        .iter()
        .filter(|x| x.status != ResultStatus::Pass)
        .map(|x| format!("{} {:?}: {} [{}]", x.id, x.status, x.message, x.observed))
        .collect()
}

fn snapshot(root: &Path, rels: &[&str]) -> Vec<(String, Vec<u8>, u32)> {
    rels.iter()
        .map(|r| {
            let p = root.join(r);
            (
                r.to_string(),
                fs::read(&p).unwrap(),
                fs::metadata(&p).unwrap().permissions().mode(),
            )
        })
        .collect()
}

const UNTOUCHABLE: &[&str] = &[
    "etc/pam.d/common-auth",
    "etc/fstab",
    "etc/passwd",
    "etc/shadow",
    "etc/ssh/sshd_config",
    "etc/systemd/journald.conf",
    "etc/systemd/logind.conf",
];

#[test]
fn baseline_is_complete_and_anchored() {
    let p = baseline();
    assert_eq!(p.version, 1);
    assert_eq!(p.target, "all");
    assert!(p.rules.len() >= 25, "{} rules", p.rules.len());
    for r in &p.rules {
        assert!(
            r.clause.contains("GB/") || r.clause.contains("Cybersecurity Law"),
            "{} lacks an anchor",
            r.id
        );
        assert!(
            r.clause.contains("baseline TS-"),
            "{} lacks its baseline row",
            r.id
        );
        assert!(!r.title.is_empty(), "{} lacks a title", r.id);
        if r.remediate {
            assert!(
                r.check.can_remediate(),
                "{} asks for a fix its check type cannot make",
                r.id
            );
        }
    }
    let types: std::collections::BTreeSet<&str> =
        p.rules.iter().map(|r| r.check_type.as_str()).collect();
    for t in [
        "accounts",
        "config_value",
        "sysctl",
        "kernel_module",
        "listening_ports",
        "mount_options",
        "file_absent",
        "service",
        "json_value",
        "usb_devices",
    ] {
        assert!(types.contains(t), "baseline has no {t} rule");
    }
}

#[test]
fn hardened_host_passes_every_rule() {
    let (_d, h) = fixture("hardened");
    let rep = scan(&h, false, 1);
    assert_eq!(not_passing(&rep), Vec::<String>::new());
    assert_eq!(rep.passed, rep.results.len());
    assert!(transitions(None, &rep).is_empty());
}

#[test]
fn stock_debian_fails_the_expected_rules_with_observed_values() {
    let (_d, h) = fixture("stock-debian");
    let rep = scan(&h, false, 1);
    let r = by_id(&rep);
    let failing: Vec<&str> = rep
        .results
        .iter()
        .filter(|x| x.status == ResultStatus::Fail)
        .map(|x| x.id.as_str())
        .collect();
    for id in [
        "ts03-pass-max-days",
        "ts03-pass-min-days",
        "ts03-pwquality-minlen",
        "ts05-sshd-permitrootlogin",
        "ts05-sshd-passwordauthentication",
        "ts05-sshd-x11forwarding",
        "ts05-sshd-allowtcpforwarding",
        "ts04-sshd-clientaliveinterval",
        "ts10-listeners-allowlisted",
        "ts10-avahi-disabled",
        "ts10-cups-browsed-disabled",
        "ts13-usb-storage-blocked",
        "ts13-uas-blocked",
        "ts13-usb-peripherals",
        "ts20-kernel-sysrq",
        "ts20-kernel-kptr-restrict",
        "ts20-net-ipv4-conf-all-accept-redirects",
        "ts23-mount-tmp",
        "ts23-mount-dev-shm",
        "ts16-auditd-running",
        "ts16-audit-identity-watch",
        "ts17-journald-persistent",
        "ts17-journald-retention",
        "ts21-ctrl-alt-del-masked",
        "ts21-logind-nautovts",
        "ts22-coredump-storage-none",
        "ts27-browser-developertoolsavailability",
    ] {
        assert!(
            failing.contains(&id),
            "{id} should fail on stock Debian: {:?}",
            r.get(id)
        );
    }
    for id in [
        "ts02-no-empty-passwords",
        "ts02-only-root-uid0",
        "ts02-shadow-mode",
        "ts03-pass-warn-age",
        "ts05-sshd-kbdinteractiveauthentication",
        "ts10-no-high-risk-ports",
        "ts19-no-ld-so-preload",
        "ts20-kernel-randomize-va-space",
        "ts09-process-allowlist",
    ] {
        assert_eq!(r[id].status, ResultStatus::Pass, "{id}: {}", r[id].message);
    }
    assert_eq!(r["ts03-pass-max-days"].observed["value"], "99999");
    assert_eq!(r["ts20-kernel-sysrq"].observed, json!("438"));
    assert_eq!(r["ts05-sshd-x11forwarding"].observed["value"], "yes");
    assert_eq!(
        r["ts05-sshd-permitrootlogin"].observed["value"],
        Value::Null
    );
    assert_eq!(
        r["ts13-usb-peripherals"].observed["not_allowed"],
        json!(["1-4 0781:5567 class 08 denied"])
    );
    assert_eq!(
        r["ts10-listeners-allowlisted"].observed["not_allowed"],
        json!(["udp 0.0.0.0:5353", "udp 0.0.0.0:631", "udp [::]:5353"])
    );
    assert_eq!(
        r["ts23-mount-dev-shm"].observed["options"],
        "rw,nosuid,nodev"
    );
    assert_eq!(r["ts16-auditd-running"].observed["active"], "inactive");
    assert_eq!(rep.failed, failing.len());
    assert_eq!(rep.errors, 0, "{:?}", not_passing(&rep));
    // every new failure is announced once, with its rule's severity
    let t = transitions(None, &rep);
    assert_eq!(t.len(), rep.failed);
    assert!(t.iter().all(|t| t.code() == "policy.violation"));
    let table = render_table(&rep.to_json());
    let first_row = table.lines().nth(4).unwrap();
    assert!(first_row.contains("fail"), "{table}");
}

#[test]
fn remediation_fixes_every_remediable_rule_and_touches_nothing_else() {
    let (d, h) = fixture("stock-debian");
    let before_files = snapshot(d.path(), UNTOUCHABLE);
    let first = scan(&h, false, 1);
    let fixed = scan(&h, true, 2);
    assert!(fixed.remediated > 0);
    for x in &fixed.results {
        if x.status == ResultStatus::Remediated {
            let ev = x.remediation.as_ref().unwrap();
            assert_ne!(
                ev["before"], ev["after"],
                "{}: evidence shows the change",
                x.id
            );
        }
    }
    let rescan = scan(&h, false, 3);
    let policy = baseline();
    let rs = by_id(&rescan);
    for rule in policy.rules.iter().filter(|r| r.remediate) {
        assert_eq!(
            rs[rule.id.as_str()].status,
            ResultStatus::Pass,
            "{}: {}",
            rule.id,
            rs[rule.id.as_str()].message
        );
    }
    // rules that are not remediable stay failed
    assert_eq!(rs["ts05-sshd-x11forwarding"].status, ResultStatus::Fail);
    assert_eq!(rs["ts23-mount-dev-shm"].status, ResultStatus::Fail);
    assert_eq!(snapshot(d.path(), UNTOUCHABLE), before_files);
    // the agent's own drop-ins hold the fixes
    let sysctl = fs::read_to_string(d.path().join("etc/sysctl.d/90-kiosk-agent.conf")).unwrap();
    assert!(sysctl.contains("kernel.sysrq = 0"));
    assert!(
        d.path()
            .join("etc/modprobe.d/kiosk-agent-usb-storage.conf")
            .is_file()
    );
    assert!(
        fs::read_to_string(
            d.path()
                .join("etc/systemd/journald.conf.d/90-kiosk-agent.conf")
        )
        .unwrap()
        .starts_with("[Journal]\n")
    );
    assert_eq!(
        fs::read_link(d.path().join("etc/systemd/system/ctrl-alt-del.target")).unwrap(),
        Path::new("/dev/null")
    );
    let t = transitions(Some(&first), &fixed);
    let remediated: Vec<_> = t
        .iter()
        .filter(|t| t.code() == "policy.remediated")
        .collect();
    assert_eq!(remediated.len(), fixed.remediated);
    let sysrq = remediated
        .iter()
        .find(|t| t.message().starts_with("ts20-kernel-sysrq"))
        .unwrap();
    assert_eq!(sysrq.details(1)["before"], "438");
    assert_eq!(sysrq.details(1)["after"], "0");
    assert!(
        transitions(Some(&fixed), &rescan).is_empty(),
        "nothing new after the fix"
    );
}

#[test]
fn symlink_out_of_root_is_not_followed_by_remediation() {
    let (d, h) = fixture("stock-debian");
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("login.defs");
    fs::copy(d.path().join("etc/login.defs"), &victim).unwrap();
    let original = fs::read(&victim).unwrap();
    fs::remove_file(d.path().join("etc/login.defs")).unwrap();
    symlink(&victim, d.path().join("etc/login.defs")).unwrap();
    // a planted directory link: the agent's sysctl drop-in must not land outside either
    symlink(outside.path(), d.path().join("etc/sysctl.d")).unwrap();
    let rep = scan(&h, true, 1);
    let r = by_id(&rep);
    assert_eq!(fs::read(&victim).unwrap(), original);
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing written outside the root"
    );
    // Reads stay inside the root too: the planted link is not even read.
    assert_eq!(r["ts03-pass-max-days"].status, ResultStatus::Error);
    assert!(
        r["ts03-pass-max-days"]
            .message
            .contains("outside the host root"),
        "{}",
        r["ts03-pass-max-days"].message
    );
    assert_eq!(r["ts20-kernel-sysrq"].status, ResultStatus::Fail);
    assert_eq!(
        fs::read_to_string(d.path().join("proc/sys/kernel/sysrq")).unwrap(),
        "438\n",
        "not applied live either"
    );
}

#[test]
fn remediation_failing_part_way_leaves_the_original_intact() {
    let (d, h) = fixture("stock-debian");
    let original = fs::read(d.path().join("etc/login.defs")).unwrap();
    // The atomic write's temp file cannot be created: the write fails after reading, before rename.
    fs::create_dir(
        d.path()
            .join(format!("etc/.login.defs.tmp-{}", std::process::id())),
    )
    .unwrap();
    let rep = scan(&h, true, 1);
    let r = by_id(&rep);
    assert_eq!(fs::read(d.path().join("etc/login.defs")).unwrap(), original);
    let max = r["ts03-pass-max-days"];
    assert_eq!(max.status, ResultStatus::Fail);
    assert!(
        max.message.contains("remediation failed"),
        "{}",
        max.message
    );
    assert_eq!(max.remediation.as_ref().unwrap()["ok"], false);
    // other rules were still fixed
    assert_eq!(r["ts20-kernel-sysrq"].status, ResultStatus::Remediated);
}

fn with_extra_rule(rule: Value) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&baseline_bytes()).unwrap();
    doc["rules"].as_array_mut().unwrap().push(rule);
    serde_json::to_vec(&doc).unwrap()
}

#[test]
fn malformed_policies_are_refused_whole() {
    let unknown = with_extra_rule(
        json!({"id":"x-new","severity":"minor","check":{"type":"registry_key","path":"HKLM"}}),
    );
    let e = parse(&unknown).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Rule { id, .. } if id == "x-new"),
        "{e}"
    );
    assert!(e.to_string().contains("registry_key"));
    let bad_re = with_extra_rule(
        json!({"id":"x-re","severity":"minor","check":{"type":"file_contains","path":"/etc/x","pattern":"(unclosed","expect":"absent"}}),
    );
    let e = parse(&bad_re).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Rule { id, .. } if id == "x-re"),
        "{e}"
    );
    let bad_field = with_extra_rule(
        json!({"id":"x-f","severity":"minor","check":{"type":"sysctl","key":"kernel.sysrq","value":"0","persist":false}}),
    );
    assert!(matches!(parse(&bad_field), Err(PolicyError::Rule { .. })));
}
