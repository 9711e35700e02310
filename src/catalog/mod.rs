//! The service-item catalog (事项): which services this terminal offers, which are suspended
//! or taken offline, and the announcements to show.
//!
//! Owns `{state_dir}/catalog/current.json`, written with the exact signed payload bytes (the
//! kiosk UI reads that file), atomically, so neither a crash nor a power cut leaves it half
//! written. It never decides whether a document may be applied: it gets verified bytes.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::{StateError, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog document is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Write(#[from] StateError),
}

#[derive(Debug, Deserialize)]
struct Doc {
    items: Vec<Item>,
    #[serde(default)]
    announcements: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Item {
    id: String,
    name: String,
    status: String,
}

pub const STATUSES: &[&str] = &["active", "suspended", "offline"];

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("catalog").join("current.json")
}

/// A catalog whose shape holds: the exact signed bytes (what the kiosk UI reads) and the
/// item counts for the report.
#[derive(Debug, Clone)]
pub struct Catalog {
    bytes: Vec<u8>,
    summary: Value,
}

impl Catalog {
    /// Checks the document's shape; the only way to build a `Catalog`.
    pub fn parse(payload: &[u8]) -> Result<Self, CatalogError> {
        Ok(Self {
            summary: validate(payload)?,
            bytes: payload.to_vec(),
        })
    }

    /// Item counts per status.
    pub fn summary(&self) -> &Value {
        &self.summary
    }

    /// Whether `{state_dir}/catalog/current.json` already holds exactly this document.
    pub fn is_current(&self, state_dir: &Path) -> bool {
        std::fs::read(path(state_dir)).is_ok_and(|b| b == self.bytes)
    }

    /// Writes the exact bytes, atomically.
    pub fn write(&self, state_dir: &Path) -> Result<(), CatalogError> {
        let p = path(state_dir);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        write_atomic(&p, &self.bytes, Some(0o644))?;
        Ok(())
    }
}

/// Checks the document's shape, then writes its exact bytes. Returns a summary for the report.
pub fn apply(state_dir: &Path, payload: &[u8]) -> Result<Value, CatalogError> {
    let c = Catalog::parse(payload)?;
    c.write(state_dir)?;
    Ok(c.summary)
}

/// Item counts per status, or why the document is unusable.
pub fn validate(payload: &[u8]) -> Result<Value, CatalogError> {
    let doc: Doc =
        serde_json::from_slice(payload).map_err(|e| CatalogError::Invalid(e.to_string()))?;
    let mut counts = json!({"active": 0, "suspended": 0, "offline": 0});
    let mut seen = std::collections::HashSet::new();
    for (i, it) in doc.items.iter().enumerate() {
        if it.id.is_empty() || it.name.is_empty() {
            return Err(CatalogError::Invalid(format!(
                "items[{i}]: id and name are required"
            )));
        }
        if !seen.insert(it.id.as_str()) {
            return Err(CatalogError::Invalid(format!(
                "items[{i}]: id {:?} appears twice",
                it.id
            )));
        }
        if !STATUSES.contains(&it.status.as_str()) {
            return Err(CatalogError::Invalid(format!(
                "items[{i}].status: {:?} must be active, suspended or offline",
                it.status
            )));
        }
        counts[it.status.as_str()] = json!(counts[it.status.as_str()].as_u64().unwrap_or(0) + 1);
    }
    Ok(
        json!({"items": doc.items.len(), "by_status": counts, "announcements": doc.announcements.len()}),
    )
}

/// The catalog in force, for `kioskctl catalog`.
pub fn current(state_dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A table of items for a technician: suspended and offline first, with their notices.
pub fn render(doc: &Value) -> String {
    let mut items: Vec<&Value> = doc["items"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let rank = |s: &str| match s {
        "offline" => 0,
        "suspended" => 1,
        _ => 2,
    };
    items.sort_by_key(|i| rank(i["status"].as_str().unwrap_or("")));
    let mut out = format!("Catalog version {}\n", doc["version"]);
    for i in items {
        out.push_str(&format!(
            "  {:<10} {:<24} {:<12} {}{}\n",
            i["status"].as_str().unwrap_or("-"),
            i["id"].as_str().unwrap_or("-"),
            i["department"].as_str().unwrap_or(""),
            i["name"].as_str().unwrap_or(""),
            i["notice"]
                .as_str()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default(),
        ));
    }
    for a in doc["announcements"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  announcement: {}\n",
            a.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| a.to_string())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_exact_bytes_and_refuses_bad_status() {
        let d = tempfile::tempdir().unwrap();
        let doc = br#"{"kind":"catalog","version":3,"items":[{"id":"id-renewal","name":"x","department":"y","status":"suspended","notice":"system upgrade"}]}"#;
        let s = apply(d.path(), doc).unwrap();
        assert_eq!(s["by_status"]["suspended"], 1);
        assert_eq!(std::fs::read(path(d.path())).unwrap(), doc);
        let bad = br#"{"items":[{"id":"a","name":"x","status":"closed"}]}"#;
        assert!(
            matches!(apply(d.path(), bad), Err(CatalogError::Invalid(ref m)) if m.contains("must be active, suspended or offline"))
        );
        assert_eq!(std::fs::read(path(d.path())).unwrap(), doc, "unchanged");
        assert!(render(&current(d.path()).unwrap()).contains("system upgrade"));
    }
}
