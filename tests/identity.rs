//! Certificate renewal against a real Mosquitto with mutual TLS and `require_certificate`
//! (CA and certificates made here with rcgen), and the inventory and clock fields.
//!
//! The broker has two listeners: the agent's, with mutual TLS, and a plain loopback one for the
//! test's platform client.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData, SanType,
};
use serde_json::{Value, json};

const ROLES: &[&str] = &[
    "trust", "policy", "schedule", "catalog", "app", "command", "cert",
];

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// (year, month, day) of today + `offset` days, UTC.
fn ymd(offset: i64) -> (i32, u8, u8) {
    let d = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * offset))
        .unwrap()
        .in_tz("UTC")
        .unwrap()
        .date();
    (d.year().into(), d.month() as u8, d.day() as u8)
}

/// Valid from midnight of today + `from` days to midnight of today + `to` days.
fn validity(p: &mut CertificateParams, from: i64, to: i64) {
    let (y, m, d) = ymd(from);
    p.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(to);
    p.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Midnight of today + `offset` days as the agent writes it.
fn rfc(offset: i64) -> String {
    let (y, m, d) = ymd(offset);
    format!("{y:04}-{m:02}-{d:02}T00:00:00Z")
}

/// The raw public point a CSR carries, as rcgen public key data.
struct Point(Vec<u8>);
impl PublicKeyData for Point {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// (CN, public point) of a PEM request.
fn read_csr(pem: &str) -> (String, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate request");
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .unwrap();
    let info = &csr.certification_request_info;
    let cn = info
        .subject
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    (cn, info.subject_pki.subject_public_key.data.to_vec())
}

/// A certificate for the public point `key` with subject `cn`, valid between the day offsets.
fn issue(ca: &Ca, key: &[u8], cn: &str, from: i64, to: i64) -> String {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    validity(&mut p, from, to);
    p.signed_by(&Point(key.to_vec()), &ca.issuer).unwrap().pem()
}

struct Setup {
    broker: Broker,
    term: Terminal,
    cfg: PathBuf,
    fleet: Ca,
    certs: tempfile::TempDir,
    platform_port: u16,
}

/// Fleet CA, broker certificate, and a terminal certificate (ECDSA P-256) expiring in
/// `days_left` days.
fn setup(id: &str, days_left: i64) -> Setup {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let fleet = ca("kiosk fleet CA");
    std::fs::write(d.join("ca.pem"), &fleet.pem).unwrap();
    let bkey = KeyPair::generate().unwrap();
    let mut bp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    bp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    bp.distinguished_name.push(DnType::CommonName, "broker");
    std::fs::write(
        d.join("broker.pem"),
        bp.signed_by(&bkey, &fleet.issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(d.join("broker.key"), bkey.serialize_pem()).unwrap();
    let tkey = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut tp = CertificateParams::new(Vec::<String>::new()).unwrap();
    tp.distinguished_name.push(DnType::CommonName, id);
    validity(&mut tp, -300, days_left);
    std::fs::write(
        d.join("terminal.pem"),
        tp.signed_by(&tkey, &fleet.issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(d.join("terminal.key"), tkey.serialize_pem()).unwrap();

    let platform_port = free_port();
    let broker = Broker::start_with(&format!(
        "allow_anonymous true\ncafile {d}/ca.pem\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\n\
         require_certificate true\nuse_identity_as_username true\nlistener {platform_port} 127.0.0.1\n",
        d = d.display()
    ));
    wait_port(platform_port);
    let term = Terminal::new(id);
    term.set_trust(&trust_doc(1, &[(&term.admin, ROLES)], thresholds(1)));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let cfg = term.config(&url, "[health]\ninterval_s = 1\n");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("url = \"{url}\"\n"),
        &format!(
            "url = \"{url}\"\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/terminal.pem\"\nkey_file = \"{d}/terminal.key\"\n",
            d = d.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    Setup {
        broker,
        term,
        cfg,
        fleet,
        certs,
        platform_port,
    }
}

fn cert_doc(id: &str, version: u64, request_id: &str, pem: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "cert", "version": version, "target": format!("t/{id}"),
        "issued_at": "2026-11-29T08:00:00Z", "request_id": request_id, "certificate": pem,
    }))
    .unwrap()
}

impl Setup {
    fn platform(&self) -> Platform {
        Platform::connect(self.platform_port, "kiosk/v1/t/#")
    }

    fn publish_cert(&self, p: &Platform, version: u64, request_id: &str, pem: &str) {
        let id = &self.term.id;
        p.publish(
            &format!("kiosk/v1/t/{id}/desired/cert"),
            sign(
                "cert",
                &cert_doc(id, version, request_id, pem),
                &[&self.term.admin],
            ),
            false,
        );
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.certs.path().join(name)).unwrap()
    }

    fn identity_dir(&self) -> PathBuf {
        self.term.path("state/identity")
    }
}

/// Waits for the CSR and returns (request_id, public point, whole message).
fn wait_csr(p: &mut Platform, id: &str) -> (String, Vec<u8>, Value) {
    let m = p.wait_json("/csr", |v| v["request_id"].is_string());
    let (cn, point) = read_csr(m["csr"].as_str().unwrap());
    assert_eq!(cn, id, "CN of the request is the terminal id");
    let _ = id;
    (m["request_id"].as_str().unwrap().to_string(), point, m)
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn expiring_certificate_is_renewed_and_the_birth_shows_the_new_expiry() {
    let s = setup("sz-ft-0201", 5);
    let mut p = s.platform();
    let agent = Agent::start(&s.cfg);
    let old_not_after = rfc(5);
    let birth = p.wait_json("/state", |v| v["status"] == "online");
    assert_eq!(birth["cert_not_after"], old_not_after.as_str());

    let (rid, point, csr) = wait_csr(&mut p, "sz-ft-0201");
    assert_eq!(csr["current_not_after"], old_not_after.as_str());
    let msg = p.wait_for("csr", |m| m.topic.ends_with("/csr"));
    assert!(!msg.retain, "the request is not retained");
    let key = std::fs::read_to_string(s.identity_dir().join(format!("{rid}.key"))).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.identity_dir().join(format!("{rid}.key")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the new key is private");

    let pem = issue(&s.fleet, &point, "sz-ft-0201", -1, 365);
    s.publish_cert(&p, 1, &rid, &pem);
    let new_not_after = rfc(365);
    let done = p.wait_json("/reported/cert", |v| v["status"] == "applied");
    assert_eq!(done["details"]["not_after"], new_not_after.as_str());
    assert_eq!(done["version"], 1);
    let birth = p.wait_json("/state", |v| {
        v["status"] == "online" && v["cert_not_after"] == new_not_after.as_str()
    });
    assert_eq!(birth["terminal_id"], "sz-ft-0201");
    p.event("cert.renewed");
    // The provisioned pair is untouched; the renewed one is in force from the state directory.
    assert!(
        s.read("terminal.pem")
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );
    let active: Value =
        serde_json::from_slice(&std::fs::read(s.identity_dir().join("active.json")).unwrap())
            .unwrap();
    assert!(
        active["cert_file"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{rid}.pem"))
    );
    assert!(!s.identity_dir().join("renewal.json").exists());
    assert!(s.broker.log().contains("sz-ft-0201"));

    let out = std::process::Command::new(kioskctl_bin())
        .arg("--socket")
        .arg(s.term.socket())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Certificate   expires {new_not_after} (36")),
        "{text}"
    );
    assert!(text.contains("Clock         "), "{text}");
    let st = socket_call(&s.term.socket(), &json!({"op": "status"}));
    assert!(st["data"]["cert"]["days_left"].as_i64().unwrap() >= 363);
    assert_eq!(st["data"]["cert"]["renewal"], Value::Null);
    drop(agent);
}

#[test]
fn a_certificate_for_another_key_a_wrong_cn_or_expired_is_refused_and_changes_nothing() {
    let s = setup("sz-ft-0202", 5);
    let mut p = s.platform();
    let _agent = Agent::start(&s.cfg);
    let (rid, point, _) = wait_csr(&mut p, "sz-ft-0202");
    let before = files(&s.identity_dir());
    let stranger = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let stranger_point = stranger.der_bytes().to_vec();
    let cases = [
        (
            1,
            issue(&s.fleet, &stranger_point, "sz-ft-0202", -1, 365),
            "another key",
        ),
        (
            2,
            issue(&s.fleet, &point, "sz-ft-9999", -1, 365),
            "subject CN is \"sz-ft-9999\"",
        ),
        (
            3,
            issue(&s.fleet, &point, "sz-ft-0202", -10, -1),
            "not valid now",
        ),
    ];
    for (version, pem, reason) in &cases {
        s.publish_cert(&p, *version, &rid, pem);
        let r = p.wait_json("/reported/cert", |v| v["version"] == *version);
        assert_eq!(r["status"], "rejected", "{r}");
        assert!(r["message"].as_str().unwrap().contains(reason), "{r}");
        assert_eq!(files(&s.identity_dir()), before, "nothing written");
    }
    // The pending request still stands: the right certificate is taken.
    let pem = issue(&s.fleet, &point, "sz-ft-0202", -1, 365);
    s.publish_cert(&p, 4, &rid, &pem);
    let r = p.wait_json("/reported/cert", |v| {
        v["version"] == 4 && v["status"] != "in_progress"
    });
    assert_eq!(r["status"], "applied", "{r}");
}

#[test]
fn a_broker_that_refuses_the_new_certificate_gets_the_old_pair_back_and_failed() {
    // Far from expiry: the renewal is asked for with the command.
    let s = setup("sz-ft-0203", 200);
    let mut p = s.platform();
    let _agent = Agent::start(&s.cfg);
    p.wait_json("/state", |v| v["status"] == "online");
    p.publish(
        "kiosk/v1/t/sz-ft-0203/cmd",
        sign(
            "command",
            &command(
                "renew-1",
                "cert_renew",
                "t/sz-ft-0203",
                json!({}),
                "2099-01-01T00:00:00Z",
            ),
            &[&s.term.admin],
        ),
        false,
    );
    let reply = p.wait_json("/replies", |v| v["id"] == "renew-1");
    assert_eq!(reply["status"], "ok", "{reply}");
    let (rid, point, _) = wait_csr(&mut p, "sz-ft-0203");
    assert_eq!(reply["result"]["request_id"], rid.as_str());

    // Signed by a CA the broker does not trust.
    let rogue = ca("some other CA");
    let pem = issue(&rogue, &point, "sz-ft-0203", -1, 365);
    p.seen.clear();
    s.publish_cert(&p, 1, &rid, &pem);
    let r = p.wait_json("/reported/cert", |v| v["status"] == "failed");
    assert!(r["message"].as_str().unwrap().contains("refused"), "{r}");
    p.event("cert.failed");
    // Back online with the old pair.
    let birth = p.wait_json("/state", |v| v["status"] == "online");
    assert_eq!(birth["cert_not_after"], rfc(200).as_str());
    assert!(!s.identity_dir().join("active.json").exists());
    let journal: Value =
        serde_json::from_slice(&std::fs::read(s.identity_dir().join("renewal.json")).unwrap())
            .unwrap();
    assert_eq!(journal["phase"], "requested", "the request stays open");
    let st = socket_call(&s.term.socket(), &json!({"op": "status"}));
    assert_eq!(st["data"]["mqtt"]["connected"], true);
}

#[test]
fn kill_9_between_writing_and_connecting_loses_neither_pair() {
    let s = setup("sz-ft-0204", 5);
    let mut p = s.platform();
    let (old_cert, old_key) = (s.read("terminal.pem"), s.read("terminal.key"));
    let mut agent = Agent::start_env(&s.cfg, &[("KIOSK_AGENT_PAUSE_AT", "cert_written")]);
    let (rid, point, _) = wait_csr(&mut p, "sz-ft-0204");
    let pem = issue(&s.fleet, &point, "sz-ft-0204", -1, 365);
    s.publish_cert(&p, 1, &rid, &pem);
    let start = std::time::Instant::now();
    while !agent.log().contains("paused at cert_written") {
        assert!(start.elapsed() < DEADLINE, "never paused: {}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait();
    // Both pairs are whole on disk.
    assert_eq!(s.read("terminal.pem"), old_cert);
    assert_eq!(s.read("terminal.key"), old_key);
    let new_cert = std::fs::read_to_string(s.identity_dir().join(format!("{rid}.pem"))).unwrap();
    assert_eq!(new_cert, pem);
    assert!(s.identity_dir().join(format!("{rid}.key")).exists());
    let journal: Value =
        serde_json::from_slice(&std::fs::read(s.identity_dir().join("renewal.json")).unwrap())
            .unwrap();
    assert_eq!(journal["phase"], "connecting");

    // Restarted, it comes back on the old pair and finishes the switch.
    p.seen.clear();
    let _agent = Agent::start(&s.cfg);
    let done = p.wait_json("/reported/cert", |v| v["status"] == "applied");
    assert_eq!(done["details"]["not_after"], rfc(365).as_str());
    p.wait_json("/state", |v| v["cert_not_after"] == rfc(365).as_str());
}

#[test]
fn inventory_in_birth_and_time_in_health_are_present_and_typed() {
    let broker = Broker::start();
    let term = Terminal::new("sz-ft-0205");
    let root = term.path("root");
    write(
        &root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n",
    );
    write(&root.join("sys/class/dmi/id/sys_vendor"), "Kiosk Works\n");
    write(&root.join("sys/class/dmi/id/product_name"), "X200\n");
    write(&root.join("sys/class/dmi/id/product_serial"), "SN-0042\n");
    write(
        &root.join("proc/net/route"),
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n",
    );
    write(
        &root.join("sys/class/net/eth0/address"),
        "52:54:00:ab:cd:ef\n",
    );
    let mut p = Platform::connect(broker.port, "kiosk/v1/t/#");
    let agent = Agent::start(&term.config(&broker.url(), "[health]\ninterval_s = 1\n"));
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(term.socket()).is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "agent did not start: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let birth = p.wait_json("/state", |v| v["status"] == "online");
    let inv = &birth["inventory"];
    assert_eq!(inv["os"], "Debian GNU/Linux 13 (trixie)");
    assert!(
        inv["kernel"].as_str().is_some_and(|k| !k.is_empty()),
        "{inv}"
    );
    assert_eq!(inv["arch"], std::env::consts::ARCH);
    assert!(inv["apps"].is_object() && inv["docs"].is_object(), "{inv}");
    assert_eq!(inv["docs"]["trust"], 1);
    assert_eq!(
        inv["dmi"],
        json!({"vendor": "Kiosk Works", "product": "X200", "serial": "SN-0042"})
    );
    assert_eq!(inv["primary_iface"], "eth0");
    assert_eq!(inv["mac"], "52:54:00:ab:cd:ef");
    assert!(
        birth.get("cert_not_after").is_none(),
        "no TLS client auth, no cert_not_after"
    );
    let health = p.wait_json("/health", |v| v["time"].is_object());
    assert!(health["time"]["synchronized"].is_boolean(), "{health}");
    assert!(health["time"]["max_error_ms"].is_u64(), "{health}");
    drop(agent);
}
