//! The `app` desired document (docs/protocol.md §4) as the update capability understands it.
//!
//! Parsing happens only after `trust` has verified the envelope; validation here guards the
//! file system and the command line, not authenticity: `name` and `release` become path
//! components and `restart_units` become `systemctl` arguments, so each is held to an
//! alphabet that cannot climb directories or smuggle options.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("app document is not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("app document field {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> DocError {
    DocError::Invalid {
        field,
        message: message.into(),
    }
}

/// An `app` document. Fields not named by the protocol are ignored, as §1 allows additions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDoc {
    pub kind: String,
    pub version: u64,
    pub target: String,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub name: String,
    pub release: String,
    pub artifact: Artifact,
    #[serde(default)]
    pub restart_units: Vec<String>,
    /// Absent means "restarting the units is enough": nothing to probe, nothing to roll back for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Staged rollout (PROTOCOL §8): which terminals may start when. Gated by the control
    /// layer before the document reaches the installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::fleet::Rollout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub format: ArtifactFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArtifactFormat {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "file")]
    File,
}

fn default_timeout_s() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthCheck {
    Exec {
        cmd: Vec<String>,
        #[serde(default = "default_timeout_s")]
        timeout_s: u64,
    },
    Tcp {
        addr: String,
        #[serde(default = "default_timeout_s")]
        timeout_s: u64,
    },
    Unit {
        unit: String,
        #[serde(default = "default_timeout_s")]
        timeout_s: u64,
    },
}

impl HealthCheck {
    pub fn timeout_s(&self) -> u64 {
        match self {
            HealthCheck::Exec { timeout_s, .. }
            | HealthCheck::Tcp { timeout_s, .. }
            | HealthCheck::Unit { timeout_s, .. } => *timeout_s,
        }
    }
}

/// Local wall-clock window `HH:MM`–`HH:MM` in which switching releases is allowed; an end
/// earlier than the start spans midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: String,
    pub end: String,
}

/// Longest health timeout accepted: a document asking for more is almost certainly a typo
/// (milliseconds for seconds) and would leave a kiosk in limbo for hours.
const MAX_HEALTH_TIMEOUT_S: u64 = 3600;

impl AppDoc {
    /// Parses and validates the decoded payload of a verified envelope.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocError> {
        let doc: AppDoc = serde_json::from_slice(bytes)?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), DocError> {
        if self.kind != "app" {
            return Err(invalid(
                "kind",
                format!("must be \"app\", got {:?}", self.kind),
            ));
        }
        if !crate::config::valid_id(&self.name) {
            return Err(invalid("name", "must match [a-z0-9][a-z0-9-]{0,63}"));
        }
        if let Some(r) = &self.rollout {
            r.validate().map_err(|m| invalid("rollout", m))?;
        }
        if !safe_component(&self.release) {
            return Err(invalid(
                "release",
                "must be 1-128 characters of A-Z a-z 0-9 . _ + - and not start with a dot",
            ));
        }
        let a = &self.artifact;
        match url_scheme(&a.url) {
            Some("https" | "http" | "file") => {}
            _ => {
                return Err(invalid(
                    "artifact.url",
                    "scheme must be https, http or file",
                ));
            }
        }
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("artifact.sha256", "must be 64 hexadecimal digits"));
        }
        if a.size == 0 {
            return Err(invalid("artifact.size", "must be greater than zero"));
        }
        for u in &self.restart_units {
            if !valid_unit(u) {
                return Err(invalid(
                    "restart_units",
                    format!("{u:?} is not a systemd unit name"),
                ));
            }
        }
        if let Some(h) = &self.health {
            if h.timeout_s() > MAX_HEALTH_TIMEOUT_S {
                return Err(invalid(
                    "health.timeout_s",
                    format!("must be at most {MAX_HEALTH_TIMEOUT_S}"),
                ));
            }
            match h {
                HealthCheck::Exec { cmd, .. } if cmd.is_empty() || cmd[0].is_empty() => {
                    return Err(invalid("health.cmd", "must name a program"));
                }
                HealthCheck::Tcp { addr, .. } if !addr.contains(':') => {
                    return Err(invalid("health.addr", "must be host:port"));
                }
                HealthCheck::Unit { unit, .. } if !valid_unit(unit) => {
                    return Err(invalid("health.unit", "is not a systemd unit name"));
                }
                _ => {}
            }
        }
        if let Some(w) = &self.window {
            if crate::config::parse_hhmm(&w.start).is_none() {
                return Err(invalid("window.start", "must be HH:MM"));
            }
            if crate::config::parse_hhmm(&w.end).is_none() {
                return Err(invalid("window.end", "must be HH:MM"));
            }
        }
        Ok(())
    }

    /// The file name a `file` artifact gets inside its release: the last segment of the URL
    /// path when that is a safe name, so the application finds it under the name it was built
    /// with; otherwise a fixed fallback.
    pub fn file_name(&self) -> String {
        let path = self
            .artifact
            .url
            .split(['?', '#'])
            .next()
            .unwrap_or_default();
        match path.rsplit('/').next() {
            Some(last) if safe_component(last) => last.to_string(),
            _ => "artifact".to_string(),
        }
    }
}

pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(s, _)| s)
}

/// A single path component that cannot name a parent, a hidden file or another directory.
pub fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// systemd unit names; a leading `-` is refused so a name can never become an option.
fn valid_unit(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('-')
        && s.contains('.')
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-' | b'\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "kind": "app", "version": 7, "target": "t/sz-ft-0001", "issued_at": "2026-01-01T00:00:00Z",
            "name": "kiosk-ui", "release": "2.4.0",
            "artifact": {"url": "https://cdn.example/ui-2.4.0.tar.gz", "sha256": "a".repeat(64), "size": 10, "format": "tar.gz"},
            "restart_units": ["kiosk-ui.service"],
            "health": {"type": "tcp", "addr": "127.0.0.1:8080"},
            "window": {"start": "02:00", "end": "05:00"},
            "extra": "ignored"
        })
    }

    fn parse(v: &serde_json::Value) -> Result<AppDoc, DocError> {
        AppDoc::parse(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn parses_full_document() {
        let d = parse(&base()).unwrap();
        assert_eq!(d.artifact.format, ArtifactFormat::TarGz);
        assert_eq!(d.health.as_ref().unwrap().timeout_s(), 60);
        assert_eq!(d.file_name(), "ui-2.4.0.tar.gz");
    }

    fn refused(path: &[&str], value: serde_json::Value) -> &'static str {
        let mut v = base();
        let mut cur = &mut v;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = value;
        match parse(&v) {
            Err(DocError::Invalid { field, .. }) => field,
            other => panic!("expected invalid for {path:?}, got {other:?}"),
        }
    }

    #[test]
    fn refuses_unsafe_fields() {
        assert_eq!(refused(&["name"], "../etc".into()), "name");
        assert_eq!(refused(&["name"], "Kiosk".into()), "name");
        assert_eq!(refused(&["release"], "..".into()), "release");
        assert_eq!(refused(&["release"], "a/b".into()), "release");
        assert_eq!(refused(&["release"], ".hidden".into()), "release");
        assert_eq!(
            refused(&["artifact", "url"], "ftp://x/y".into()),
            "artifact.url"
        );
        assert_eq!(
            refused(&["artifact", "sha256"], "abc".into()),
            "artifact.sha256"
        );
        assert_eq!(
            refused(&["artifact", "sha256"], "g".repeat(64).into()),
            "artifact.sha256"
        );
        assert_eq!(refused(&["artifact", "size"], 0.into()), "artifact.size");
        assert_eq!(
            refused(&["restart_units"], serde_json::json!(["--force.service"])),
            "restart_units"
        );
        assert_eq!(refused(&["window", "start"], "2am".into()), "window.start");
        assert_eq!(refused(&["kind"], "policy".into()), "kind");
    }

    #[test]
    fn unknown_format_is_a_parse_error() {
        let mut v = base();
        v["artifact"]["format"] = "zip".into();
        assert!(matches!(parse(&v), Err(DocError::Parse(_))));
    }
}
