//! The `nut` probe: asks Network UPS Tools' `upsd` for a UPS's variables (`LIST VAR`, network
//! protocol on port 3493) and turns `ups.status`, `battery.charge` and `battery.runtime` into a
//! graded `DeviceReading`.
//!
//! The UPS matters for one decision: a kiosk that runs on a low battery must stop cleanly before
//! the power dies mid-transaction (a half-printed certificate, a card left in the reader). So:
//! - `OL` → ok (a `RB` "replace battery" flag adds a P3 consumable);
//! - `OB` → failing, P3: an event tells operations the site lost mains power;
//! - `LB` or `FSD` → failing, P2, `power_off_recommended`: the daemon powers off cleanly when
//!   `power.on_low_battery` is set. The probe itself never powers anything off.
//!
//! A UPS server on the LAN is not trusted: lines, line count and bytes are bounded, names are
//! checked before they go on the wire, and anything unexpected is an error, never a panic.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::grade::{Consumable, DeviceReading, Grade, SupplyState};

pub const DEFAULT_PORT: u16 = 3493;
const MAX_LINE: usize = 1024;
const MAX_VARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum NutError {
    #[error("ups {spec:?}: {reason}")]
    BadAddr { spec: String, reason: &'static str },
    #[error("cannot connect to upsd at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to upsd at {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("upsd says ERR {0}")]
    Server(String),
    #[error("unexpected answer from upsd: {0}")]
    Protocol(&'static str),
    #[error("upsd closed the connection before END LIST VAR")]
    Closed,
}

/// `name@host[:port]` from the probe's `ups` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsAddr {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl UpsAddr {
    pub fn parse(spec: &str) -> Result<Self, NutError> {
        let bad = |reason| NutError::BadAddr {
            spec: spec.chars().take(200).collect(),
            reason,
        };
        let (name, hostport) = spec
            .split_once('@')
            .ok_or(bad("must be name@host[:port]"))?;
        // The name goes into a protocol line: nothing that could end or split the command.
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(bad("ups name must be 1-64 of [A-Za-z0-9_.-]"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(bad("text after IPv6 host")),
            };
            (format!("[{h}]"), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() || host == "[]" || port == 0 {
            return Err(bad("host or port missing"));
        }
        if host
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._:[]%".contains(&b)))
        {
            return Err(bad("bad host"));
        }
        Ok(Self {
            name: name.to_string(),
            host,
            port,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// All variables of the UPS, as `upsd` lists them. No timeout of its own: callers bound it.
pub async fn list_vars(ups: &UpsAddr) -> Result<BTreeMap<String, String>, NutError> {
    let addr = ups.addr();
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|source| NutError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let io = |source| NutError::Io {
        addr: addr.clone(),
        source,
    };
    let mut s = BufReader::new(stream);
    s.get_mut()
        .write_all(format!("LIST VAR {}\n", ups.name).as_bytes())
        .await
        .map_err(io)?;
    let begin = format!("BEGIN LIST VAR {}", ups.name);
    let end = format!("END LIST VAR {}", ups.name);
    let mut vars = BTreeMap::new();
    let mut started = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut s)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(io)?;
        if n == 0 {
            return Err(NutError::Closed);
        }
        if line.last() != Some(&b'\n') {
            return Err(if line.len() > MAX_LINE {
                NutError::Protocol("line too long")
            } else {
                NutError::Closed
            });
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(code) = text.strip_prefix("ERR ") {
            return Err(NutError::Server(code.chars().take(64).collect()));
        }
        if !started {
            if text != begin {
                return Err(NutError::Protocol("no BEGIN LIST VAR"));
            }
            started = true;
            continue;
        }
        if text == end {
            break;
        }
        let (name, value) = parse_var_line(text, &ups.name)?;
        if vars.len() >= MAX_VARS {
            return Err(NutError::Protocol("too many variables"));
        }
        vars.insert(name, value);
    }
    // Polite goodbye; upsd copes if it never arrives.
    let _ = s.get_mut().write_all(b"LOGOUT\n").await;
    Ok(vars)
}

/// `VAR <ups> <name> "<value>"` with `\"` and `\\` escapes in the value.
fn parse_var_line(line: &str, ups: &str) -> Result<(String, String), NutError> {
    let rest = line
        .strip_prefix("VAR ")
        .and_then(|r| r.strip_prefix(ups))
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(NutError::Protocol("not a VAR line for this ups"))?;
    let (name, quoted) = rest
        .split_once(' ')
        .ok_or(NutError::Protocol("VAR line without a value"))?;
    if name.is_empty() {
        return Err(NutError::Protocol("VAR line without a name"));
    }
    let inner = quoted
        .strip_prefix('"')
        .ok_or(NutError::Protocol("value not quoted"))?;
    let mut value = String::new();
    let mut chars = inner.chars();
    loop {
        match chars.next() {
            Some('\\') => match chars.next() {
                Some(c) => value.push(c),
                None => return Err(NutError::Protocol("dangling escape")),
            },
            Some('"') => break,
            Some(c) => value.push(c),
            None => return Err(NutError::Protocol("unterminated value")),
        }
    }
    Ok((name.to_string(), value))
}

/// The variables that matter to the kiosk.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsStatus {
    /// `ups.status` tokens, e.g. `["OB", "LB"]`.
    pub flags: Vec<String>,
    /// `battery.charge`, percent.
    pub charge: Option<f64>,
    /// `battery.runtime`, seconds.
    pub runtime_s: Option<u64>,
}

impl UpsStatus {
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Self {
        let num = |k: &str| {
            vars.get(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        Self {
            flags: vars
                .get("ups.status")
                .map(|s| s.split_whitespace().take(16).map(str::to_string).collect())
                .unwrap_or_default(),
            charge: num("battery.charge").map(|c| c.min(100.0)),
            runtime_s: num("battery.runtime").map(|r| r.min(u32::MAX as f64) as u64),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The graded reading; see the module comment for the rules.
    pub fn reading(&self) -> DeviceReading {
        let low = self.has("LB") || self.has("FSD");
        let (ok, level, what) = if low {
            (false, Some(Grade::P2), "low battery")
        } else if self.has("OB") {
            (false, Some(Grade::P3), "on battery")
        } else if self.has("OFF") {
            (false, Some(Grade::P3), "output off")
        } else if self.has("OL") {
            (true, None, "on line")
        } else if self.flags.is_empty() {
            (false, Some(Grade::P3), "no ups.status")
        } else {
            (false, Some(Grade::P3), "status unknown")
        };
        let mut consumables = Vec::new();
        let mut level = level;
        let mut parts = vec![what.to_string()];
        if let Some(c) = self.charge {
            parts.push(format!("charge {c:.0}%"));
        }
        if let Some(r) = self.runtime_s {
            parts.push(format!("runtime {} min", r / 60));
        }
        if self.has("RB") {
            parts.push("replace battery".into());
            level = level.or(Some(Grade::P3));
            consumables.push(Consumable {
                kind: "battery".into(),
                name: "UPS battery".into(),
                state: SupplyState::Low,
                level: self.charge.map(|c| c as u8),
            });
        }
        let mut detail = parts.join(", ");
        if low {
            detail.push_str("; power off recommended");
        }
        DeviceReading {
            ok,
            level,
            detail,
            details: json!({
                "status": self.flags.join(" "),
                "charge": self.charge,
                "runtime_s": self.runtime_s,
                "power_off_recommended": low,
            }),
            consumables,
            event_code: (!ok).then_some("probe.failed"),
            power_off_recommended: low,
        }
    }
}

/// Asks `upsd` about the UPS at `ups` (`name@host[:port]`); never fails: a UPS that cannot be
/// asked is a P3 reading (the kiosk still runs; only its protection is unknown).
pub async fn probe_nut(ups: &str, timeout: Duration) -> DeviceReading {
    let addr = match UpsAddr::parse(ups) {
        Ok(a) => a,
        Err(e) => return DeviceReading::unreachable(Grade::P3, e.to_string()),
    };
    match tokio::time::timeout(timeout, list_vars(&addr)).await {
        Ok(Ok(vars)) => UpsStatus::from_vars(&vars).reading(),
        Ok(Err(e)) => DeviceReading::unreachable(Grade::P3, format!("ups: {e}")),
        Err(_) => DeviceReading::unreachable(
            Grade::P3,
            format!("ups: no answer within {} ms", timeout.as_millis()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = UpsAddr::parse("kiosk@127.0.0.1").unwrap();
        assert_eq!(
            (a.name.as_str(), a.host.as_str(), a.port),
            ("kiosk", "127.0.0.1", 3493)
        );
        let a = UpsAddr::parse("ups1@[::1]:4000").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("[::1]", 4000));
        for bad in [
            "kiosk", "@h", "a b@h", "a\n@h", "k@", "k@h:0", "k@h:x", "k@h/x", "k@[::1",
        ] {
            assert!(
                matches!(UpsAddr::parse(bad), Err(NutError::BadAddr { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn var_lines() {
        assert_eq!(
            parse_var_line(r#"VAR ups ups.status "OB LB""#, "ups").unwrap(),
            ("ups.status".into(), "OB LB".into())
        );
        assert_eq!(
            parse_var_line(r#"VAR ups device.model "a \"b\" \\c""#, "ups")
                .unwrap()
                .1,
            r#"a "b" \c"#
        );
        for bad in [
            r#"VAR other x "1""#,
            r#"VAR ups x 1"#,
            r#"VAR ups x "1"#,
            r#"VAR ups x "1\"#,
            "VAR ups",
            "VAR ups  \"1\"",
        ] {
            assert!(
                matches!(parse_var_line(bad, "ups"), Err(NutError::Protocol(_))),
                "{bad}"
            );
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn status_grades() {
        let r = UpsStatus::from_vars(&vars(&[
            ("ups.status", "OL CHRG"),
            ("battery.charge", "100"),
            ("battery.runtime", "1800"),
        ]))
        .reading();
        assert_eq!(
            (r.ok, r.level, r.detail.as_str()),
            (true, None, "on line, charge 100%, runtime 30 min")
        );
        let r = UpsStatus::from_vars(&vars(&[
            ("ups.status", "OB DISCHRG"),
            ("battery.charge", "80"),
        ]))
        .reading();
        assert_eq!(
            (r.ok, r.level, r.power_off_recommended),
            (false, Some(Grade::P3), false)
        );
        let r = UpsStatus::from_vars(&vars(&[("ups.status", "OB LB"), ("battery.charge", "9.5")]))
            .reading();
        assert_eq!(
            (r.ok, r.level, r.power_off_recommended),
            (false, Some(Grade::P2), true)
        );
        assert_eq!(r.details["power_off_recommended"], true);
        let r = UpsStatus::from_vars(&vars(&[("ups.status", "OL RB")])).reading();
        assert_eq!((r.ok, r.level), (true, Some(Grade::P3)));
        assert_eq!(r.consumables[0].kind, "battery");
        let r = UpsStatus::from_vars(&vars(&[("battery.charge", "NaN")])).reading();
        assert_eq!((r.ok, r.level), (false, Some(Grade::P3)));
        assert_eq!(r.details["charge"], serde_json::Value::Null);
    }

    /// A fake upsd that answers with `reply` whatever is asked.
    async fn fake_upsd(reply: Vec<u8>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&reply).await;
        });
        port
    }

    #[tokio::test]
    async fn hostile_servers_are_errors() {
        let t = Duration::from_secs(30);
        let port = fake_upsd(b"ERR UNKNOWN-UPS\n".to_vec()).await;
        let r = probe_nut(&format!("kiosk@127.0.0.1:{port}"), t).await;
        assert!(!r.ok && r.detail.contains("UNKNOWN-UPS"), "{r:?}");
        let port = fake_upsd(vec![b'x'; 10_000]).await;
        let r = probe_nut(&format!("kiosk@127.0.0.1:{port}"), t).await;
        assert!(
            r.detail.contains("unexpected answer") || r.detail.contains("line too long"),
            "{r:?}"
        );
        let port = fake_upsd(b"BEGIN LIST VAR kiosk\nVAR kiosk ups.status \"OL\"\n".to_vec()).await;
        let r = probe_nut(&format!("kiosk@127.0.0.1:{port}"), t).await;
        assert!(r.detail.contains("closed"), "{r:?}");
        let mut many = b"BEGIN LIST VAR kiosk\n".to_vec();
        for i in 0..2000 {
            many.extend_from_slice(format!("VAR kiosk v{i} \"1\"\n").as_bytes());
        }
        let port = fake_upsd(many).await;
        let r = probe_nut(&format!("kiosk@127.0.0.1:{port}"), t).await;
        assert!(r.detail.contains("too many"), "{r:?}");
        let r = probe_nut("kiosk", t).await;
        assert_eq!((r.ok, r.level), (false, Some(Grade::P3)));
    }
}
