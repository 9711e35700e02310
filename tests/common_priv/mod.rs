//! The privilege split under test: a throwaway system account standing in for `kiosk-agent`,
//! the real `kiosk-agent-helper` run as root on a temp socket, and requests sent as that
//! account (setpriv) exactly as the daemon would send them.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The account every test of this file runs the daemon side as.
pub const USER: &str = "kiosk-agent-test";

/// Creates the account once (a system account without home or login shell); returns uid, gid.
pub fn daemon_user() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        if nix::unistd::User::from_name(USER).unwrap().is_none() {
            let st = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home", "--shell"])
                .args(["/usr/sbin/nologin", USER])
                .status()
                .expect("useradd");
            // A parallel test binary may have created it meanwhile.
            assert!(
                st.success() || nix::unistd::User::from_name(USER).unwrap().is_some(),
                "useradd {USER} failed"
            );
        }
        let u = nix::unistd::User::from_name(USER).unwrap().unwrap();
        (u.uid.as_raw(), u.gid.as_raw())
    })
}

/// The helper under test: cargo's build, or `KIOSK_TEST_HELPER_BIN` (the static build, as
/// packaged; see `agent_bin`).
pub fn helper_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    super::common::bin_under_test(
        &BIN,
        "KIOSK_TEST_HELPER_BIN",
        env!("CARGO_BIN_EXE_kiosk-agent-helper"),
    )
}

/// `setpriv` prefix that drops to the daemon account with no groups and no capabilities.
pub fn as_daemon(program: &str) -> Command {
    let (uid, gid) = daemon_user();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--inh-caps=-all")
        .arg("--bounding-set=-all")
        .arg(program);
    c
}

/// Makes `dir` and its ancestors traversable by the daemon account (temp dirs are 0700).
pub fn open_path(dir: &Path) {
    let mut p = Some(dir);
    while let Some(d) = p {
        if d == Path::new("/") || d == Path::new("/tmp") {
            break;
        }
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        p = d.parent();
    }
}

pub fn chown_to_daemon(path: &Path) {
    let (uid, gid) = daemon_user();
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The real helper as root, serving `config`'s `helper.socket`.
pub struct HelperProc {
    pub child: Child,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl HelperProc {
    pub fn start(config: &Path, socket: &Path) -> Self {
        let log = config.with_extension("helper.log");
        let child = Command::new(helper_bin())
            .arg("--config")
            .arg(config)
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start helper");
        let h = HelperProc {
            child,
            config: config.to_path_buf(),
            socket: socket.to_path_buf(),
            log,
        };
        super::common::wait_socket(socket);
        h
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One raw request line, sent as the daemon account; the parsed reply.
    pub fn call_raw_as_daemon(&self, line: &[u8]) -> Value {
        let mut c = as_daemon(helper_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("call")
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let line = line.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&line);
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no reply ({e}): stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn call_as_daemon(&self, req: &Value) -> Value {
        self.call_raw_as_daemon(format!("{req}\n").as_bytes())
    }
}

impl Drop for HelperProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
