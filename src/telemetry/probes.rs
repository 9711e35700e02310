//! Probes of the kiosk's own devices and services, each bounded by a timeout so a hung device
//! (a stuck USB bus, an `exec` that never returns) never stalls the health report.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::grade::{DeviceReading, Grade};
use crate::config::{ProbeConfig, ProbeKind, parse_vid_pid};
use crate::host::HostPaths;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeResult {
    pub id: String,
    pub kind: String,
    pub ok: bool,
    pub detail: String,
    pub severity: String,
    /// Fault grade (P1 worst … P4); absent when there is nothing to fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Grade>,
    /// Device figures (printer markers, UPS charge) for the platform.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
    /// What the device itself implies (before escalation by duration).
    #[serde(skip)]
    pub reading_level: Option<Grade>,
    /// The event code for a transition to failing (`device.consumable` or `probe.failed`).
    #[serde(skip)]
    pub event_code: Option<&'static str>,
    /// The UPS is on low battery: a clean power-off is due.
    #[serde(skip)]
    pub power_off_recommended: bool,
}

fn plain(ok: bool, detail: String) -> DeviceReading {
    DeviceReading {
        ok,
        level: None,
        detail,
        details: Value::Null,
        consumables: Vec::new(),
        event_code: None,
        power_off_recommended: false,
    }
}

/// A probe ready to run: the config plus what it needs from the host.
#[derive(Debug, Clone)]
pub struct Probe {
    pub cfg: ProbeConfig,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ProbeEnv {
    pub host: HostPaths,
    pub systemctl: Vec<String>,
}

impl Probe {
    pub async fn run(&self, env: &ProbeEnv) -> ProbeResult {
        let reading = match tokio::time::timeout(self.timeout, self.read(env)).await {
            Ok(r) => r,
            Err(_) => plain(
                false,
                format!("timed out after {} ms", self.timeout.as_millis()),
            ),
        };
        ProbeResult {
            id: self.cfg.id.clone(),
            kind: self.cfg.kind.as_str().into(),
            ok: reading.ok,
            detail: reading.detail,
            severity: self.cfg.severity.as_str().into(),
            level: None,
            details: reading.details,
            reading_level: reading.level,
            event_code: reading.event_code,
            power_off_recommended: reading.power_off_recommended,
        }
    }

    async fn read(&self, env: &ProbeEnv) -> DeviceReading {
        let c = &self.cfg;
        match c.kind {
            ProbeKind::Ipp => {
                super::ipp::probe_ipp(c.url.as_deref().unwrap_or(""), self.timeout).await
            }
            ProbeKind::Nut => {
                super::nut::probe_nut(c.ups.as_deref().unwrap_or(""), self.timeout).await
            }
            _ => {
                let (ok, detail) = self.check(env).await;
                plain(ok, detail)
            }
        }
    }

    async fn check(&self, env: &ProbeEnv) -> (bool, String) {
        let c = &self.cfg;
        match c.kind {
            ProbeKind::Usb => {
                let Some((vid, pid)) = c.vid_pid.as_deref().and_then(parse_vid_pid) else {
                    return (false, "vid_pid missing".into());
                };
                let dir = env.host.resolve("/sys/bus/usb/devices");
                blocking(move || usb_present(dir, vid, pid)).await
            }
            ProbeKind::Path => {
                let Some(p) = &c.path else {
                    return (false, "path missing".into());
                };
                let shown = p.display().to_string();
                let resolved = env.host.resolve(p);
                blocking(move || match std::fs::metadata(&resolved) {
                    Ok(_) => (true, format!("{shown} present")),
                    Err(e) => (false, format!("{shown}: {e}")),
                })
                .await
            }
            ProbeKind::Tcp => {
                let addr = c.addr.clone().unwrap_or_default();
                match tokio::net::TcpStream::connect(&addr).await {
                    Ok(_) => (true, format!("{addr} accepts connections")),
                    Err(e) => (false, format!("{addr}: {e}")),
                }
            }
            ProbeKind::Unit => {
                let unit = c.unit.clone().unwrap_or_default();
                let mut argv = env.systemctl.clone();
                argv.extend(["is-active".to_string(), "--quiet".to_string(), unit.clone()]);
                match run_cmd(&argv, self.timeout).await {
                    Ok((0, _)) => (true, format!("{unit} active")),
                    Ok((code, _)) => (false, format!("{unit} not active (exit {code})")),
                    Err(e) => (false, format!("cannot ask systemd about {unit}: {e}")),
                }
            }
            ProbeKind::Exec => {
                let argv = c.cmd.clone().unwrap_or_default();
                match run_cmd(&argv, self.timeout).await {
                    Ok((0, line)) => (true, line),
                    Ok((code, line)) if line.is_empty() => (false, format!("exit status {code}")),
                    Ok((code, line)) => (false, format!("exit status {code}: {line}")),
                    Err(e) => (
                        false,
                        format!(
                            "cannot run {}: {e}",
                            argv.first().map(String::as_str).unwrap_or("")
                        ),
                    ),
                }
            }
            kind @ (ProbeKind::Ipp | ProbeKind::Nut) => (
                false,
                format!("probe kind {kind} is read as a device, not checked"),
            ),
        }
    }
}

async fn blocking<F>(f: F) -> (bool, String)
where
    F: FnOnce() -> (bool, String) + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| (false, format!("probe task failed: {e}")))
}

fn usb_present(dir: PathBuf, vid: u16, pid: u16) -> (bool, String) {
    let wanted = format!("{vid:04x}:{pid:04x}");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (false, format!("{} not readable", dir.display()));
    };
    for e in entries.flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join(f))
                .ok()
                .and_then(|s| u16::from_str_radix(s.trim(), 16).ok())
        };
        if read("idVendor") == Some(vid) && read("idProduct") == Some(pid) {
            return (
                true,
                format!("{wanted} at {}", e.file_name().to_string_lossy()),
            );
        }
    }
    (false, format!("{wanted} not present"))
}

/// Runs argv within `timeout`; returns (exit code, first line of stdout).
async fn run_cmd(
    argv: &[String],
    timeout: Duration,
) -> Result<(i32, String), crate::process::RunError> {
    let f = crate::process::run_async(argv.to_vec(), timeout, 4096).await?;
    let first = f
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(200)
        .collect();
    Ok((f.code.unwrap_or(-1), first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: &str, f: impl FnOnce(&mut ProbeConfig)) -> Probe {
        let mut cfg = ProbeConfig {
            id: "p".into(),
            kind: kind.parse().unwrap(),
            severity: crate::events::Severity::Major,
            vid_pid: None,
            path: None,
            addr: None,
            unit: None,
            cmd: None,
            url: None,
            ups: None,
            timeout_ms: None,
        };
        f(&mut cfg);
        Probe {
            cfg,
            timeout: Duration::from_millis(2000),
        }
    }

    #[tokio::test]
    async fn usb_and_path_read_under_root() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("sys/bus/usb/devices/1-1");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("idVendor"), "0bda\n").unwrap();
        std::fs::write(dev.join("idProduct"), "5411\n").unwrap();
        let env = ProbeEnv {
            host: HostPaths::new(d.path()),
            systemctl: vec!["false".into()],
        };
        let r = probe("usb", |c| c.vid_pid = Some("0bda:5411".into()))
            .run(&env)
            .await;
        assert!(r.ok, "{r:?}");
        let r = probe("usb", |c| c.vid_pid = Some("0bda:9999".into()))
            .run(&env)
            .await;
        assert!(!r.ok);
        let r = probe("path", |c| c.path = Some("/dev/video0".into()))
            .run(&env)
            .await;
        assert!(!r.ok);
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/video0"), "").unwrap();
        assert!(
            probe("path", |c| c.path = Some("/dev/video0".into()))
                .run(&env)
                .await
                .ok
        );
    }

    #[tokio::test]
    async fn exec_timeout_and_first_line() {
        let env = ProbeEnv {
            host: HostPaths::new("/"),
            systemctl: vec!["false".into()],
        };
        let r = probe("exec", |c| {
            c.cmd = Some(vec![
                "sh".into(),
                "-c".into(),
                "echo paper 80%; echo more".into(),
            ])
        })
        .run(&env)
        .await;
        assert_eq!((r.ok, r.detail.as_str()), (true, "paper 80%"));
        let mut hung = probe("exec", |c| c.cmd = Some(vec!["sleep".into(), "30".into()]));
        hung.timeout = Duration::from_millis(100);
        let r = hung.run(&env).await;
        assert!(!r.ok && r.detail.contains("timed out"), "{r:?}");
        let r = probe("unit", |c| c.unit = Some("x.service".into()))
            .run(&env)
            .await;
        assert!(!r.ok && r.detail.contains("not active"), "{r:?}");
    }

    #[tokio::test]
    async fn tcp_probe() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let env = ProbeEnv {
            host: HostPaths::new("/"),
            systemctl: vec![],
        };
        assert!(
            probe("tcp", |c| c.addr = Some(addr.clone()))
                .run(&env)
                .await
                .ok
        );
        drop(l);
        // Port 0 never accepts (a just-freed port may be taken by a parallel test).
        let r = probe("tcp", |c| c.addr = Some("127.0.0.1:0".into()))
            .run(&env)
            .await;
        assert!(!r.ok && r.detail.starts_with("127.0.0.1:0"), "{r:?}");
    }
}
