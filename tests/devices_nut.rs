//! The `nut` probe against a real `upsd` fed by the `dummy-ups` driver, which re-reads a `.dev`
//! file the test edits: mains (OL) → on battery (OB) → low battery (OB LB) → mains again.
//!
//! Needs `/lib/nut/upsd` and `/lib/nut/dummy-ups` (Debian: `nut-server`) and root (both are
//! told to stay root with `-u root`, so no `nut` user or system config is involved). Each run
//! has its own config and state directory (`NUT_CONFPATH`, `NUT_STATEPATH`) and an ephemeral
//! loopback port.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kiosk_agent::events::Severity;
use kiosk_agent::telemetry::grade::{DeviceReading, Grade, grade};
use kiosk_agent::telemetry::nut::probe_nut;

const NUT_BIN: &str = "/lib/nut";

struct Nut {
    driver: Child,
    upsd: Child,
    port: u16,
    dir: tempfile::TempDir,
    writes: u64,
}

impl Drop for Nut {
    fn drop(&mut self) {
        for c in [&mut self.upsd, &mut self.driver] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tool(name: &str) -> PathBuf {
    let p = Path::new(NUT_BIN).join(name);
    assert!(p.is_file(), "{} missing: install nut-server", p.display());
    p
}

/// Writes the driver's `.dev` file. The n-th write gets a later mtime than the one before,
/// whatever the file system's timestamp resolution, so the driver notices every change.
fn write_dev(path: &Path, contents: &str, n: u64) {
    std::fs::write(path, contents).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(10 * n))
        .unwrap();
}

impl Nut {
    fn start(status: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("state")).unwrap();
        let port = common::free_port();
        std::fs::write(
            d.join("ups.conf"),
            format!(
                "[kiosk]\n  driver = dummy-ups\n  port = {}\n  desc = \"kiosk test\"\n",
                d.join("kiosk.dev").display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("upsd.conf"), format!("LISTEN 127.0.0.1 {port}\n")).unwrap();
        std::fs::write(d.join("upsd.users"), "").unwrap();
        std::fs::write(d.join("nut.conf"), "MODE=standalone\n").unwrap();
        let dev = d.join("kiosk.dev");
        write_dev(&dev, status, 1);
        let spawn = |prog: PathBuf, args: &[&str], log: &str| {
            let out = std::fs::File::create(d.join(log)).unwrap();
            Command::new(prog)
                .args(args)
                .env("NUT_CONFPATH", d)
                .env("NUT_STATEPATH", d.join("state"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap()
        };
        let driver = spawn(
            tool("dummy-ups"),
            &["-a", "kiosk", "-F", "-u", "root", "-i", "1"],
            "driver.log",
        );
        let upsd = spawn(tool("upsd"), &["-F", "-u", "root"], "upsd.log");
        Self {
            driver,
            upsd,
            port,
            dir,
            writes: 1,
        }
    }

    fn set(&mut self, contents: &str) {
        self.writes += 1;
        write_dev(&self.dir.path().join("kiosk.dev"), contents, self.writes);
    }

    fn spec(&self, name: &str) -> String {
        format!("{name}@127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "driver:\n{}\nupsd:\n{}",
            read("driver.log"),
            read("upsd.log")
        )
    }

    /// Polls upsd until the reading satisfies `want`; the driver re-reads its file on its own
    /// schedule, so there is nothing to wait on but the answer itself.
    async fn await_reading(
        &mut self,
        what: &str,
        want: impl Fn(&DeviceReading) -> bool,
    ) -> DeviceReading {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = probe_nut(&self.spec("kiosk"), Duration::from_secs(10)).await;
            if want(&r) {
                return r;
            }
            let exited = [&mut self.driver, &mut self.upsd]
                .into_iter()
                .find_map(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                panic!(
                    "a NUT process exited ({st}) waiting for {what}: {}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; last {r:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn mains_battery_low_battery_and_back() {
    let mut nut = Nut::start("ups.status: OL\nbattery.charge: 100\nbattery.runtime: 1800\n");
    let now: jiff::Timestamp = "2026-03-02T00:00:00Z".parse().unwrap();

    let r = nut.await_reading("OL", |r| r.ok).await;
    assert_eq!(r.level, None);
    assert_eq!(r.detail, "on line, charge 100%, runtime 30 min");
    assert_eq!(r.details["status"], "OL");
    assert!(!r.power_off_recommended);

    nut.set("ups.status: OB DISCHRG\nbattery.charge: 80\nbattery.runtime: 1200\n");
    let r = nut
        .await_reading("OB", |r| r.details["status"] == "OB DISCHRG")
        .await;
    assert!(!r.ok);
    assert_eq!(r.level, Some(Grade::P3));
    assert_eq!(r.event_code, Some("probe.failed"));
    assert!(
        !r.power_off_recommended,
        "on battery alone is not a reason to stop"
    );
    assert_eq!(r.details["charge"], 80.0);
    assert_eq!(r.details["runtime_s"], 1200);
    assert_eq!(
        grade(
            "nut",
            Severity::Major,
            r.ok,
            r.level,
            Some("2026-02-01T00:00:00Z".parse().unwrap()),
            now
        ),
        Some(Grade::P3)
    );

    nut.set("ups.status: OB LB\nbattery.charge: 9\nbattery.runtime: 120\n");
    let r = nut
        .await_reading("OB LB", |r| r.details["status"] == "OB LB")
        .await;
    assert_eq!((r.ok, r.level), (false, Some(Grade::P2)));
    assert!(r.power_off_recommended);
    assert_eq!(r.details["power_off_recommended"], true);
    assert_eq!(
        r.detail,
        "low battery, charge 9%, runtime 2 min; power off recommended"
    );

    nut.set("ups.status: OL CHRG\nbattery.charge: 15\nbattery.runtime: 200\n");
    let r = nut.await_reading("OL again", |r| r.ok).await;
    assert_eq!((r.level, r.power_off_recommended), (None, false));

    // A UPS upsd does not know about.
    let r = probe_nut(&nut.spec("other"), Duration::from_secs(10)).await;
    assert!(!r.ok && r.detail.contains("UNKNOWN-UPS"), "{r:?}");
    assert_eq!(r.level, Some(Grade::P3));
}
