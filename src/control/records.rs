//! The two security records of the control layer: the anti-rollback floor (the highest version
//! accepted per kind and target) and the command ids already executed (at-most-once).
//!
//! They fail closed. Each is written twice, to two independently written files, so a torn
//! write, a bad sector or an edit of one copy is repaired from the other. The floor is also
//! raised from every other local source that proves a version was accepted (the documents
//! store, the last reports), so deleting both copies does not lower it. When every copy of a
//! record is unreadable the agent keeps running but marks the records *lost* (persisted, with
//! the time): from then on a document for which no source proves a version, and any command,
//! is accepted only if it was signed after that time, until an operator clears the mark with
//! the signed `security_reset` command. A replay of anything signed before the loss is refused.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state::{StateError, StateStore};

pub const VERSIONS: &str = "control/versions.json";
pub const VERSIONS_COPY: &str = "control/versions.copy.json";
pub const SEEN: &str = "control/commands-seen.json";
pub const SEEN_COPY: &str = "control/commands-seen.copy.json";
pub const LOST: &str = "control/records-lost.json";
pub const LOST_COPY: &str = "control/records-lost.copy.json";

/// Why and since when the records are marked lost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lost {
    /// Unix time the loss was found: anything signed before it may be a replay.
    pub since: i64,
    /// Which records were unreadable, with the reason, for the technician.
    pub what: Vec<String>,
}

/// What loading found, for the events the control layer raises.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Copies that were unreadable but repaired from the other copy.
    pub repaired: Vec<String>,
    /// Records of which every copy was unreadable (now marked lost).
    pub newly_lost: Vec<String>,
}

#[derive(Debug)]
pub struct Records {
    /// `{kind}|{target}` → highest version accepted.
    pub versions: BTreeMap<String, u64>,
    /// Command id → Unix time it expires (kept until then).
    pub seen: BTreeMap<String, i64>,
    pub lost: Option<Lost>,
}

enum Slot<T> {
    Missing,
    Good(T),
    Bad(String),
}

fn read<T: DeserializeOwned>(store: &StateStore, rel: &str) -> Slot<T> {
    match store.load::<T>(rel) {
        Ok(None) => Slot::Missing,
        Ok(Some(v)) => Slot::Good(v),
        Err(e) => Slot::Bad(e.to_string()),
    }
}

/// Reads both copies of a map record and merges what is readable: the larger value per key
/// wins (a higher floor, a later expiry), which can only make the agent stricter.
/// `Err` lists the reasons when no copy is readable but at least one exists.
fn read_merged<V: DeserializeOwned + Ord + Copy>(
    store: &StateStore,
    primary: &str,
    copy: &str,
    report: &mut LoadReport,
) -> Result<BTreeMap<String, V>, String> {
    let copies = [
        (primary, read::<BTreeMap<String, V>>(store, primary)),
        (copy, read::<BTreeMap<String, V>>(store, copy)),
    ];
    let mut merged: BTreeMap<String, V> = BTreeMap::new();
    let mut good = 0;
    let mut bad = Vec::new();
    for (name, c) in copies {
        match c {
            Slot::Missing => {}
            Slot::Good(m) => {
                good += 1;
                for (k, v) in m {
                    let e = merged.entry(k).or_insert(v);
                    if v > *e {
                        *e = v;
                    }
                }
            }
            Slot::Bad(why) => bad.push(format!("{name}: {why}")),
        }
    }
    if good == 0 && !bad.is_empty() {
        return Err(bad.join("; "));
    }
    report.repaired.extend(bad);
    Ok(merged)
}

impl Records {
    /// Loads both records. `proven` holds the versions other local sources prove were accepted;
    /// the floor never ends up below them. `now` is when a loss found here is dated.
    pub fn load(
        store: &StateStore,
        proven: &BTreeMap<String, u64>,
        now: i64,
    ) -> (Self, LoadReport) {
        let mut report = LoadReport::default();
        let mut lost_what = Vec::new();
        let mut versions = match read_merged::<u64>(store, VERSIONS, VERSIONS_COPY, &mut report) {
            Ok(v) => v,
            Err(why) => {
                lost_what.push(format!("anti-rollback versions ({why})"));
                BTreeMap::new()
            }
        };
        let seen = match read_merged::<i64>(store, SEEN, SEEN_COPY, &mut report) {
            Ok(v) => v,
            Err(why) => {
                lost_what.push(format!("executed command ids ({why})"));
                BTreeMap::new()
            }
        };
        for (k, v) in proven {
            let e = versions.entry(k.clone()).or_insert(*v);
            if *v > *e {
                *e = *v;
            }
        }
        // A mark that cannot be read is renewed from now: later is stricter.
        let mut mark_damaged = false;
        let mut lost = match (read::<Lost>(store, LOST), read::<Lost>(store, LOST_COPY)) {
            (Slot::Good(a), Slot::Good(b)) => Some(if a.since >= b.since { a } else { b }),
            (Slot::Good(a), other) | (other, Slot::Good(a)) => {
                mark_damaged = !matches!(other, Slot::Missing);
                Some(a)
            }
            (Slot::Missing, Slot::Missing) => None,
            _ => {
                mark_damaged = true;
                Some(Lost {
                    since: now,
                    what: vec!["the loss mark itself was unreadable".into()],
                })
            }
        };
        report.newly_lost = lost_what.clone();
        if !lost_what.is_empty() {
            lost = Some(match lost {
                Some(mut l) => {
                    l.since = l.since.max(now);
                    l.what.extend(lost_what);
                    l
                }
                None => Lost {
                    since: now,
                    what: lost_what,
                },
            });
        }
        let r = Self {
            versions,
            seen,
            lost,
        };
        // Write back both copies so a repaired or newly marked state survives the next start.
        if mark_damaged || !report.repaired.is_empty() || !report.newly_lost.is_empty() {
            for e in [
                r.save_versions(store),
                r.save_seen(store),
                r.save_lost(store),
            ] {
                if let Err(e) = e {
                    tracing::error!(error = %e, "cannot rewrite security records");
                }
            }
        }
        (r, report)
    }

    fn save_both<T: Serialize>(
        store: &StateStore,
        a: &str,
        b: &str,
        v: &T,
    ) -> Result<(), StateError> {
        // Written one after the other: a crash between them leaves one whole copy of each
        // version, and loading merges them.
        store.save(a, v)?;
        store.save(b, v)
    }

    pub fn save_versions(&self, store: &StateStore) -> Result<(), StateError> {
        Self::save_both(store, VERSIONS, VERSIONS_COPY, &self.versions)
    }

    pub fn save_seen(&self, store: &StateStore) -> Result<(), StateError> {
        Self::save_both(store, SEEN, SEEN_COPY, &self.seen)
    }

    fn save_lost(&self, store: &StateStore) -> Result<(), StateError> {
        match &self.lost {
            Some(l) => Self::save_both(store, LOST, LOST_COPY, l),
            None => {
                for rel in [LOST, LOST_COPY] {
                    match std::fs::remove_file(store.path(rel)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(StateError::Write {
                                path: store.path(rel),
                                source,
                            });
                        }
                    }
                }
                if let Some(dir) = store.path(LOST).parent() {
                    let _ = crate::state::sync_dir(dir);
                }
                Ok(())
            }
        }
    }

    /// While the records are marked lost: the time before which a document with no proven
    /// version, or a command, may be a replay. `None` when the records are whole.
    pub fn replay_horizon(&self, key: Option<&str>) -> Option<i64> {
        let lost = self.lost.as_ref()?;
        match key {
            Some(k) if self.versions.contains_key(k) => None,
            _ => Some(lost.since),
        }
    }

    /// The operator's signed reset: the records as they are now become the trusted state.
    pub fn reset(&mut self, store: &StateStore) -> Result<Option<Lost>, StateError> {
        let was = self.lost.take();
        self.save_versions(store)?;
        self.save_seen(store)?;
        if let Err(e) = self.save_lost(store) {
            self.lost = was;
            return Err(e);
        }
        Ok(was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, StateStore) {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path().join("state")).unwrap();
        (d, s)
    }

    fn floor(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn fresh_state_is_empty_and_not_lost() {
        let (_d, s) = store();
        let (r, rep) = Records::load(&s, &BTreeMap::new(), 100);
        assert!(r.versions.is_empty() && r.seen.is_empty());
        assert_eq!(r.lost, None);
        assert!(rep.repaired.is_empty() && rep.newly_lost.is_empty());
    }

    #[test]
    fn one_garbled_copy_is_repaired_from_the_other() {
        let (_d, s) = store();
        let mut r = Records::load(&s, &BTreeMap::new(), 100).0;
        r.versions.insert("catalog|all".into(), 5);
        r.save_versions(&s).unwrap();
        std::fs::write(s.path(VERSIONS), b"{\"catalog|all\": 5").unwrap();
        let (r, rep) = Records::load(&s, &BTreeMap::new(), 200);
        assert_eq!(r.versions, floor(&[("catalog|all", 5)]));
        assert_eq!(r.lost, None);
        assert_eq!(rep.repaired.len(), 1, "{:?}", rep.repaired);
        assert!(rep.repaired[0].starts_with(VERSIONS), "{:?}", rep.repaired);
        // Written back: the primary parses again.
        assert_eq!(
            s.load::<BTreeMap<String, u64>>(VERSIONS).unwrap(),
            Some(floor(&[("catalog|all", 5)]))
        );
    }

    #[test]
    fn copies_merge_to_the_higher_floor() {
        let (_d, s) = store();
        s.save(VERSIONS, &floor(&[("catalog|all", 3), ("policy|all", 9)]))
            .unwrap();
        s.save(VERSIONS_COPY, &floor(&[("catalog|all", 5)]))
            .unwrap();
        let (r, _) = Records::load(&s, &BTreeMap::new(), 100);
        assert_eq!(r.versions, floor(&[("catalog|all", 5), ("policy|all", 9)]));
    }

    #[test]
    fn every_copy_garbled_marks_lost_keeps_proven_floor_and_persists_the_mark() {
        let (_d, s) = store();
        for rel in [VERSIONS, VERSIONS_COPY, SEEN, SEEN_COPY] {
            std::fs::create_dir_all(s.path("control")).unwrap();
            std::fs::write(s.path(rel), b"\x00garbage").unwrap();
        }
        let proven = floor(&[("catalog|all", 5)]);
        let (r, rep) = Records::load(&s, &proven, 1_000);
        assert_eq!(r.versions, proven);
        assert_eq!(rep.newly_lost.len(), 2, "{:?}", rep.newly_lost);
        let lost = r.lost.clone().unwrap();
        assert_eq!(lost.since, 1_000);
        // A proven key keeps the ordinary rules; an unproven one and commands get a horizon.
        assert_eq!(r.replay_horizon(Some("catalog|all")), None);
        assert_eq!(r.replay_horizon(Some("policy|all")), Some(1_000));
        assert_eq!(r.replay_horizon(None), Some(1_000));
        // The next start finds the records whole again but the mark still set, and dated as before.
        let (r2, rep2) = Records::load(&s, &BTreeMap::new(), 5_000);
        assert!(rep2.newly_lost.is_empty());
        assert_eq!(r2.lost.as_ref().map(|l| l.since), Some(1_000));
        assert_eq!(r2.versions, proven);
    }

    #[test]
    fn reset_clears_the_mark_for_good() {
        let (_d, s) = store();
        std::fs::create_dir_all(s.path("control")).unwrap();
        std::fs::write(s.path(SEEN), b"[").unwrap();
        let (mut r, _) = Records::load(&s, &BTreeMap::new(), 10);
        assert!(r.lost.is_some());
        let was = r.reset(&s).unwrap();
        assert_eq!(was.map(|l| l.since), Some(10));
        assert!(!s.path(LOST).exists() && !s.path(LOST_COPY).exists());
        let (r2, _) = Records::load(&s, &BTreeMap::new(), 20);
        assert_eq!(r2.lost, None);
        assert_eq!(r2.replay_horizon(None), None);
    }

    #[test]
    fn an_unreadable_mark_is_renewed_not_dropped() {
        let (_d, s) = store();
        std::fs::create_dir_all(s.path("control")).unwrap();
        std::fs::write(s.path(LOST), b"{").unwrap();
        let (r, _) = Records::load(&s, &BTreeMap::new(), 77);
        assert_eq!(r.lost.map(|l| l.since), Some(77));
    }
}
