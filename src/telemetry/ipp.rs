//! The `ipp` probe: asks a printer (CUPS or the printer itself) for its state with IPP
//! Get-Printer-Attributes (RFC 8011) and turns the answer into a graded `DeviceReading`.
//!
//! The kiosk's printer is a core business function and its paper and toner are the consumables
//! operations must replace before the kiosk stops, so the probe reports marker levels even when
//! everything works. It owns a compact IPP encoder/decoder and a minimal HTTP/1.1 POST over a
//! plain TCP stream; it never follows redirects, never speaks TLS (`ipps`) and never reads more
//! than `MAX_RESPONSE` bytes: a printer on the kiosk LAN is not trusted to be well formed.
//!
//! Interpretation (docs/security-baseline.md §3.2/§3.3):
//! - `media-empty`/`media-needed`, `toner-empty`/`marker-supply-empty` or a marker at 0 % →
//!   failing, P2, event `device.consumable` (a supplies round fixes it);
//! - `media-jam`, `door-open`/`cover-open`/`interlock-open`, `offline`, printer stopped
//!   (`printer-state` 5) or not accepting jobs → failing, P2, event `probe.failed`
//!   (a technician is needed);
//! - `media-low`, `toner-low`/`marker-supply-low`, a marker at or under its low level
//!   (`marker-low-levels`, else `DEFAULT_LOW_PERCENT`) → ok, P3, levels in `details`.
//!
//! Severity suffixes (`-report`, `-warning`, `-error`) are ignored for these keywords: the
//! condition exists whatever the printer thinks of it.

use std::time::Duration;

use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::grade::{Consumable, DeviceReading, Grade, SupplyState};

/// Largest HTTP response (headers and body) read from a printer.
pub const MAX_RESPONSE: usize = 256 * 1024;
/// Low threshold for a marker whose printer does not send `marker-low-levels`.
pub const DEFAULT_LOW_PERCENT: i32 = 15;
const MAX_HEADER: usize = 16 * 1024;

/// The attributes the probe asks for; anything else a printer volunteers is ignored.
pub const REQUESTED: &[&str] = &[
    "printer-state",
    "printer-state-reasons",
    "printer-state-message",
    "printer-is-accepting-jobs",
    "marker-names",
    "marker-types",
    "marker-levels",
    "marker-low-levels",
];

/// IPP tags (RFC 8010 §3.5).
pub mod tag {
    pub const OPERATION: u8 = 0x01;
    pub const JOB: u8 = 0x02;
    pub const END: u8 = 0x03;
    pub const PRINTER: u8 = 0x04;
    pub const UNSUPPORTED_GROUP: u8 = 0x05;
    pub const INTEGER: u8 = 0x21;
    pub const BOOLEAN: u8 = 0x22;
    pub const ENUM: u8 = 0x23;
    pub const TEXT: u8 = 0x41;
    pub const NAME: u8 = 0x42;
    pub const KEYWORD: u8 = 0x44;
    pub const URI: u8 = 0x45;
    pub const CHARSET: u8 = 0x47;
    pub const LANGUAGE: u8 = 0x48;
}

pub const OP_GET_PRINTER_ATTRIBUTES: u16 = 0x000B;

#[derive(Debug, thiserror::Error)]
pub enum IppError {
    #[error("printer url {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("printer answered HTTP {0}")]
    HttpStatus(u16),
    #[error("malformed HTTP response: {0}")]
    Http(&'static str),
    #[error("response larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("malformed IPP message at byte {offset}: {reason}")]
    Decode { offset: usize, reason: &'static str },
    #[error("printer refused the request: IPP status 0x{0:04x}")]
    Status(u16),
    #[error("no answer within {0} ms")]
    Timeout(u128),
}

/// One attribute value as it travels: the value tag and its raw bytes. Kept raw so the decoder
/// never has to understand a syntax (collections, resolutions, dates) the probe does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub tag: u8,
    pub data: Vec<u8>,
}

impl Value {
    pub fn keyword(s: &str) -> Self {
        Self::string(tag::KEYWORD, s)
    }
    pub fn string(tag: u8, s: &str) -> Self {
        Self {
            tag,
            data: s.as_bytes().to_vec(),
        }
    }
    pub fn integer(i: i32) -> Self {
        Self {
            tag: tag::INTEGER,
            data: i.to_be_bytes().to_vec(),
        }
    }
    pub fn enumeration(i: i32) -> Self {
        Self {
            tag: tag::ENUM,
            data: i.to_be_bytes().to_vec(),
        }
    }
    pub fn boolean(b: bool) -> Self {
        Self {
            tag: tag::BOOLEAN,
            data: vec![u8::from(b)],
        }
    }

    /// integer or enum.
    pub fn as_i32(&self) -> Option<i32> {
        if self.tag != tag::INTEGER && self.tag != tag::ENUM {
            return None;
        }
        let b: [u8; 4] = self.data.as_slice().try_into().ok()?;
        Some(i32::from_be_bytes(b))
    }
    pub fn as_bool(&self) -> Option<bool> {
        match (self.tag, self.data.as_slice()) {
            (tag::BOOLEAN, [b]) => Some(*b != 0),
            _ => None,
        }
    }
    /// Any character-string syntax (text, name, keyword, uri, …; 0x40–0x5F).
    pub fn as_str(&self) -> Option<String> {
        (0x40..=0x5F)
            .contains(&self.tag)
            .then(|| String::from_utf8_lossy(&self.data).into_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub tag: u8,
    pub attributes: Vec<Attribute>,
}

/// A whole IPP request or response. `code` is the operation id in a request and the status
/// code in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub version: (u8, u8),
    pub code: u16,
    pub request_id: u32,
    pub groups: Vec<Group>,
}

impl Message {
    /// The Get-Printer-Attributes request for `printer_uri`.
    pub fn get_printer_attributes(printer_uri: &str, request_id: u32) -> Self {
        let op = |name: &str, values: Vec<Value>| Attribute {
            name: name.into(),
            values,
        };
        Self {
            version: (2, 0),
            code: OP_GET_PRINTER_ATTRIBUTES,
            request_id,
            groups: vec![Group {
                tag: tag::OPERATION,
                attributes: vec![
                    op(
                        "attributes-charset",
                        vec![Value::string(tag::CHARSET, "utf-8")],
                    ),
                    op(
                        "attributes-natural-language",
                        vec![Value::string(tag::LANGUAGE, "en")],
                    ),
                    op("printer-uri", vec![Value::string(tag::URI, printer_uri)]),
                    op(
                        "requested-attributes",
                        REQUESTED.iter().map(|a| Value::keyword(a)).collect(),
                    ),
                ],
            }],
        }
    }

    /// Encodes the message. Names and values longer than 65535 bytes cannot be expressed in
    /// IPP; they are truncated rather than producing a corrupt length.
    pub fn encode(&self) -> Vec<u8> {
        fn put_str(out: &mut Vec<u8>, b: &[u8]) {
            let b = &b[..b.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        }
        let mut out = vec![self.version.0, self.version.1];
        out.extend_from_slice(&self.code.to_be_bytes());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        for g in &self.groups {
            out.push(g.tag);
            for a in &g.attributes {
                for (i, v) in a.values.iter().enumerate() {
                    out.push(v.tag);
                    put_str(&mut out, if i == 0 { a.name.as_bytes() } else { b"" });
                    put_str(&mut out, &v.data);
                }
            }
        }
        out.push(tag::END);
        out
    }

    /// Decodes a message. Every length is checked against what is left, so any byte string
    /// yields either a message or an error, never a panic.
    pub fn decode(buf: &[u8]) -> Result<Self, IppError> {
        let mut r = Reader { buf, pos: 0 };
        let version = (r.u8()?, r.u8()?);
        let code = r.u16()?;
        let request_id = r.u32()?;
        let mut groups: Vec<Group> = Vec::new();
        loop {
            let t = r.u8()?;
            if t == tag::END {
                break;
            }
            if t < 0x10 {
                groups.push(Group {
                    tag: t,
                    attributes: Vec::new(),
                });
                continue;
            }
            let at = r.pos - 1;
            let group = groups.last_mut().ok_or(IppError::Decode {
                offset: at,
                reason: "attribute before any group",
            })?;
            let name_len = r.u16()? as usize;
            let name = r.take(name_len)?;
            let value_len = r.u16()? as usize;
            let data = r.take(value_len)?.to_vec();
            let value = Value { tag: t, data };
            if name_len == 0 {
                let last = group.attributes.last_mut().ok_or(IppError::Decode {
                    offset: at,
                    reason: "additional value without an attribute",
                })?;
                last.values.push(value);
            } else {
                group.attributes.push(Attribute {
                    name: String::from_utf8_lossy(name).into_owned(),
                    values: vec![value],
                });
            }
        }
        Ok(Self {
            version,
            code,
            request_id,
            groups,
        })
    }

    /// The first attribute of that name in a printer-attributes group.
    pub fn printer_attr(&self, name: &str) -> Option<&Attribute> {
        self.groups
            .iter()
            .filter(|g| g.tag == tag::PRINTER)
            .flat_map(|g| &g.attributes)
            .find(|a| a.name == name)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IppError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(IppError::Decode {
                offset: self.pos,
                reason: "truncated",
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, IppError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, IppError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, IppError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// `printer-state` (RFC 8011 §5.4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrinterState {
    Idle,
    Processing,
    Stopped,
    Unknown,
}

impl PrinterState {
    fn from_enum(v: Option<i32>) -> Self {
        match v {
            Some(3) => Self::Idle,
            Some(4) => Self::Processing,
            Some(5) => Self::Stopped,
            _ => Self::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Processing => "printing",
            Self::Stopped => "stopped",
            Self::Unknown => "state unknown",
        }
    }
}

/// One marker (toner, ink, …) as the printer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub name: String,
    pub kind: String,
    /// 0–100 percent; `None` when the printer does not know (-1, -2) or says only "some
    /// remaining" (-3).
    pub level: Option<u8>,
    pub low: i32,
}

/// The parts of a Get-Printer-Attributes answer the probe interprets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterStatus {
    pub state: PrinterState,
    pub reasons: Vec<String>,
    pub message: Option<String>,
    pub accepting: Option<bool>,
    pub markers: Vec<Marker>,
}

/// Only so many markers and reasons are reported: a printer listing thousands is broken, and
/// the health report must stay small.
const MAX_LISTED: usize = 32;

impl PrinterStatus {
    pub fn from_message(m: &Message) -> Result<Self, IppError> {
        // 0x0000–0x00FF are the successful-ok* codes.
        if m.code > 0x00FF {
            return Err(IppError::Status(m.code));
        }
        let strings = |name: &str| -> Vec<String> {
            m.printer_attr(name)
                .map(|a| {
                    a.values
                        .iter()
                        .filter_map(Value::as_str)
                        .take(MAX_LISTED)
                        .map(|s| s.chars().take(128).collect())
                        .collect()
                })
                .unwrap_or_default()
        };
        let ints = |name: &str| -> Vec<Option<i32>> {
            m.printer_attr(name)
                .map(|a| {
                    a.values
                        .iter()
                        .take(MAX_LISTED)
                        .map(Value::as_i32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let state = PrinterState::from_enum(
            m.printer_attr("printer-state")
                .and_then(|a| a.values.first()?.as_i32()),
        );
        let reasons = strings("printer-state-reasons")
            .into_iter()
            .filter(|r| r != "none")
            .collect();
        let message = strings("printer-state-message")
            .into_iter()
            .next()
            .filter(|s| !s.is_empty());
        let accepting = m
            .printer_attr("printer-is-accepting-jobs")
            .and_then(|a| a.values.first()?.as_bool());
        let names = strings("marker-names");
        let types = strings("marker-types");
        let levels = ints("marker-levels");
        let lows = ints("marker-low-levels");
        let markers = levels
            .iter()
            .enumerate()
            .map(|(i, level)| Marker {
                name: names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("marker {}", i + 1)),
                kind: types.get(i).cloned().unwrap_or_else(|| "unknown".into()),
                level: level
                    .and_then(|l| u8::try_from(l).ok())
                    .filter(|l| *l <= 100),
                low: lows
                    .get(i)
                    .copied()
                    .flatten()
                    .filter(|l| (0..=100).contains(l))
                    .unwrap_or(DEFAULT_LOW_PERCENT),
            })
            .collect();
        Ok(Self {
            state,
            reasons,
            message,
            accepting,
            markers,
        })
    }

    /// The graded reading; see the module comment for the rules.
    pub fn reading(&self) -> DeviceReading {
        let mut failures: Vec<(String, bool)> = Vec::new(); // (text, is a consumable running out)
        let mut lows: Vec<String> = Vec::new();
        let mut consumables: Vec<Consumable> = Vec::new();
        let mut other_reasons: Vec<&str> = Vec::new();
        let supply = |kind: &str, name: &str, state, level| Consumable {
            kind: kind.into(),
            name: name.into(),
            state,
            level,
        };
        let push_failure = |failures: &mut Vec<(String, bool)>, text: &str, consumable: bool| {
            if !failures.iter().any(|(t, _)| t == text) {
                failures.push((text.to_string(), consumable));
            }
        };
        for r in &self.reasons {
            match base_reason(r) {
                "media-empty" | "media-needed" => {
                    push_failure(&mut failures, "out of paper", true);
                    if !consumables.iter().any(|c| c.kind == "paper") {
                        consumables.push(supply("paper", "paper", SupplyState::Empty, Some(0)));
                    }
                }
                "toner-empty" | "marker-supply-empty" => {
                    push_failure(&mut failures, "toner empty", true)
                }
                "media-jam" => push_failure(&mut failures, "paper jam", false),
                "door-open" | "cover-open" | "interlock-open" => {
                    push_failure(&mut failures, "door open", false)
                }
                "offline" => push_failure(&mut failures, "offline", false),
                "media-low" => {
                    if !lows.iter().any(|l| l == "paper low") {
                        lows.push("paper low".into());
                        consumables.push(supply("paper", "paper", SupplyState::Low, None));
                    }
                }
                "toner-low" | "marker-supply-low" => {
                    if !lows.iter().any(|l| l == "toner low") {
                        lows.push("toner low".into());
                    }
                }
                "paused" | "none" => {}
                _ => other_reasons.push(r),
            }
        }
        let mut marker_parts = Vec::new();
        for m in &self.markers {
            let Some(level) = m.level else { continue };
            // Waste containers fill up rather than run out; their levels are not supplies.
            let is_supply = !m.kind.starts_with("waste");
            let kind = supply_kind(&m.kind);
            if is_supply && level == 0 {
                push_failure(&mut failures, &format!("{} empty", m.name), true);
                consumables.push(supply(kind, &m.name, SupplyState::Empty, Some(0)));
            } else if is_supply && i32::from(level) <= m.low {
                marker_parts.push(format!("{} {level}% (low)", m.name));
                consumables.push(supply(kind, &m.name, SupplyState::Low, Some(level)));
            } else {
                marker_parts.push(format!("{} {level}%", m.name));
            }
        }
        // The marker line already says which toner is low; keep the bare reason only when no
        // marker explains it.
        if consumables
            .iter()
            .any(|c| c.kind == "toner" && c.state == SupplyState::Low)
        {
            lows.retain(|l| l != "toner low");
        } else if lows.iter().any(|l| l == "toner low") {
            consumables.push(supply("toner", "toner", SupplyState::Low, None));
        }
        if self.accepting == Some(false) {
            push_failure(&mut failures, "not accepting jobs", false);
        }
        // A printer stops because of its jam or empty tray; only an unexplained stop (paused,
        // an error it does not name) is a failure of its own, so an empty tray still reads as a
        // supplies job.
        if self.state == PrinterState::Stopped && failures.is_empty() {
            push_failure(&mut failures, "stopped", false);
        }
        consumables.sort_by_key(|c| match c.state {
            SupplyState::Empty => 0,
            SupplyState::Low => 1,
        });

        let ok = failures.is_empty();
        let level = if !ok {
            Some(Grade::P2)
        } else if !consumables.is_empty() || !lows.is_empty() {
            Some(Grade::P3)
        } else {
            None
        };
        let mut parts = vec![self.state.as_str().to_string()];
        // "stopped" is both the state word and, when nothing else explains it, the failure.
        parts.extend(
            failures
                .iter()
                .filter(|(t, _)| t != self.state.as_str())
                .map(|(t, _)| t.clone()),
        );
        parts.extend(lows);
        parts.extend(marker_parts);
        if !ok && let Some(msg) = &self.message {
            parts.push(msg.clone());
        }
        let detail = parts.join("; ");
        let event_code = (!ok).then(|| {
            if failures.iter().all(|(_, consumable)| *consumable) {
                "device.consumable"
            } else {
                "probe.failed"
            }
        });
        let markers: Vec<Json> = self
            .markers
            .iter()
            .map(|m| json!({"name": m.name, "type": m.kind, "level": m.level}))
            .collect();
        DeviceReading {
            ok,
            level,
            detail,
            details: json!({
                "state": self.state.as_str(),
                "reasons": self.reasons,
                "accepting": self.accepting,
                "markers": markers,
                "other_reasons": other_reasons,
            }),
            consumables,
            event_code,
            power_off_recommended: false,
        }
    }
}

/// `media-empty-error` → `media-empty`.
fn base_reason(r: &str) -> &str {
    ["-report", "-warning", "-error"]
        .iter()
        .find_map(|s| r.strip_suffix(s))
        .unwrap_or(r)
}

fn supply_kind(marker_type: &str) -> &str {
    if marker_type.starts_with("toner") {
        "toner"
    } else if marker_type.starts_with("ink") {
        "ink"
    } else {
        marker_type
    }
}

/// Where to POST: `ipp://host[:631]/path` or `http://host[:80]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IppUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// What goes into the `printer-uri` operation attribute (always `ipp://`).
    pub printer_uri: String,
}

impl IppUrl {
    pub fn parse(url: &str) -> Result<Self, IppError> {
        let bad = |reason| IppError::BadUrl {
            url: url.chars().take(200).collect(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or(bad("no scheme"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "ipp" => 631,
            "http" => 80,
            "ipps" | "https" => return Err(bad("TLS (ipps/https) is not supported")),
            _ => return Err(bad("scheme must be ipp or http")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the url are not supported"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("path contains spaces or control characters"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("text after IPv6 host")),
            };
            (format!("[{h}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        if port == 0 {
            return Err(bad("bad port"));
        }
        if host
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._:[]%".contains(&b)))
        {
            return Err(bad("bad host"));
        }
        let printer_uri = format!("ipp://{host}:{port}{path}");
        Ok(Self {
            host,
            port,
            path: path.to_string(),
            printer_uri,
        })
    }

    fn connect_addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Asks the printer at `url`; never fails: an unreachable or incoherent printer is a P2 reading
/// (docs/security-baseline.md §3.2: printer offline → P2).
pub async fn probe_ipp(url: &str, timeout: Duration) -> DeviceReading {
    match tokio::time::timeout(timeout, query(url)).await {
        Ok(Ok(status)) => status.reading(),
        Ok(Err(e)) => DeviceReading::unreachable(Grade::P2, format!("printer: {e}")),
        Err(_) => DeviceReading::unreachable(
            Grade::P2,
            format!("printer: {}", IppError::Timeout(timeout.as_millis())),
        ),
    }
}

/// Get-Printer-Attributes at `url`, interpreted. No timeout of its own: callers bound it.
pub async fn query(url: &str) -> Result<PrinterStatus, IppError> {
    let body = fetch(url).await?;
    PrinterStatus::from_message(&Message::decode(&body)?)
}

/// The raw IPP response body, for recording fixtures and for `query`.
pub async fn fetch(url: &str) -> Result<Vec<u8>, IppError> {
    let u = IppUrl::parse(url)?;
    let req = Message::get_printer_attributes(&u.printer_uri, 1).encode();
    post(&u, &req).await
}

async fn post(u: &IppUrl, body: &[u8]) -> Result<Vec<u8>, IppError> {
    let addr = u.connect_addr();
    let mut s = TcpStream::connect(&addr)
        .await
        .map_err(|source| IppError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let io = |source| IppError::Io {
        addr: addr.clone(),
        source,
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/ipp\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: kiosk-agent/{}\r\n\r\n",
        u.path,
        addr,
        body.len(),
        crate::VERSION
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(body) = parse_http(&buf)? {
            return Ok(body);
        }
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return parse_http_at_eof(&buf);
        }
        if buf.len() + n > MAX_RESPONSE {
            return Err(IppError::TooLarge);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How the body of a response is delimited.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Splits off a complete response: `Ok(None)` means more bytes are needed.
fn parse_http(buf: &[u8]) -> Result<Option<Vec<u8>>, IppError> {
    parse_http_inner(buf, false)
}

fn parse_http_at_eof(buf: &[u8]) -> Result<Vec<u8>, IppError> {
    parse_http_inner(buf, true)?.ok_or(IppError::Http("connection closed before the end"))
}

fn parse_http_inner(mut buf: &[u8], eof: bool) -> Result<Option<Vec<u8>>, IppError> {
    loop {
        let Some(end) = find(buf, b"\r\n\r\n") else {
            if buf.len() > MAX_HEADER {
                return Err(IppError::Http("headers too long"));
            }
            return Ok(None);
        };
        let head =
            std::str::from_utf8(&buf[..end]).map_err(|_| IppError::Http("headers are not text"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut sl = status_line.split(' ');
        if !sl.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
            return Err(IppError::Http("not an HTTP/1.x status line"));
        }
        let code: u16 = sl
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or(IppError::Http("bad status code"))?;
        let rest = &buf[end + 4..];
        if (100..200).contains(&code) {
            // 100 Continue and friends: the real answer follows.
            buf = rest;
            continue;
        }
        if code != 200 {
            return Err(IppError::HttpStatus(code));
        }
        let mut framing = Framing::Close;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                framing = Framing::Chunked;
            } else if k.eq_ignore_ascii_case("content-length")
                && !matches!(framing, Framing::Chunked)
            {
                let n: usize = v
                    .parse()
                    .map_err(|_| IppError::Http("bad content-length"))?;
                if n > MAX_RESPONSE {
                    return Err(IppError::TooLarge);
                }
                framing = Framing::Length(n);
            }
        }
        return match framing {
            Framing::Length(n) if rest.len() >= n => Ok(Some(rest[..n].to_vec())),
            Framing::Length(_) => Ok(None),
            Framing::Chunked => dechunk(rest),
            Framing::Close if eof => Ok(Some(rest.to_vec())),
            Framing::Close => Ok(None),
        };
    }
}

fn dechunk(mut buf: &[u8]) -> Result<Option<Vec<u8>>, IppError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(buf, b"\r\n") else {
            if buf.len() > 1024 {
                return Err(IppError::Http("chunk size line too long"));
            }
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&buf[..eol]).map_err(|_| IppError::Http("bad chunk size"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| IppError::Http("bad chunk size"))?;
        if size > MAX_RESPONSE || out.len() + size > MAX_RESPONSE {
            return Err(IppError::TooLarge);
        }
        let data = &buf[eol + 2..];
        if size == 0 {
            // Trailers are not used by printers; the last chunk ends the body.
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        buf = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A printer-attributes response, for tests and fixtures: what a printer would answer.
pub fn printer_response(attributes: Vec<Attribute>) -> Message {
    Message {
        version: (2, 0),
        code: 0,
        request_id: 1,
        groups: vec![
            Group {
                tag: tag::OPERATION,
                attributes: vec![
                    Attribute {
                        name: "attributes-charset".into(),
                        values: vec![Value::string(tag::CHARSET, "utf-8")],
                    },
                    Attribute {
                        name: "attributes-natural-language".into(),
                        values: vec![Value::string(tag::LANGUAGE, "en")],
                    },
                ],
            },
            Group {
                tag: tag::PRINTER,
                attributes,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, values: Vec<Value>) -> Attribute {
        Attribute {
            name: name.into(),
            values,
        }
    }

    #[test]
    fn request_round_trips_with_additional_values() {
        let m = Message::get_printer_attributes("ipp://127.0.0.1:631/printers/kiosk", 7);
        let bytes = m.encode();
        assert_eq!(&bytes[..8], &[2, 0, 0, 0x0B, 0, 0, 0, 7]);
        assert_eq!(*bytes.last().unwrap(), tag::END);
        let back = Message::decode(&bytes).unwrap();
        assert_eq!(back, m);
        let req = &back.groups[0].attributes[3];
        assert_eq!(req.name, "requested-attributes");
        assert_eq!(req.values.len(), REQUESTED.len());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let m = printer_response(vec![
            attr("printer-state", vec![Value::enumeration(3)]),
            attr(
                "marker-levels",
                vec![Value::integer(12), Value::integer(80)],
            ),
        ]);
        let bytes = m.encode();
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    Message::decode(&bytes[..n]),
                    Err(IppError::Decode {
                        reason: "truncated",
                        ..
                    })
                ),
                "prefix {n}"
            );
        }
        assert!(Message::decode(&bytes).is_ok());
        // Garbage of every shape decodes or fails, never panics.
        let mut x: u32 = 0x1234_5678;
        for len in 0..400 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = Message::decode(&junk);
        }
        // An additional value with no attribute before it.
        let bad = [2, 0, 0, 0, 0, 0, 0, 1, 4, 0x21, 0, 0, 0, 4, 0, 0, 0, 1, 3];
        assert!(matches!(
            Message::decode(&bad),
            Err(IppError::Decode { .. })
        ));
    }

    #[test]
    fn refusal_status_is_an_error() {
        let mut m = printer_response(vec![]);
        m.code = 0x0406;
        assert!(matches!(
            PrinterStatus::from_message(&m),
            Err(IppError::Status(0x0406))
        ));
    }

    fn status(attrs: Vec<Attribute>) -> DeviceReading {
        PrinterStatus::from_message(&printer_response(attrs))
            .unwrap()
            .reading()
    }

    #[test]
    fn idle_and_accepting_is_ok_without_grade() {
        let r = status(vec![
            attr("printer-state", vec![Value::enumeration(3)]),
            attr("printer-state-reasons", vec![Value::keyword("none")]),
            attr("printer-is-accepting-jobs", vec![Value::boolean(true)]),
            attr(
                "marker-names",
                vec![Value::string(tag::NAME, "Black Toner")],
            ),
            attr("marker-types", vec![Value::keyword("toner")]),
            attr("marker-levels", vec![Value::integer(80)]),
        ]);
        assert!(r.ok && r.level.is_none(), "{r:?}");
        assert_eq!(r.detail, "idle; Black Toner 80%");
        assert_eq!(r.details["markers"][0]["level"], 80);
    }

    #[test]
    fn suffixes_stopped_rejecting_and_door() {
        let r = status(vec![
            attr("printer-state", vec![Value::enumeration(5)]),
            attr("printer-state-reasons", vec![Value::keyword("paused")]),
        ]);
        assert_eq!(
            (r.ok, r.level, r.event_code),
            (false, Some(Grade::P2), Some("probe.failed"))
        );
        assert_eq!(r.detail, "stopped");
        let r = status(vec![
            attr("printer-state", vec![Value::enumeration(3)]),
            attr("printer-is-accepting-jobs", vec![Value::boolean(false)]),
        ]);
        assert!(!r.ok && r.detail.contains("not accepting jobs"), "{r:?}");
        let r = status(vec![
            attr("printer-state", vec![Value::enumeration(4)]),
            attr(
                "printer-state-reasons",
                vec![Value::keyword("cover-open-warning")],
            ),
        ]);
        assert_eq!((r.ok, r.detail.as_str()), (false, "printing; door open"));
        let r = status(vec![attr(
            "printer-state-reasons",
            vec![Value::keyword("toner-low-report")],
        )]);
        assert_eq!((r.ok, r.level), (true, Some(Grade::P3)));
        assert_eq!(r.consumables[0].kind, "toner");
    }

    #[test]
    fn url_forms() {
        let u = IppUrl::parse("ipp://printer.local/printers/kiosk").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("printer.local", 631, "/printers/kiosk")
        );
        let u = IppUrl::parse("http://[::1]:8631/ipp/print").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 8631));
        assert_eq!(u.printer_uri, "ipp://[::1]:8631/ipp/print");
        assert_eq!(IppUrl::parse("ipp://h").unwrap().path, "/");
        for bad in [
            "ipps://h/x",
            "h/x",
            "ipp://u:p@h/x",
            "ipp://h:0/",
            "ipp://h:99999/",
            "ipp:///x",
            "ipp://h/a b",
            "ipp://h/a\r\nX: y",
        ] {
            assert!(
                matches!(IppUrl::parse(bad), Err(IppError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn http_framing() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse_http(ok).unwrap().unwrap(), b"abc");
        assert!(
            parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
                .unwrap()
                .is_none()
        );
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked).unwrap().unwrap(), b"abcde");
        assert!(
            parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n"),
            Err(IppError::TooLarge)
        ));
        assert!(matches!(
            parse_http(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Err(IppError::HttpStatus(404))
        ));
        assert!(matches!(
            parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"),
            Err(IppError::TooLarge)
        ));
        assert!(matches!(
            parse_http(b"SSH-2.0-x\r\n\r\n"),
            Err(IppError::Http("not an HTTP/1.x status line"))
        ));
        assert_eq!(
            parse_http_at_eof(b"HTTP/1.0 200 OK\r\n\r\nxyz").unwrap(),
            b"xyz"
        );
        assert!(matches!(
            parse_http_at_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            Err(IppError::Http("connection closed before the end"))
        ));
    }

    #[tokio::test]
    async fn endless_printer_is_cut_off() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            let junk = vec![0x41u8; 64 * 1024];
            while s.write_all(&junk).await.is_ok() {}
        });
        let r = probe_ipp(
            &format!("ipp://127.0.0.1:{port}/printers/x"),
            Duration::from_secs(30),
        )
        .await;
        assert!(!r.ok && r.detail.contains("larger than"), "{r:?}");
        assert_eq!(r.level, Some(Grade::P2));
    }
}
