//! The `ipp` probe against a real IPP Everywhere printer: CUPS's `ippeveprinter` (Debian:
//! `cups-ipp-utils`) on an ephemeral loopback port, its paper and ink levels set through its own
//! web forms (`/media`, `/supplies`, see ippeveprinter(1)), so the printer itself decides which
//! `printer-state-reasons` it reports and the probe is checked against that, not against
//! answers this crate encoded.
//!
//! ippeveprinter needs a reachable D-Bus system bus for its DNS-SD client even with advertising
//! off; the test gives it a private `dbus-daemon` (no Avahi behind it, nothing is announced).
//!
//! `KIOSK_RECORD_IPP_FIXTURES=1` also records the printer's answers into
//! `tests/fixtures/ipp/ippeve-*.bin`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until};
use kiosk_agent::telemetry::grade::Grade;
use kiosk_agent::telemetry::ipp::{self, probe_ipp};

const TIMEOUT: Duration = Duration::from_secs(20);

fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install cups-ipp-utils and dbus-daemon (scripts/test does)")
        })
}

struct Printer {
    dbus: Child,
    eve: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Printer {
    fn drop(&mut self) {
        for c in [&mut self.eve, &mut self.dbus] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Printer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("spool")).unwrap();
        let bus = d.join("bus");
        let dbus = Command::new(find_tool("dbus-daemon"))
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", bus.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dbus.log")).unwrap())
            .spawn()
            .expect("start dbus-daemon");
        wait_until("the private D-Bus socket", || bus.exists());
        let port = free_port();
        let log = std::fs::File::create(d.join("ippeveprinter.log")).unwrap();
        // `-n localhost`: it listens on every address the name resolves to, and needs one.
        let eve = Command::new(find_tool("ippeveprinter"))
            .args(["-r", "off", "-n", "localhost", "-s", "10,10", "-p"])
            .arg(port.to_string())
            .arg("-d")
            .arg(d.join("spool"))
            .arg("Kiosk Printer")
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}", bus.display()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ippeveprinter");
        let mut me = Self {
            dbus,
            eve,
            port,
            dir,
        };
        let (eve, logs) = (&mut me.eve, me.dir.path().to_path_buf());
        wait_until("ippeveprinter to listen", || {
            if let Ok(Some(status)) = eve.try_wait() {
                panic!("ippeveprinter exited with {status}: {}", read_logs(&logs));
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        me
    }

    fn url(&self) -> String {
        format!("ipp://127.0.0.1:{}/ipp/print", self.port)
    }

    /// Submits one of the printer's web forms (a plain GET with the form's fields) and waits for
    /// its answer, after which the printer's attributes reflect the change.
    fn form(&self, page: &str, fields: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            s,
            "GET /{page}?{fields} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "/{page}?{fields}: {}\n{}",
            answer.lines().next().unwrap_or(""),
            read_logs(self.dir.path())
        );
    }

    /// Paper in tray 1 (`level` sheets; 0 is empty), A4 plain paper.
    fn paper(&self, level: i32) {
        self.form(
            "media",
            &format!(
                "size1=iso_a4_210x297mm&type1=stationery&level1={level}&size2=&type2=&level2=-2"
            ),
        );
    }

    /// Ink levels in percent, in the printer's order: waste tank, black, cyan, magenta, yellow.
    fn supplies(&self, levels: [u8; 5]) {
        let fields: Vec<String> = levels
            .iter()
            .enumerate()
            .map(|(i, l)| format!("supply{i}={l}"))
            .collect();
        self.form("supplies", &fields.join("&"));
    }

    async fn record(&self, name: &str) {
        if std::env::var_os("KIOSK_RECORD_IPP_FIXTURES").is_none() {
            return;
        }
        let body = ipp::fetch(&self.url()).await.unwrap();
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/ipp/{name}.bin"));
        std::fs::write(path, body).unwrap();
    }
}

fn read_logs(dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    format!("{}{}", read("ippeveprinter.log"), read("dbus.log"))
}

fn reasons(r: &kiosk_agent::telemetry::grade::DeviceReading) -> Vec<String> {
    r.details["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn paper_and_ink_through_a_real_ipp_everywhere_printer() {
    let printer = Printer::start();
    let url = printer.url();

    // Full paper, full ink: nothing to do.
    printer.paper(250);
    printer.supplies([10, 100, 100, 100, 100]);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(r.ok, "{r:?}\n{}", read_logs(printer.dir.path()));
    assert_eq!(r.level, None, "{r:?}");
    assert_eq!(r.details["state"], "idle");
    assert_eq!(r.details["accepting"], true);
    printer.record("ippeve-idle").await;

    // The tray runs empty: the printer says media-empty; a supplies round fixes it (P2).
    printer.paper(0);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.level, Some(Grade::P2), "{r:?}");
    assert_eq!(r.event_code, Some("device.consumable"), "{r:?}");
    assert!(
        reasons(&r).iter().any(|x| x.starts_with("media-empty")),
        "{r:?}"
    );
    printer.record("ippeve-media-empty").await;

    // Paper back, black ink nearly gone: still printing, planned for the next visit (P3).
    printer.paper(250);
    printer.supplies([10, 5, 100, 100, 100]);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.level, Some(Grade::P3), "{r:?}");
    assert!(
        reasons(&r)
            .iter()
            .any(|x| x.starts_with("toner-low") || x.starts_with("marker-supply-low")),
        "{r:?}"
    );
    assert!(
        !reasons(&r).iter().any(|x| x.starts_with("media-empty")),
        "{r:?}"
    );
    printer.record("ippeve-toner-low").await;

    // Refilled: back to no fault at all.
    printer.supplies([10, 100, 100, 100, 100]);
    let r = probe_ipp(&url, TIMEOUT).await;
    assert!(r.ok && r.level.is_none(), "{r:?}");

    // A path the printer does not serve is an IPP error, not a crash (P2: cannot print).
    let r = probe_ipp(
        &format!("ipp://127.0.0.1:{}/ipp/nope", printer.port),
        TIMEOUT,
    )
    .await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.level, Some(Grade::P2), "{r:?}");
}
