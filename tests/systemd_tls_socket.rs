//! Mutual TLS with generated certificates, the systemd notify protocol, socket authorization by
//! peer credentials, and configuration errors that name their key.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// Writes `{name}.pem` and `{name}.key` signed by `ca` into `dir`, valid for `localhost` and
/// 127.0.0.1.
fn leaf(ca: &Ca, dir: &Path, name: &str, cn: &str) {
    leaf_for(ca, dir, name, cn, &["localhost"], true);
}

/// `leaf` valid only for the DNS names `dns` (and 127.0.0.1 when `loopback_ip`).
fn leaf_for(ca: &Ca, dir: &Path, name: &str, cn: &str, dns: &[&str], loopback_ip: bool) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    if loopback_ip {
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[test]
fn mutual_tls_connects_and_a_foreign_client_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let fleet = ca("kiosk fleet CA");
    let other = ca("some other CA");
    std::fs::write(d.join("ca.pem"), &fleet.pem).unwrap();
    leaf(&fleet, d, "broker", "broker");
    leaf(&fleet, d, "terminal", "sz-ft-0101");
    leaf(&other, d, "stranger", "sz-ft-0101");
    let broker = Broker::start_with(&format!(
        "allow_anonymous true\ncafile {d}/ca.pem\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\nrequire_certificate true\nuse_identity_as_username true\n",
        d = d.display()
    ));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);

    let term = Terminal::new("sz-ft-0101");
    let tls = |name: &str| {
        format!(
            "ca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/{name}.pem\"\nkey_file = \"{d}/{name}.key\"\n",
            d = d.display()
        )
    };
    // The [mqtt] table is the config's second; extra keys go right after its url line.
    let cfg = term.config(&url, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("url = \"{url}\"\n"),
        &format!("url = \"{url}\"\n{}", tls("terminal")),
    );
    std::fs::write(&cfg, &text).unwrap();
    let agent = Agent::start(&cfg);
    wait_socket(&term.socket());
    wait_until("a connection over mutual TLS", || {
        let st = socket_call(&term.socket(), &json!({"op": "status"}));
        st["data"]["mqtt"]["connected"] == true
    });
    assert!(
        broker.log().contains("sz-ft-0101"),
        "broker saw the certificate identity"
    );
    assert_eq!(agent.stop().code(), Some(0));

    std::fs::write(
        &cfg,
        text.replace("terminal.pem", "stranger.pem")
            .replace("terminal.key", "stranger.key"),
    )
    .unwrap();
    let agent = Agent::start(&cfg);
    wait_until("the refusal in the agent's log", || {
        agent.log().contains("broker connection failed")
    });
    let log = agent.log();
    assert!(
        log.contains("TLS"),
        "the log says it is a TLS problem: {log}"
    );
    let st = socket_call(&term.socket(), &json!({"op": "status"}));
    assert_eq!(st["data"]["mqtt"]["connected"], false);
}

/// The agent's side of TLS: it talks only to a broker whose certificate chains to
/// `mqtt.ca_file` and names the host of `mqtt.url`. The broker asks for no client certificate
/// here, so a refusal can only be the agent's.
fn agent_refuses_broker(case: &str, broker_cert: impl Fn(&Ca, &Ca, &Path), expect: &str) {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let fleet = ca("kiosk fleet CA");
    let other = ca("some other CA");
    std::fs::write(d.join("ca.pem"), &fleet.pem).unwrap();
    broker_cert(&fleet, &other, d);
    let broker = Broker::start_with(&format!(
        "allow_anonymous true\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\n",
        d = d.display()
    ));
    let term = Terminal::new("sz-ft-0103");
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let cfg = term.config(&url, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("url = \"{url}\"\n"),
        &format!("url = \"{url}\"\nca_file = \"{}/ca.pem\"\n", d.display()),
    );
    std::fs::write(&cfg, &text).unwrap();
    let agent = Agent::start(&cfg);
    wait_socket(&term.socket());
    wait_until(&format!("{case}: the refusal in the agent's log"), || {
        agent.log().contains("broker connection failed")
    });
    let log = agent.log();
    assert!(
        log.contains(expect),
        "{case}: the log names why ({expect}): {log}"
    );
    let st = socket_call(&term.socket(), &json!({"op": "status"}));
    assert_eq!(st["data"]["mqtt"]["connected"], false, "{case}");
    assert!(
        !broker.log().contains("as sz-ft-0103"),
        "{case}: no MQTT session was ever opened:\n{}",
        broker.log()
    );
}

#[test]
fn agent_refuses_a_broker_certificate_from_another_ca() {
    agent_refuses_broker(
        "foreign CA",
        |_, other, d| leaf(other, d, "broker", "broker"),
        "UnknownIssuer",
    );
}

#[test]
fn agent_refuses_a_broker_certificate_for_another_name() {
    agent_refuses_broker(
        "wrong name",
        |fleet, _, d| {
            leaf_for(
                fleet,
                d,
                "broker",
                "broker.example.gov.cn",
                &["broker.example.gov.cn"],
                false,
            )
        },
        "not valid for name",
    );
}

#[test]
fn sd_notify_ready_then_watchdog() {
    let broker = Broker::start();
    let term = Terminal::new("sz-ft-0102");
    let notify_path = term.path("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let agent = Agent::start_watchdog(&term.config(&broker.url(), ""), &notify_path, 2_000_000);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notify datagram ({e}); got {got:?}; log:\n{}",
                agent.log()
            )
        });
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let ready = got.iter().position(|m| m.contains("READY=1")).unwrap();
    let wd = got.iter().position(|m| m.contains("WATCHDOG=1")).unwrap();
    assert!(ready < wd, "READY before WATCHDOG: {got:?}");
    assert!(
        std::fs::metadata(term.socket()).is_ok(),
        "socket bound before READY"
    );
    assert_eq!(agent.stop().code(), Some(0));
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "{rest:?}");
}

#[test]
fn socket_refuses_strangers_and_limits_readers() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root to run a peer under another uid"
    );
    let broker = Broker::start();
    let term = Terminal::new("sz-ft-0103");
    // Existing system groups stand in for the technicians' and admins' groups.
    let cfg = term.config(
        &broker.url(),
        "[local]\nread_group = \"nogroup\"\nadmin_group = \"adm\"\n",
    );
    std::fs::set_permissions(term.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(term.path("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _agent = Agent::start(&cfg);
    wait_socket(&term.socket());
    let sock = term.socket();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid("nogroup"));

    // A technician (read group) reads but may not switch maintenance on.
    let (ok, out) = kioskctl_as(65534, &[gid("nogroup")], &sock, &["status"]);
    assert!(ok && out.contains("sz-ft-0103"), "{out}");
    let (ok, out) = kioskctl_as(
        65534,
        &[gid("nogroup")],
        &sock,
        &["maintenance", "on", "--reason", "x"],
    );
    assert!(!ok && out.contains("forbidden"), "{out}");
    // An admin-group member (also in the read group, to open the socket file) may.
    let (ok, out) = kioskctl_as(
        65534,
        &[gid("nogroup"), gid("adm")],
        &sock,
        &["maintenance", "on", "--reason", "x"],
    );
    assert!(ok, "{out}");

    // Even with the file mode opened up, a stranger gets `forbidden` from the agent itself.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out) = kioskctl_as(65534, &[gid("daemon")], &sock, &["status"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
}

#[test]
fn check_config_names_the_key_at_fault() {
    let term = Terminal::new("sz-ft-0104");
    let good = term.config("mqtt://127.0.0.1:1883", "");
    run_ok(
        Command::new(agent_bin())
            .args(["check-config", "--config"])
            .arg(&good),
    );

    let base = std::fs::read_to_string(&good).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("mqtt://", "http://"),
            "mqtt.url: scheme must be mqtt or mqtts",
        ),
        (
            base.replace("id = \"sz-ft-0104\"\n", ""),
            "terminal.id: missing",
        ),
        (base.replace("sz-ft-0104", "SZ FT 0104"), "terminal.id:"),
        (
            format!("{base}\n[[probes]]\nid = \"laser\"\nkind = \"laser\"\n"),
            "probes[0].kind: unknown probe kind",
        ),
        (
            format!("{base}\n[health]\ninterval_s = 0\n"),
            "health.interval_s: must be greater than 0",
        ),
        (
            format!("{base}\n[health]\nintervall_s = 5\n"),
            "intervall_s",
        ),
    ];
    for (text, want) in cases {
        let p = term.path("bad.toml");
        std::fs::write(&p, &text).unwrap();
        let out = Command::new(agent_bin())
            .args(["check-config", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(err.contains(want), "wanted {want:?} in {err}");
    }
    // A missing trust root is named too (the terminal is not provisioned).
    std::fs::remove_file(term.path("trust.json")).unwrap();
    let out = Command::new(agent_bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("paths.trust_file"));
    let out = Command::new(agent_bin())
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn shipped_example_config_is_valid() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent.example.toml");
    run_ok(
        Command::new(agent_bin())
            .args(["check-config", "--config-only", "--config"])
            .arg(&cfg),
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    // verify checks that ExecStart exists: point a copy at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("units/kiosk-agent.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let copy = dir.path().join("kiosk-agent.service");
    std::fs::write(&copy, unit.replace("/usr/bin/kiosk-agent", agent_bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let relevant: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("kiosk-agent.service"))
        .collect();
    assert!(out.status.success() && relevant.is_empty(), "{err}");
    let _: Value = json!(null);
}
