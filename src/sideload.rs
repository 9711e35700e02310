//! The side-loading bundle (a USB stick for an air-gapped hall or a broken uplink): how its
//! files are named and in which order they are applied. `kiosk-admin bundle` writes one,
//! `kioskctl apply DIR` reads one; the agent itself only ever sees single envelopes.
//!
//! A bundle is a directory of DSSE envelopes named after their kind — `trust.dsse`,
//! `policy.dsse`, `schedule.dsse`, `catalog.dsse`, `app-<name>.dsse` — plus the application
//! artifacts the app documents point at with `file://` URLs (under `artifacts/` by
//! convention). It is applied trust first (a rotated root must be in force before documents
//! signed by its new keys), then policy, schedule, catalog, and the apps by name.

use std::path::{Path, PathBuf};

/// Extension of an envelope file in a bundle.
pub const EXT: &str = "dsse";
/// Where `kiosk-admin bundle` puts artifacts inside a bundle.
pub const ARTIFACTS: &str = "artifacts";

/// One file of a bundle, in apply order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `None` when the file name follows no known kind (reported and skipped).
    pub kind: Option<String>,
    pub path: PathBuf,
}

/// The kind an envelope file name stands for: `catalog.dsse` → `catalog`, `app-kiosk-ui.dsse`
/// → `app/kiosk-ui`.
pub fn kind_of_file(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".dsse")?;
    match stem {
        "trust" | "policy" | "schedule" | "catalog" => Some(stem.to_string()),
        _ => stem
            .strip_prefix("app-")
            .filter(|n| crate::config::valid_id(n))
            .map(|n| format!("app/{n}")),
    }
}

/// The file name for `kind` in a bundle (the inverse of `kind_of_file`).
pub fn file_name(kind: &str) -> Option<String> {
    let name = match kind.strip_prefix("app/") {
        Some(n) if crate::config::valid_id(n) => format!("app-{n}"),
        Some(_) => return None,
        None if ["trust", "policy", "schedule", "catalog"].contains(&kind) => kind.to_string(),
        None => return None,
    };
    Some(format!("{name}.{EXT}"))
}

fn rank(kind: Option<&str>) -> u8 {
    match kind {
        Some("trust") => 0,
        Some("policy") => 1,
        Some("schedule") => 2,
        Some("catalog") => 3,
        Some(_) => 4,
        None => 5,
    }
}

/// Every `*.dsse` in `dir`, in apply order (files with unknown names last).
pub fn plan(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".dsse") || !e.file_type()?.is_file() {
            continue;
        }
        entries.push(Entry {
            kind: kind_of_file(&name),
            path: e.path(),
        });
    }
    entries.sort_by(|a, b| {
        (rank(a.kind.as_deref()), &a.kind, &a.path).cmp(&(
            rank(b.kind.as_deref()),
            &b.kind,
            &b.path,
        ))
    });
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_is_trust_first_apps_last() {
        for k in ["trust", "policy", "schedule", "catalog", "app/kiosk-ui"] {
            assert_eq!(kind_of_file(&file_name(k).unwrap()).as_deref(), Some(k));
        }
        assert_eq!(kind_of_file("app-../x.dsse"), None);
        assert_eq!(kind_of_file("firmware.dsse"), None);
        assert_eq!(file_name("app/Bad"), None);
        let d = tempfile::tempdir().unwrap();
        for n in [
            "app-b.dsse",
            "catalog.dsse",
            "notes.txt",
            "app-a.dsse",
            "policy.dsse",
            "odd.dsse",
            "trust.dsse",
            "schedule.dsse",
        ] {
            std::fs::write(d.path().join(n), "{}").unwrap();
        }
        let kinds: Vec<Option<String>> = plan(d.path())
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let want = ["trust", "policy", "schedule", "catalog", "app/a", "app/b"];
        let mut expected: Vec<Option<String>> = want.iter().map(|k| Some(k.to_string())).collect();
        expected.push(None);
        assert_eq!(kinds, expected);
    }
}
