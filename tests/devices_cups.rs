//! The `ipp` probe against a real CUPS scheduler: its own `cupsd` on an ephemeral loopback
//! port with its own ServerRoot, spool, cache and logs (no system service is touched), one
//! printer on a file backend, driven through the states a kiosk printer goes through.
//!
//! Needs `cupsd`, `lpadmin`, `cupsdisable`/`cupsenable`, `cupsreject`/`cupsaccept` (Debian:
//! `cups-daemon`, `cups-client`) and root (cupsd drops to the `lp` user).
//!
//! `KIOSK_RECORD_IPP_FIXTURES=1` also records the scheduler's answers into
//! `tests/fixtures/ipp/cups-*.bin`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until};

use kiosk_agent::events::Severity;
use kiosk_agent::telemetry::grade::{Grade, grade};
use kiosk_agent::telemetry::ipp::{self, probe_ipp};

const TIMEOUT: Duration = Duration::from_secs(20);

fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install cups-daemon and cups-client"))
}

fn cups_logs(dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    format!("{}{}", read("log/cupsd.out"), read("log/error_log"))
}

struct Cupsd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Cupsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cupsd {
    fn start() -> Self {
        let cupsd = find_tool("cupsd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["root", "spool", "cache", "state", "log", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let port = free_port();
        std::fs::write(
            d.join("root/cupsd.conf"),
            format!(
                "Listen 127.0.0.1:{port}\nLogLevel warn\nBrowsing Off\nWebInterface No\n\
                 DefaultAuthType None\n<Location />\n  Order allow,deny\n  Allow all\n</Location>\n\
                 <Policy default>\n  <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n"
            ),
        )
        .unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("root/cups-files.conf"),
            format!(
                "ServerRoot {}\nRequestRoot {}\nCacheDir {}\nStateDir {}\nTempDir {}\n\
                 ErrorLog {}\nAccessLog {}\nPageLog {}\nFileDevice Yes\nUser lp\nGroup lp\n",
                p("root"),
                p("spool"),
                p("cache"),
                p("state"),
                p("tmp"),
                p("log/error_log"),
                p("log/access_log"),
                p("log/page_log"),
            ),
        )
        .unwrap();
        let out = std::fs::File::create(d.join("log/cupsd.out")).unwrap();
        let child = Command::new(cupsd)
            .arg("-f")
            .arg("-c")
            .arg(d.join("root/cupsd.conf"))
            .arg("-s")
            .arg(d.join("root/cups-files.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start cupsd");
        let mut me = Self { child, port, dir };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let (child, dir) = (&mut self.child, self.dir.path().to_path_buf());
        wait_until("cupsd to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("cupsd exited with {status}: {}", cups_logs(&dir));
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn logs(&self) -> String {
        cups_logs(self.dir.path())
    }

    /// Runs a CUPS admin tool against this scheduler and insists it worked.
    fn admin(&self, tool: &str, args: &[&str]) {
        let out = Command::new(find_tool(tool))
            .arg("-h")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(args)
            .env("CUPS_SERVERROOT", self.dir.path().join("root"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    fn url(&self, printer: &str) -> String {
        format!("ipp://127.0.0.1:{}/printers/{printer}", self.port)
    }

    async fn record(&self, name: &str) {
        if std::env::var_os("KIOSK_RECORD_IPP_FIXTURES").is_none() {
            return;
        }
        let body = ipp::fetch(&self.url("kiosk")).await.unwrap();
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/ipp/{name}.bin"));
        std::fs::write(path, body).unwrap();
    }
}

#[tokio::test]
async fn printer_states_through_a_real_cups() {
    let cups = Cupsd::start();
    cups.admin("lpadmin", &["-p", "kiosk", "-E", "-v", "file:///dev/null"]);
    let url = cups.url("kiosk");

    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(r.ok, "{r:?}\n{}", cups.logs());
    assert_eq!(r.level, None);
    assert_eq!(r.details["state"], "idle");
    assert_eq!(r.details["accepting"], true);
    assert!(r.detail.starts_with("idle"), "{r:?}");
    cups.record("cups-idle").await;

    // Disabled (cupsdisable): stopped, reason `paused`: a P2 failure for a technician.
    cups.admin("cupsdisable", &["kiosk"]);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.level, Some(Grade::P2));
    assert_eq!(r.event_code, Some("probe.failed"));
    assert_eq!(r.details["state"], "stopped");
    assert!(
        r.details["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "paused"),
        "{r:?}"
    );
    assert_eq!(
        grade(
            "ipp",
            Severity::Minor,
            r.ok,
            r.level,
            None,
            "2026-03-02T00:00:00Z".parse().unwrap()
        ),
        Some(Grade::P2),
        "the printer's own state outranks a lenient configured severity"
    );
    cups.record("cups-paused").await;

    // Enabled but refusing jobs (cupsreject): the kiosk cannot print either.
    cups.admin("cupsenable", &["kiosk"]);
    cups.admin("cupsreject", &["kiosk"]);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(!r.ok && r.detail.contains("not accepting jobs"), "{r:?}");
    assert_eq!(r.details["state"], "idle");

    cups.admin("cupsaccept", &["kiosk"]);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(r.ok, "recovered: {r:?}");

    // A queue that does not exist: CUPS answers client-error-not-found.
    let r = probe_ipp(&cups.url("nope"), TIMEOUT).await;
    assert!(!r.ok && r.detail.contains("0x0406"), "{r:?}");
    assert_eq!(r.level, Some(Grade::P2));
}
