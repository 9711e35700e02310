//! The shipped broker configuration (config/mosquitto/mosquitto.conf and its ACL) on a real
//! Mosquitto, with certificates from scripts/dev-certs: a terminal publishes and reads only its
//! own topics (plus its groups' and the fleet's downstream ones), and cannot take over another
//! terminal's session.
//!
//! "Never delivered" is shown by order, not by waiting: Mosquitto routes the messages of one
//! connection in the order it receives them, so once a later, allowed message has arrived, a
//! refused earlier one would have arrived before it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};

use common::{DEADLINE, free_port, mosquitto_bin, wait_port};
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};

const A: &str = "sz-ft-0001";
const B: &str = "sz-ft-0002";
const PLATFORM: &str = "kiosk.platform";

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Mosquitto running the shipped config, with paths and ports pointed at a temp dir.
struct Broker {
    dir: tempfile::TempDir,
    terminals_port: u16,
    platform_port: u16,
    child: Child,
}

impl Broker {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let out = Command::new(manifest("scripts/dev-certs"))
            .arg(d.join("certs"))
            .args([A, B])
            .output()
            .expect("run scripts/dev-certs");
        assert!(
            out.status.success(),
            "scripts/dev-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (terminals_port, platform_port) = (free_port(), free_port());
        let shipped = std::fs::read_to_string(manifest("config/mosquitto/mosquitto.conf")).unwrap();
        let certs = d.join("certs");
        let mut conf = shipped.clone();
        for (from, to) in [
            (
                "/etc/mosquitto/certs/kiosk-ca.pem".to_string(),
                certs.join("ca.pem").display().to_string(),
            ),
            (
                "/etc/mosquitto/certs/".to_string(),
                format!("{}/", certs.display()),
            ),
            (
                "/etc/mosquitto/kiosk.acl".to_string(),
                manifest("config/mosquitto/acl").display().to_string(),
            ),
            (
                "/var/lib/mosquitto/".to_string(),
                format!("{}/", d.display()),
            ),
            (
                "log_dest syslog".to_string(),
                format!("log_dest file {}", d.join("mosquitto.log").display()),
            ),
            (
                "listener 8883\n".to_string(),
                format!("listener {terminals_port} 127.0.0.1\n"),
            ),
            (
                "listener 8884 127.0.0.1\n".to_string(),
                format!("listener {platform_port} 127.0.0.1\n"),
            ),
        ] {
            assert!(
                conf.contains(&from),
                "config/mosquitto/mosquitto.conf no longer holds {from:?}; update this test"
            );
            conf = conf.replace(&from, &to);
        }
        // Root in a test; the packaged broker runs as its own user.
        let conf_path = d.join("mosquitto.conf");
        std::fs::write(&conf_path, format!("user root\n{conf}")).unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let broker = Broker {
            dir,
            terminals_port,
            platform_port,
            child,
        };
        wait_port(terminals_port);
        wait_port(platform_port);
        broker
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// A terminal on the terminals' listener, with its own certificate and the given client id.
    fn terminal(&self, cert: &str, client_id: &str) -> Client {
        Client::connect(&self.certs(), cert, client_id, self.terminals_port)
    }

    /// The platform on its own listener.
    fn platform(&self) -> Client {
        let id = common::unique("platform");
        Client::connect(&self.certs(), PLATFORM, &id, self.platform_port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
enum Ev {
    ConnAck,
    SubAck(Vec<SubscribeReasonCode>),
    Msg(String),
    Closed(String),
}

struct Client {
    name: String,
    client: rumqttc::Client,
    rx: mpsc::Receiver<Ev>,
    /// Topics received so far, in order.
    seen: Vec<String>,
}

impl Client {
    fn connect(certs: &Path, cert: &str, client_id: &str, port: u16) -> Self {
        let tls = kiosk_agent::transport::tls::client_config(
            Some(&certs.join("ca.pem")),
            Some(&certs.join(format!("{cert}.pem"))),
            Some(&certs.join(format!("{cert}.key"))),
        )
        .unwrap();
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(std::time::Duration::from_secs(30));
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                let ev = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(p.topic),
                    Ok(_) => continue,
                    Err(e) => {
                        // No reconnection: a closed connection is an outcome the tests look at.
                        let _ = tx.send(Ev::Closed(e.to_string()));
                        break;
                    }
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        let mut c = Client {
            name: cert.to_string(),
            client,
            rx,
            seen: Vec::new(),
        };
        match c.next() {
            Ev::ConnAck => c,
            other => panic!("{cert} could not connect: {other:?}"),
        }
    }

    fn next(&mut self) -> Ev {
        self.rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{}: nothing happened; saw {:?}", self.name, self.seen))
    }

    /// Subscribes and returns the broker's answer (granted QoS or failure).
    fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        loop {
            match self.next() {
                Ev::SubAck(codes) => return codes[0],
                Ev::Msg(t) => self.seen.push(t),
                other => panic!("{}: subscribing to {filter}: {other:?}", self.name),
            }
        }
    }

    fn publish(&self, topic: &str, retain: bool) {
        self.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                retain,
                format!("{{\"to\":\"{topic}\"}}"),
            )
            .unwrap();
    }

    /// Receives until `topic` arrives; returns everything received up to and including it.
    fn until(&mut self, topic: &str) -> Vec<String> {
        while !self.seen.iter().any(|t| t == topic) {
            match self.next() {
                Ev::Msg(t) => self.seen.push(t),
                Ev::Closed(e) => panic!(
                    "{}: connection closed ({e}) while waiting for {topic}; saw {:?}",
                    self.name, self.seen
                ),
                other => panic!("{}: unexpected {other:?}", self.name),
            }
        }
        self.seen.clone()
    }
}

fn t(id: &str, rest: &str) -> String {
    format!("kiosk/v1/t/{id}/{rest}")
}

#[test]
fn a_terminal_publishes_only_under_its_own_subtree() {
    let broker = Broker::start();
    let mut platform = broker.platform();
    assert_eq!(
        platform.subscribe("kiosk/v1/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let a = broker.terminal(A, A);

    let refused = [
        // Another terminal's upstream topics.
        t(B, "state"),
        t(B, "events"),
        t(B, "health"),
        t(B, "reported/policy"),
        t(B, "replies"),
        // Downstream topics, its own included: only the platform sends documents and commands.
        t(A, "desired/policy"),
        t(A, "cmd"),
        "kiosk/v1/g/futian/desired/schedule".to_string(),
        "kiosk/v1/g/futian/cmd".to_string(),
        "kiosk/v1/all/cmd".to_string(),
        // Outside the contract.
        t(A, "other"),
        "kiosk/v1/t/other".to_string(),
        "elsewhere".to_string(),
    ];
    for topic in &refused {
        a.publish(topic, false);
    }
    let allowed = [
        t(A, "state"),
        t(A, "health"),
        t(A, "events"),
        t(A, "reported/policy"),
        t(A, "reported/app/kiosk-ui"),
        t(A, "compliance"),
        t(A, "replies"),
        t(A, "patrol"),
        t(A, "stats"),
    ];
    for topic in &allowed {
        a.publish(topic, false);
    }
    let seen = platform.until(allowed.last().unwrap());
    assert_eq!(
        seen,
        allowed.to_vec(),
        "the platform saw exactly the terminal's own upstream topics, in order"
    );
    assert!(
        broker.log().contains(&format!("as {A}")),
        "the broker names the terminal by its certificate: {}",
        broker.log()
    );
}

#[test]
fn a_terminal_reads_its_own_its_groups_and_the_fleets_downstream_topics_only() {
    let broker = Broker::start();
    let mut platform = broker.platform();
    platform.subscribe("kiosk/v1/#");
    // Retained before anyone subscribes: delivered on subscription, to the right terminal only.
    platform.publish(&t(A, "desired/schedule"), true);
    platform.publish(&t(B, "desired/schedule"), true);
    platform.until(&t(B, "desired/schedule"));

    let mut a = broker.terminal(A, A);
    let mut b = broker.terminal(B, B);
    assert_eq!(
        a.subscribe(&t(A, "desired/#")),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        a.subscribe(&t(A, "cmd")),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    // B asks for A's command topic by name, then for everything: the broker may accept the
    // subscriptions, but must deliver only what B may read.
    let direct = b.subscribe(&t(A, "cmd"));
    let everything = b.subscribe("kiosk/v1/#");
    assert_eq!(
        everything,
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "a wildcard subscription is filtered per message, not refused"
    );

    // A's own upstream message: once the platform has it, B's copy (if any) was routed too.
    a.publish(&t(A, "events"), false);
    platform.until(&t(A, "events"));

    for topic in [
        t(A, "cmd"),
        t(A, "desired/policy"),
        t(B, "cmd"),
        "kiosk/v1/g/futian/desired/policy".to_string(),
        "kiosk/v1/g/futian/cmd".to_string(),
        "kiosk/v1/all/desired/catalog".to_string(),
        "kiosk/v1/all/cmd".to_string(),
        t(B, "desired/app/kiosk-ui"),
    ] {
        platform.publish(&topic, false);
    }

    let b_seen = b.until(&t(B, "desired/app/kiosk-ui"));
    assert_eq!(
        b_seen,
        vec![
            t(B, "desired/schedule"),
            t(B, "cmd"),
            "kiosk/v1/g/futian/desired/policy".to_string(),
            "kiosk/v1/g/futian/cmd".to_string(),
            "kiosk/v1/all/desired/catalog".to_string(),
            "kiosk/v1/all/cmd".to_string(),
            t(B, "desired/app/kiosk-ui"),
        ],
        "B never sees A's commands, documents or upstream messages (subscription to A's cmd: {direct:?})"
    );

    let a_seen = a.until(&t(A, "desired/policy"));
    assert_eq!(
        a_seen,
        vec![
            t(A, "desired/schedule"),
            t(A, "cmd"),
            t(A, "desired/policy")
        ],
        "A gets its own retained document, command and document"
    );
}

#[test]
fn a_terminal_cannot_take_over_another_terminals_session() {
    let broker = Broker::start();
    let platform = broker.platform();
    let mut a = broker.terminal(A, A);
    a.subscribe(&t(A, "cmd"));
    // B connects claiming A's client id: the broker replaces it with B's certificate identity.
    let mut b = broker.terminal(B, A);
    b.subscribe("kiosk/v1/#");

    platform.publish(&t(A, "cmd"), false);
    platform.publish(&t(B, "cmd"), false);
    assert_eq!(
        a.until(&t(A, "cmd")),
        vec![t(A, "cmd")],
        "A keeps its connection and its session"
    );
    assert_eq!(
        b.until(&t(B, "cmd")),
        vec![t(B, "cmd")],
        "B, whatever client id it asked for, is B"
    );
    assert!(
        broker.log().contains(&format!("as {B}")),
        "the broker used B's certificate identity as its client id: {}",
        broker.log()
    );
}
