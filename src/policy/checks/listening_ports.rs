//! `listening_ports`: every listening socket in `/proc/net/{tcp,tcp6,udp,udp6}` is allowed.
//!
//! `allow` lists `{proto, port}` (with `loopback_only` for services such as CUPS that may listen
//! on 127.0.0.1/::1 only); `deny` names ports that must never listen (the high-risk set); with
//! `allow_loopback` any listener on a loopback address is accepted. TCP listens in state `0A`; an
//! unconnected UDP socket (state `07`, no remote port) counts as listening. Never remediated: an
//! unknown listener is reported, never killed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};
use crate::policy::text;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    proto: String,
    port: u16,
    #[serde(default)]
    loopback_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    allow: Option<Vec<Allow>>,
    #[serde(default)]
    deny: Option<Vec<u16>>,
    #[serde(default)]
    allow_loopback: bool,
}

#[derive(Debug)]
pub struct ListeningPorts {
    allow: Option<Vec<Allow>>,
    deny: Vec<u16>,
    allow_loopback: bool,
}

/// One listening socket as read from `/proc/net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub proto: &'static str,
    pub addr: IpAddr,
    pub port: u16,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{} {a}:{}", self.proto, self.port),
            IpAddr::V6(a) => write!(f, "{} [{a}]:{}", self.proto, self.port),
        }
    }
}

fn parse_addr(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    // The kernel prints each 32-bit word of the address as a native-endian integer.
    let words = |hex: &str| -> Option<Vec<[u8; 4]>> {
        (0..hex.len() / 8)
            .map(|i| {
                u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                    .ok()
                    .map(u32::to_ne_bytes)
            })
            .collect()
    };
    let addr = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(*words(a)?.first()?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, w) in words(a)?.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((addr, port))
}

/// Reads the listening sockets; files that do not exist (no IPv6) are skipped.
pub fn listeners(host: &crate::host::HostPaths) -> std::io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (file, proto, tcp) in [
        ("/proc/net/tcp", "tcp", true),
        ("/proc/net/tcp6", "tcp", true),
        ("/proc/net/udp", "udp", false),
        ("/proc/net/udp6", "udp", false),
    ] {
        let t = match text::read_host(host, file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let Some((addr, port)) = parse_addr(f[1]) else {
                continue;
            };
            let remote_port = parse_addr(f[2]).map(|(_, p)| p);
            let listening = if tcp {
                f[3] == "0A"
            } else {
                f[3] == "07" && remote_port == Some(0)
            };
            let l = Listener { proto, addr, port };
            if listening && !out.contains(&l) {
                out.push(l);
            }
        }
    }
    Ok(out)
}

fn is_loopback(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback() || v.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

impl ListeningPorts {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        if s.allow.is_none() && s.deny.is_none() {
            return Err("give allow, deny or both".into());
        }
        for a in s.allow.iter().flatten() {
            if a.proto != "tcp" && a.proto != "udp" {
                return Err(format!("allow proto must be tcp or udp, got {:?}", a.proto));
            }
        }
        Ok(Self {
            allow: s.allow,
            deny: s.deny.unwrap_or_default(),
            allow_loopback: s.allow_loopback,
        })
    }

    fn allowed(&self, l: &Listener) -> bool {
        if self.deny.contains(&l.port) {
            return false;
        }
        let lo = is_loopback(&l.addr);
        if self.allow_loopback && lo {
            return true;
        }
        match &self.allow {
            None => true,
            Some(list) => list
                .iter()
                .any(|a| a.proto == l.proto && a.port == l.port && (!a.loopback_only || lo)),
        }
    }
}

impl Check for ListeningPorts {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let all = match listeners(ctx.host) {
            Ok(l) => l,
            Err(e) => return Outcome::error(format!("cannot read /proc/net: {e}")),
        };
        let bad: Vec<String> = all
            .iter()
            .filter(|l| !self.allowed(l))
            .map(|l| l.to_string())
            .collect();
        if bad.is_empty() {
            let list: Vec<String> = all.iter().map(|l| l.to_string()).collect();
            Outcome::pass(
                json!({"listening": list}),
                format!("{} listener(s), all allowed", all.len()),
            )
        } else {
            Outcome::fail(
                json!({"not_allowed": bad}),
                format!("listening and not allowed: {}", bad.join(", ")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
    const TCP6: &str = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:170C 00000000000000000000000000000000:0000 0A 0\n   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 0\n";
    const UDP: &str =
        "  sl  local_address rem_address   st\n  1: 00000000:0044 00000000:0000 07 0\n";

    #[test]
    fn parses_proc_net_and_applies_allow_and_deny() {
        let fx = Fx::new(&[
            ("/proc/net/tcp", TCP),
            ("/proc/net/tcp6", TCP6),
            ("/proc/net/udp", UDP),
            ("/proc/net/udp6", "garbage\nline x y z\n"),
        ]);
        let all = listeners(&fx.host).unwrap();
        let names: Vec<String> = all.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            names,
            [
                "tcp 0.0.0.0:22",
                "tcp 127.0.0.1:631",
                "tcp [::]:5900",
                "tcp [::1]:631",
                "udp 0.0.0.0:68"
            ]
        );
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = ListeningPorts::build(json!({"allow":[{"proto":"tcp","port":22},{"proto":"tcp","port":631,"loopback_only":true},{"proto":"udp","port":68}]})).unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_eq!(o.observed, json!({"not_allowed":["tcp [::]:5900"]}));
        let deny = ListeningPorts::build(json!({"deny":[23, 5900, 3389]})).unwrap();
        assert_eq!(deny.evaluate(&ctx).status, CheckStatus::Fail);
        let lo = ListeningPorts::build(json!({"allow":[{"proto":"tcp","port":22},{"proto":"tcp","port":5900},{"proto":"udp","port":68}],"allow_loopback":true})).unwrap();
        assert_eq!(lo.evaluate(&ctx).status, CheckStatus::Pass);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(
            matches!(ListeningPorts::build(json!({})), Err(ref e) if e.contains("give allow, deny or both"))
        );
        assert!(
            matches!(ListeningPorts::build(json!({"allow":[{"proto":"sctp","port":1}]})), Err(ref e) if e.contains("proto must be tcp or udp"))
        );
        assert!(
            matches!(ListeningPorts::build(json!({"allow":[{"proto":"tcp","port":70000}]})), Err(ref e) if e.contains("expected u16"))
        );
    }
}
