//! The privileged helper as it runs on a kiosk: the real binary as root on a temp socket with
//! `paths.root` a fixture tree, asked by a throwaway system account through setpriv. Every
//! refusal asserts its code and that nothing changed.

mod common;
mod common_priv;

use std::os::unix::fs::symlink;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use common_priv::*;
use serde_json::{Value, json};

struct Fx {
    t: Terminal,
    helper: HelperProc,
    outside: tempfile::TempDir,
}

impl Fx {
    fn new(extra: &str) -> Self {
        daemon_user();
        let t = Terminal::new("sz-ft-0001");
        let d = t.dir.path().to_path_buf();
        let actions = d.join("actions.log");
        let sh = |what: &str| {
            format!(
                r#"["/bin/sh", "-c", "echo {what} \"$@\" >> '{}'", "sh"]"#,
                actions.display()
            )
        };
        let config = t.config(
            "mqtt://127.0.0.1:1",
            &format!(
                r#"[power]
poweroff_cmd = {poweroff}
reboot_cmd = {reboot}
display_off_cmd = {doff}

[commands]
restart_units_allowed = ["printer.service"]
systemctl = {systemctl}

[helper]
socket = "{d}/run/helper.sock"
daemon_user = "{USER}"
app_units_allowed = ["kiosk-ui.service"]
{extra}
"#,
                poweroff = sh("poweroff"),
                reboot = sh("reboot"),
                doff = sh("display_off"),
                systemctl = sh("systemctl"),
                d = d.display(),
            ),
        );
        open_path(&d);
        let helper = HelperProc::start(&config, &d.join("run/helper.sock"));
        Fx {
            t,
            helper,
            outside: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self, rel: &str) -> std::path::PathBuf {
        self.t.path("root").join(rel.trim_start_matches('/'))
    }

    fn put(&self, rel: &str, text: &str) {
        write(&self.root(rel), text);
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root(rel)).unwrap()
    }

    fn actions(&self) -> String {
        std::fs::read_to_string(self.t.path("actions.log")).unwrap_or_default()
    }

    fn call(&self, req: Value) -> Value {
        self.helper.call_as_daemon(&req)
    }

    fn signed_policy(&self, rules: Value, target: &str) -> Vec<u8> {
        sign("policy", &policy_doc(rules, target), &[&self.t.admin])
    }

    fn remediate(&self, envelope: &[u8], rule: &str) -> Value {
        self.call(json!({"op": "remediate", "policy": STANDARD.encode(envelope), "rule": rule}))
    }
}

fn policy_doc(rules: Value, target: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "policy", "version": 3, "target": target,
        "issued_at": "2026-01-01T00:00:00Z", "rules": rules,
    }))
    .unwrap()
}

fn rule(id: &str, remediate: bool, check: Value) -> Value {
    json!({"id": id, "title": id, "severity": "major", "clause": "GB/T 22239 8.1.4",
           "remediate": remediate, "check": check})
}

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("<none>")
}

#[test]
fn power_rtc_and_allowed_units_run_for_the_daemon_account() {
    let fx = Fx::new("");
    let r = fx.call(json!({"op": "power", "action": "poweroff"}));
    assert_eq!(code(&r), "ok", "{r}");
    let r = fx.call(json!({"op": "power", "action": "display_off"}));
    assert_eq!(code(&r), "ok", "{r}");
    // display_on_cmd is empty in this config: a clear refusal, nothing run.
    let r = fx.call(json!({"op": "power", "action": "display_on"}));
    assert_eq!(code(&r), "not_configured", "{r}");

    let r = fx.call(json!({"op": "restart_unit", "unit": "printer.service"}));
    assert_eq!(code(&r), "ok", "{r}");
    let r = fx.call(json!({"op": "restart_unit", "unit": "kiosk-ui.service"}));
    assert_eq!(code(&r), "ok", "{r}");
    for unit in [
        "sshd.service",
        "../../etc/x.service",
        "printer.service; reboot",
    ] {
        let r = fx.call(json!({"op": "restart_unit", "unit": unit}));
        assert_eq!(code(&r), "unit_not_allowed", "{unit}: {r}");
    }
    assert_eq!(
        fx.actions(),
        "poweroff\ndisplay_off\nsystemctl restart printer.service\nsystemctl restart kiosk-ui.service\n"
    );

    // The wake alarm the schedule computes lands in the RTC under paths.root.
    let rtc = fx.root("/sys/class/rtc/rtc0/wakealarm");
    std::fs::create_dir_all(rtc.parent().unwrap()).unwrap();
    let r = fx.call(json!({"op": "wake_alarm", "at": 1_791_849_300}));
    assert_eq!(code(&r), "ok", "{r}");
    assert_eq!(std::fs::read_to_string(&rtc).unwrap(), "1791849300");
    let r = fx.call(json!({"op": "wake_alarm", "at": null}));
    assert_eq!(code(&r), "ok", "{r}");
    assert_eq!(std::fs::read_to_string(&rtc).unwrap(), "0");

    let log = fx.helper.log();
    assert!(
        log.contains("helper request") && log.contains("helper outcome"),
        "{log}"
    );
    assert!(log.contains("unit_not_allowed"), "{log}");
}

#[test]
fn another_uid_is_refused_and_nothing_runs() {
    let fx = Fx::new("");
    // The test itself is root: not the daemon's account, so refused like any other uid.
    let reply = {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&fx.helper.socket).unwrap();
        // The helper refuses a foreign peer before reading a byte and closes: the write may
        // meet a closed socket (EPIPE), the refusal is already queued for reading either way.
        let _ = s.write_all(b"{\"op\":\"power\",\"action\":\"reboot\"}\n");
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    assert_eq!(code(&reply), "peer_not_allowed", "{reply}");
    // Another unprivileged account: nobody.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(helper_bin())
        .arg("--config")
        .arg(&fx.helper.config)
        .arg("call")
        .arg("--socket")
        .arg(&fx.helper.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"op\":\"power\",\"action\":\"reboot\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The socket is 0660 root:<daemon group>: nobody cannot even connect.
    assert_eq!(code(&r), "helper_unavailable", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("ermission denied"),
        "{r}"
    );
    assert_eq!(fx.actions(), "", "nothing ran");
}

#[test]
fn malformed_unknown_and_oversized_requests_are_refused_unparsed() {
    let fx = Fx::new("");
    for (line, want) in [
        (&b"not json\n"[..], "malformed"),
        (b"{\"op\":\"shell\",\"cmd\":\"id\"}\n", "malformed"),
        (
            b"{\"op\":\"restart_unit\",\"unit\":\"printer.service\",\"then\":\"reboot\"}\n",
            "malformed",
        ),
        (b"{\"op\":\"power\",\"action\":\"halt\"}\n", "malformed"),
        (
            b"{\"op\":\"remediate\",\"policy\":\"***\",\"rule\":\"x\"}\n",
            "malformed",
        ),
    ] {
        let r = fx.helper.call_raw_as_daemon(line);
        assert_eq!(code(&r), want, "{}: {r}", String::from_utf8_lossy(line));
    }
    let mut big = br#"{"op":"restart_unit","unit":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
    big.extend(b"\"}\n");
    let r = fx.helper.call_raw_as_daemon(&big);
    assert_eq!(code(&r), "too_large", "{r}");
    assert_eq!(fx.actions(), "", "nothing ran");
}

#[test]
fn remediation_only_for_a_rule_the_signed_policy_in_force_asks_for() {
    let fx = Fx::new("");
    fx.put("/proc/sys/kernel/sysrq", "438\n");
    fx.put("/proc/sys/net/ipv4/ip_forward", "1\n");
    let rules = json!([
        rule(
            "sysrq",
            true,
            json!({"type":"sysctl","key":"kernel.sysrq","value":"0"})
        ),
        rule(
            "fwd",
            false,
            json!({"type":"sysctl","key":"net.ipv4.ip_forward","value":"0"})
        ),
        rule(
            "accounts",
            true,
            json!({"type":"accounts","only_root_uid0":true})
        ),
    ]);
    let env = fx.signed_policy(rules.clone(), "t/sz-ft-0001");

    // Not asked by the policy, absent from it, or a check without a fix: refused, unchanged.
    let r = fx.remediate(&env, "fwd");
    assert_eq!(code(&r), "not_in_policy", "{r}");
    let r = fx.remediate(&env, "usb-storage");
    assert_eq!(code(&r), "not_in_policy", "{r}");
    let r = fx.remediate(&env, "accounts");
    assert_eq!(code(&r), "no_remediation", "{r}");
    assert_eq!(fx.read("/proc/sys/net/ipv4/ip_forward"), "1\n");

    // Tampered: the payload changed after signing (fwd now asks for remediation).
    let mut e: Value = serde_json::from_slice(&env).unwrap();
    let mut tampered_rules = rules.clone();
    tampered_rules[1]["remediate"] = json!(true);
    e["payload"] = json!(STANDARD.encode(policy_doc(tampered_rules.clone(), "t/sz-ft-0001")));
    let r = fx.remediate(e.to_string().as_bytes(), "fwd");
    assert_eq!(code(&r), "bad_signature", "{r}");
    // Foreign: well signed, by a key this terminal does not trust.
    let stranger = key();
    let foreign = sign(
        "policy",
        &policy_doc(tampered_rules, "t/sz-ft-0001"),
        &[&stranger],
    );
    let r = fx.remediate(&foreign, "fwd");
    assert_eq!(code(&r), "unknown_key", "{r}");
    // Signed, but for another terminal.
    let other = fx.signed_policy(rules.clone(), "t/sz-ft-0002");
    let r = fx.remediate(&other, "sysrq");
    assert_eq!(code(&r), "wrong_target", "{r}");
    // Signed as something else than a policy.
    let cmd = sign(
        "command",
        &policy_doc(rules.clone(), "t/sz-ft-0001"),
        &[&fx.t.admin],
    );
    let r = fx.remediate(&cmd, "sysrq");
    assert_eq!(code(&r), "wrong_type", "{r}");
    assert_eq!(fx.read("/proc/sys/net/ipv4/ip_forward"), "1\n");
    assert_eq!(fx.read("/proc/sys/kernel/sysrq"), "438\n");

    // The one the signed policy asks for is done; a second time there is nothing to do.
    let r = fx.remediate(&env, "sysrq");
    assert_eq!(code(&r), "ok", "{r}");
    assert_eq!(fx.read("/proc/sys/kernel/sysrq"), "0\n");
    let r = fx.remediate(&env, "sysrq");
    assert_eq!(code(&r), "compliant", "{r}");
    // A group or fleet policy of this terminal counts too.
    let fleet = fx.signed_policy(rules, "all");
    fx.put("/proc/sys/kernel/sysrq", "1\n");
    assert_eq!(code(&fx.remediate(&fleet, "sysrq")), "ok");
}

#[test]
fn a_signed_rule_through_a_symlink_out_of_the_root_is_refused() {
    let fx = Fx::new("");
    let victim = fx.outside.path().join("login.defs");
    std::fs::write(&victim, "PASS_MAX_DAYS 99999\n").unwrap();
    std::fs::create_dir_all(fx.root("/etc")).unwrap();
    symlink(&victim, fx.root("/etc/login.defs")).unwrap();
    symlink(fx.outside.path(), fx.root("/etc/sysctl.d")).unwrap();
    let rules = json!([
        rule(
            "maxdays",
            true,
            json!({"type":"config_value","path":"/etc/login.defs",
             "key":"PASS_MAX_DAYS","value":90,"op":"le"})
        ),
        rule(
            "mode",
            true,
            json!({"type":"file_mode","path":"/etc/sysctl.d/login.defs","max_mode":"0600"})
        ),
    ]);
    let env = fx.signed_policy(rules, "t/sz-ft-0001");
    let r = fx.remediate(&env, "maxdays");
    assert_eq!(code(&r), "outside_root", "{r}");
    let r = fx.remediate(&env, "mode");
    assert_eq!(code(&r), "outside_root", "{r}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "PASS_MAX_DAYS 99999\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

/// `sshd -t` needs its privilege-separation directory, as ssh.service's RuntimeDirectory (and
/// the package's tmpfiles entry) provide it.
fn sshd_ready() -> &'static str {
    let sshd = "/usr/sbin/sshd";
    assert!(
        Path::new(sshd).exists(),
        "openssh-server is required (scripts/test installs it)"
    );
    std::fs::create_dir_all("/run/sshd").unwrap();
    sshd
}

#[test]
fn an_sshd_rewrite_that_sshd_rejects_is_refused_and_the_file_kept_byte_for_byte() {
    let sshd = sshd_ready();
    let fx = Fx::new(&format!(r#"sshd_validator = ["{sshd}", "-t", "-f"]"#));
    let original = "# kiosk\nPermitRootLogin yes\nPasswordAuthentication yes\n";
    fx.put("/etc/ssh/sshd_config", original);
    let before = std::fs::read(fx.root("/etc/ssh/sshd_config")).unwrap();
    let rules = json!([
        rule(
            "bad",
            true,
            json!({"type":"config_value","path":"/etc/ssh/sshd_config",
             "key":"PermitRootLogin","value":"never-ever","style":"sshd"})
        ),
        rule(
            "good",
            true,
            json!({"type":"config_value","path":"/etc/ssh/sshd_config",
             "key":"PasswordAuthentication","value":"no","style":"sshd"})
        ),
    ]);
    let env = fx.signed_policy(rules, "t/sz-ft-0001");
    let r = fx.remediate(&env, "bad");
    assert_eq!(code(&r), "validation_failed", "{r}");
    assert!(r["message"].as_str().unwrap().contains("never-ever"), "{r}");
    assert_eq!(
        std::fs::read(fx.root("/etc/ssh/sshd_config")).unwrap(),
        before
    );
    let left: Vec<_> = std::fs::read_dir(fx.root("/etc/ssh")).unwrap().collect();
    assert_eq!(left.len(), 1, "no candidate file left behind");

    let r = fx.remediate(&env, "good");
    assert_eq!(code(&r), "ok", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("validated with"),
        "{r}"
    );
    assert!(
        fx.read("/etc/ssh/sshd_config")
            .contains("PasswordAuthentication no")
    );
}

#[test]
fn the_shadow_verdict_carries_names_never_hashes() {
    let fx = Fx::new("");
    fx.put(
        "/etc/shadow",
        "root:$6$salt$secrethash:19000:0:99999:7:::\nkiosk::19000:0:99999:7:::\n",
    );
    let r = fx.call(json!({"op": "empty_passwords"}));
    assert_eq!(code(&r), "ok", "{r}");
    assert_eq!(r["details"]["empty_password"], json!(["kiosk"]));
    assert!(!r.to_string().contains("secrethash"), "{r}");
}

#[test]
fn trust_rotation_is_persisted_only_when_signed_by_the_current_root() {
    let fx = Fx::new("");
    let before = std::fs::read(fx.t.path("trust.json")).unwrap();
    let next = key();
    let doc = trust_doc(2, &[(&next, ALL_ROLES)], thresholds(1));
    let payload = serde_json::to_vec(&json!({
        "kind": "trust", "version": 2, "target": "t/sz-ft-0001",
        "issued_at": "2026-01-01T00:00:00Z",
        "keys": doc["keys"], "thresholds": doc["thresholds"],
    }))
    .unwrap();
    let stranger = key();
    let forged = sign("trust", &payload, &[&stranger]);
    let r = fx.call(json!({"op": "rotate_trust", "envelope": STANDARD.encode(&forged), "target": "t/sz-ft-0001"}));
    assert_eq!(code(&r), "unknown_key", "{r}");
    let good = sign("trust", &payload, &[&fx.t.admin, &next]);
    let r = fx.call(
        json!({"op": "rotate_trust", "envelope": STANDARD.encode(&good), "target": "t/sz-ft-0002"}),
    );
    assert_eq!(code(&r), "wrong_target", "{r}");
    assert_eq!(std::fs::read(fx.t.path("trust.json")).unwrap(), before);
    let r = fx.call(
        json!({"op": "rotate_trust", "envelope": STANDARD.encode(&good), "target": "t/sz-ft-0001"}),
    );
    assert_eq!(code(&r), "ok", "{r}");
    let now: Value =
        serde_json::from_slice(&std::fs::read(fx.t.path("trust.json")).unwrap()).unwrap();
    assert_eq!(now["version"], 2);
}

#[test]
fn a_socket_activated_helper_serves_then_leaves_when_idle() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    daemon_user();
    let t = Terminal::new("sz-ft-0002");
    let d = t.dir.path().to_path_buf();
    let sock = d.join("run/activated.sock");
    let config = t.config(
        "mqtt://127.0.0.1:1",
        &format!("[helper]\ndaemon_user = \"{USER}\"\nidle_exit_s = 1\n"),
    );
    open_path(&d);
    // What systemd does for kiosk-agent-helper.socket: bind, then pass the socket as fd 3.
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" --config \"$1\"")
        .arg(helper_bin())
        .arg(&config)
        .stderr(std::fs::File::create(d.join("activated.log")).unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc_dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut c = as_daemon(helper_bin());
    let out = c
        .arg("--config")
        .arg(&config)
        .arg("call")
        .arg("--socket")
        .arg(&sock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            use std::io::Write;
            p.stdin
                .take()
                .unwrap()
                .write_all(b"{\"op\":\"restart_unit\",\"unit\":\"sshd.service\"}\n")?;
            p.wait_with_output()
        })
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        code(&r),
        "unit_not_allowed",
        "served through the passed socket: {r}\n{}",
        std::fs::read_to_string(d.join("activated.log")).unwrap_or_default()
    );
    // Then nothing more comes: it exits cleanly, systemd keeps the socket for the next one.
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// `from` becomes `to`, inherited across exec (dup2 onto itself would keep close-on-exec).
fn libc_dup2(from: i32, to: i32) -> i32 {
    unsafe extern "C" {
        fn dup2(oldfd: i32, newfd: i32) -> i32;
        fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    }
    const F_SETFD: i32 = 2;
    // SAFETY: plain syscalls on valid descriptor numbers, async-signal-safe.
    unsafe {
        if from == to {
            fcntl(to, F_SETFD, 0)
        } else {
            dup2(from, to)
        }
    }
}
