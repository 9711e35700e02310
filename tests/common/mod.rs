//! Test harness: a real Mosquitto on an ephemeral loopback port, the real agent binary, an MQTT
//! observer, keys and envelopes. Waits are on signals (a message arriving, a port accepting,
//! a process exiting) bounded by a generous deadline that only turns a hang into a failure.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run scripts/test, which installs it");
}

/// A loopback TCP port nobody listens on right now, for a server the test starts.
/// Never the same port twice in one test process: the kernel may hand a just-released port
/// out again, and two servers of one test (a broker and its second listener) or of two tests
/// running at once would then race for it and one would fail to bind.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A name no other call in this test process returns (client ids, log file names).
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Polls `cond` until it holds; the deadline only turns a hang into a failure naming `what`.
/// For state that has no signal to await (a file written by another process, a log line).
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(DEADLINE, what, cond)
}

/// `wait_until` for a wait that is longer by design (a real clock reaching a set time).
pub fn wait_until_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wait_until` for a value: polls until `probe` returns `Some`.
pub fn wait_for_some<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    wait_until(what, || {
        out = probe();
        out.is_some()
    });
    out.unwrap()
}

/// Waits until something accepts TCP connections on `port` (the broker is up).
pub fn wait_port(port: u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(&format!("port {port} to open"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// Lowercase hex SHA-256, as artifacts and key ids are named.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A fresh Ed25519 key: its PKCS#8 document (what `kiosk-admin keygen` writes) and the pair.
pub fn ed25519_pkcs8() -> (Vec<u8>, ring::signature::Ed25519KeyPair) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    (pkcs8.as_ref().to_vec(), pair)
}

/// One entry of a test archive.
pub enum Entry<'a> {
    /// A regular file, mode 0755.
    File(&'a str, &'a [u8]),
    /// A symbolic link `path -> target`.
    Link(&'a str, &'a str),
}

/// A tar archive of `entries`, in order, built with the same crate the agent unpacks with.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            Entry::File(path, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Link(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// `raw` gzip-compressed at `level` (`none()` keeps large payloads at their size on the wire).
pub fn gzip(raw: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n")
    }

    /// `extra` is appended to the listener's config (TLS, ACL, ...).
    pub fn start_with(extra: &str) -> Self {
        let mut b = Broker {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_string(),
            child: None,
        };
        b.restart();
        b
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {} 127.0.0.1\npersistence true\npersistence_location {}/\nlog_dest file {}\nlog_type all\n{}",
                self.port,
                self.dir.path().display(),
                self.dir.path().join("mosquitto.log").display(),
                self.extra
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        wait_port(self.port);
    }

    /// Stops gracefully (SIGTERM), so persistent sessions are saved for the restart.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// An MQTT client standing in for the platform: records what it sees, publishes documents.
pub struct Platform {
    pub client: rumqttc::Client,
    rx: mpsc::Receiver<Msg>,
    pub seen: Vec<Msg>,
}

impl Platform {
    pub fn connect(port: u16, filter: &str) -> Self {
        Self::connect_opts(port, filter, &unique("platform"), true)
    }

    /// A platform with a persistent session: QoS 1 messages published while it is away (a
    /// broker restart) are kept for it by the broker.
    pub fn connect_session(port: u16, filter: &str, id: &str) -> Self {
        Self::connect_opts(port, filter, id, false)
    }

    fn connect_opts(port: u16, filter: &str, id: &str, clean: bool) -> Self {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(clean);
        opts.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx
                            .send(Msg {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready_rx
            .recv_timeout(DEADLINE)
            .expect("platform subscription acknowledged");
        Platform {
            client,
            rx,
            seen: Vec::new(),
        }
    }

    /// Receives until a message matches; everything received is kept in `seen`.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!("timed out waiting for {what}; saw: {:#?}", self.summary())
            });
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}; saw: {:#?}", self.summary()),
            }
        }
    }

    /// Waits for a JSON message on a topic ending with `suffix` that satisfies `pred`.
    pub fn wait_json(&mut self, suffix: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(suffix, |m| m.topic.ends_with(suffix) && pred(&m.json()))
            .json()
    }

    pub fn event(&mut self, code: &str) -> Value {
        let c = code.to_string();
        self.wait_json("/events", move |v| v["code"] == c.as_str())
    }

    pub fn summary(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|m| {
                format!(
                    "{} {}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )
            })
            .collect()
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.into())
            .unwrap();
    }

    /// Everything that arrived in the meantime, without waiting.
    pub fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
    }
}

/// A real Ed25519 key, generated for the test.
pub struct Key {
    pub pair: ring::signature::Ed25519KeyPair,
    pub keyid: String,
    pub public_b64: String,
}

pub fn key() -> Key {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let (_, pair) = ed25519_pkcs8();
    let public = pair.public_key().as_ref().to_vec();
    Key {
        keyid: kiosk_agent::trust::keyid_of(&public),
        public_b64: base64::engine::general_purpose::STANDARD.encode(&public),
        pair,
    }
}

pub const ALL_ROLES: &[&str] = &["trust", "policy", "schedule", "catalog", "app", "command"];
pub const DOC_ROLES: &[&str] = &["policy", "schedule", "catalog", "app", "command"];

/// A trust document: each key with its roles, and the thresholds.
pub fn trust_doc(version: u64, keys: &[(&Key, &[&str])], thresholds: Value) -> Value {
    serde_json::json!({
        "kind": "trust",
        "version": version,
        "keys": keys.iter().map(|(k, roles)| serde_json::json!({
            "keyid": k.keyid, "public_key": k.public_b64, "roles": roles,
        })).collect::<Vec<_>>(),
        "thresholds": thresholds,
    })
}

pub fn thresholds(n: u64) -> Value {
    serde_json::json!({"trust": 1, "policy": n, "schedule": n, "catalog": n, "app": n, "command": n})
}

/// The DSSE envelope of `payload` for `role`, signed by `keys`.
pub fn sign(role: &str, payload: &[u8], keys: &[&Key]) -> Vec<u8> {
    let role: kiosk_agent::trust::Role = role.parse().unwrap();
    let pairs: Vec<&ring::signature::Ed25519KeyPair> = keys.iter().map(|k| &k.pair).collect();
    kiosk_agent::trust::sign_envelope(role, payload, &pairs)
        .to_json()
        .into_bytes()
}

/// A temp directory laid out like a terminal: state, socket, root, apps, and a trust root
/// with one key (`admin`) holding every role.
pub struct Terminal {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub admin: Key,
}

impl Terminal {
    pub fn new(id: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["state", "root/dev", "apps", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let t = Terminal {
            dir,
            id: id.to_string(),
            admin: key(),
        };
        t.set_trust(&trust_doc(1, &[(&t.admin, ALL_ROLES)], thresholds(1)));
        t
    }

    pub fn set_trust(&self, doc: &Value) {
        std::fs::write(
            self.path("trust.json"),
            serde_json::to_vec_pretty(doc).unwrap(),
        )
        .unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/kioskctl.sock")
    }

    /// A config with the test's broker URL and paths; `extra` is appended verbatim.
    pub fn config(&self, url: &str, extra: &str) -> PathBuf {
        let p = self.path("agent.toml");
        let text = format!(
            r#"[terminal]
id = "{id}"
groups = ["futian"]

[mqtt]
url = "{url}"
reconnect_min_s = 1
reconnect_max_s = 2

[paths]
state_dir = "{d}/state"
socket = "{d}/run/kioskctl.sock"
trust_file = "{d}/trust.json"
apps_dir = "{d}/apps"
root = "{d}/root"

{extra}
"#,
            id = self.id,
            d = self.dir.path().display(),
        );
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

/// The daemon under test: the one cargo built beside the tests, or `KIOSK_TEST_AGENT_BIN`
/// (scripts/test points it at the statically linked musl build, as packaged, and runs the
/// end-to-end files again).
pub fn agent_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    bin_under_test(
        &BIN,
        "KIOSK_TEST_AGENT_BIN",
        env!("CARGO_BIN_EXE_kiosk-agent"),
    )
}

/// `var` when it is set, else cargo's `built`; read once into `cell`.
pub fn bin_under_test(
    cell: &'static std::sync::OnceLock<String>,
    var: &str,
    built: &str,
) -> &'static str {
    cell.get_or_init(|| std::env::var(var).unwrap_or_else(|_| built.to_string()))
}

pub fn kioskctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kioskctl")
}

impl Agent {
    pub fn start(config: &Path) -> Self {
        Self::start_env(config, &[])
    }

    pub fn start_env(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config").arg(config);
        Self::spawn(cmd, config, env)
    }

    /// As systemd starts it with a watchdog: `WATCHDOG_PID` must be the agent's own pid, so a
    /// shell exports its pid and execs the agent.
    pub fn start_watchdog(config: &Path, notify_socket: &Path, usec: u64) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("export WATCHDOG_PID=$$; exec \"$0\" --config \"$1\"")
            .arg(agent_bin())
            .arg(config);
        let usec = usec.to_string();
        Self::spawn(
            cmd,
            config,
            &[
                ("NOTIFY_SOCKET", notify_socket.to_str().unwrap()),
                ("WATCHDOG_USEC", &usec),
            ],
        )
    }

    fn spawn(mut cmd: Command, config: &Path, env: &[(&str, &str)]) -> Self {
        let log = config.with_extension(unique("log"));
        let f = std::fs::File::create(&log).unwrap();
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Agent {
            child: cmd.spawn().expect("start agent"),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn wait(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let log = self.log.clone();
        let what = format!("the agent to exit (log {})", log.display());
        wait_for_some(&what, || child.try_wait().unwrap())
    }

    pub fn stop(mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the agent's socket answers (it is bound before READY).
pub fn wait_socket(path: &Path) {
    wait_until(&format!("socket {} to come up", path.display()), || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
}

/// One request on the local socket.
pub fn socket_call(path: &Path, req: &Value) -> Value {
    let mut c = kiosk_agent::api::client::Client::connect(path).expect("connect socket");
    c.call(req).expect("socket call")
}

pub fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Makes the agent raise an event now (a maintenance switch through its socket) and waits for
/// it on the platform's side. Events arrive in seq order, so once this one is in, every event
/// raised before it is in too: a check that something was *not* raised is then conclusive,
/// where one made right after a `drain` passes if the unwanted event comes a moment later.
/// The platform must subscribe to the terminal's events.
pub fn event_barrier(platform: &mut Platform, sock: &Path, on: bool, reason: &str) -> Value {
    let r = socket_call(
        sock,
        &serde_json::json!({"op": "maintenance", "on": on, "reason": reason}),
    );
    assert_eq!(r["ok"], true, "{r:#}");
    // The switch's event is recorded before the answer; the newest recorded event is it, or a
    // later one, and either proves the point.
    let latest = socket_call(sock, &serde_json::json!({"op": "events", "limit": 1}));
    let seq = latest["data"]["events"][0]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no event recorded: {latest:#}"));
    platform.wait_json("/events", move |v| v["seq"].as_u64() == Some(seq))
}

/// A signed-command document (docs/protocol.md §5) for the tests to sign.
pub fn command(id: &str, name: &str, target: &str, args: Value, expires: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "command", "id": id, "name": name, "args": args, "target": target,
        "issued_at": "2026-11-29T08:00:00Z", "expires_at": expires,
    }))
    .unwrap()
}

/// Copies a fixture tree (symlinks as symlinks) into a test's temp root.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Runs kioskctl as `uid` with exactly `groups` (the first is the primary group).
pub fn kioskctl_as(uid: u32, groups: &[u32], socket: &Path, args: &[&str]) -> (bool, String) {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={}", groups[0]))
        .arg(format!("--groups={}", list.join(",")))
        .arg(kioskctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn gid(name: &str) -> u32 {
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("group {name}"))
        .gid
        .as_raw()
}

/// Runs kioskctl against `socket` as this process's user: whether it succeeded, its stdout
/// and its stderr.
pub fn kioskctl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kioskctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// What most end-to-end tests start from: a broker, a platform client holding a persistent
/// session on the terminal's subtree (so nothing published while it waits is missed), and the
/// terminal's files with its configuration. Each test file adds its own steps in an `impl Rig`.
pub struct Rig {
    pub broker: Broker,
    pub platform: Platform,
    pub term: Terminal,
    pub cfg: PathBuf,
}

impl Rig {
    pub fn new(prefix: &str, id: &str, extra: &str) -> Self {
        let broker = Broker::start();
        let platform = Platform::connect_session(
            broker.port,
            &format!("{prefix}/t/{id}/#"),
            &format!("platform-{id}"),
        );
        let term = Terminal::new(id);
        let cfg = term.config(&broker.url(), extra);
        Self {
            broker,
            platform,
            term,
            cfg,
        }
    }

    /// Waits for this terminal's birth (`state` online).
    pub fn wait_online(&mut self) {
        let id = self.term.id.clone();
        self.platform.wait_json("/state", move |v| {
            v["status"] == "online" && v["terminal_id"] == id.as_str()
        });
    }

    /// This terminal's own scope, `t/{id}`.
    pub fn me(&self) -> String {
        format!("t/{}", self.term.id)
    }
}

/// Runs `cmd` to completion and fails the test with its stderr unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
