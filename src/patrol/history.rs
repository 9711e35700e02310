//! The last 30 days of patrol reports on disk, for `kioskctl inspect --history` and for the
//! O&M log that GB/T 22239 8.1.10.6 asks for.
//!
//! One file per report, named after its instant and seq (`20260302T230000Z-7.json`) so pruning
//! and history need only directory listings; each written atomically. `meta.json` holds the last
//! seq, but the file names carry it too: a report written just before a crash (meta not yet
//! updated) or a lost meta file never makes `seq` go backwards while any report remains.

use std::fs;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::PatrolError;
use super::report::{PatrolInputs, PatrolReport, PatrolSummary, build};
use crate::state::write_atomic;

/// How long reports are kept.
pub const RETENTION_DAYS: u32 = 30;
const META: &str = "meta.json";
/// A report larger than this is not one the agent wrote.
const MAX_REPORT_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    last_seq: u64,
}

/// Single owner of `{state_dir}/patrol/`.
#[derive(Debug)]
pub struct PatrolStore {
    dir: PathBuf,
    last_seq: u64,
}

impl PatrolStore {
    /// Opens (and creates) the history directory, usually `{state_dir}/patrol`. A corrupt meta
    /// file is logged and the seq recovered from the report names, so one torn write never
    /// stops the daily patrol.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, PatrolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| PatrolError::Io {
            path: dir.clone(),
            source,
        })?;
        let meta_path = dir.join(META);
        let meta_seq = match fs::read(&meta_path) {
            Ok(b) => match serde_json::from_slice::<Meta>(&b) {
                Ok(m) => m.last_seq,
                Err(e) => {
                    tracing::warn!(path = %meta_path.display(), error = %e, "patrol meta unreadable; seq recovered from report names");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(PatrolError::Io {
                    path: meta_path,
                    source,
                });
            }
        };
        let files_seq = list(&dir)?.iter().map(|e| e.seq).max().unwrap_or(0);
        let store = Self {
            dir,
            last_seq: meta_seq.max(files_seq),
        };
        // Repair a lost or stale meta now, before pruning can delete the names that carry
        // the seq.
        if files_seq > meta_seq {
            store.save_meta()?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seq the next report will get.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Builds the report with the next seq, stores it and prunes reports older than
    /// `RETENTION_DAYS` before its `ts`.
    pub fn record(&mut self, inputs: PatrolInputs) -> Result<PatrolReport, PatrolError> {
        let now = inputs.ts;
        let seq = self.next_seq();
        let report = build(inputs, seq);
        let path = self.dir.join(file_name(now, seq));
        let bytes = serde_json::to_vec_pretty(&report).map_err(|source| PatrolError::Parse {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes, Some(0o640))?;
        self.last_seq = seq;
        self.save_meta()?;
        self.prune(now)?;
        Ok(report)
    }

    fn save_meta(&self) -> Result<(), PatrolError> {
        let path = self.dir.join(META);
        let meta = serde_json::to_vec(&Meta {
            last_seq: self.last_seq,
        })
        .map_err(|source| PatrolError::Parse {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &meta, Some(0o640))?;
        Ok(())
    }

    /// Removes reports older than `RETENTION_DAYS` before `now`; returns how many went.
    pub fn prune(&self, now: Timestamp) -> Result<usize, PatrolError> {
        let cutoff = days_before(now, RETENTION_DAYS);
        let mut removed = 0;
        for e in list(&self.dir)? {
            if e.ts < cutoff {
                match fs::remove_file(&e.path) {
                    Ok(()) => removed += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(PatrolError::Io {
                            path: e.path,
                            source,
                        });
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Summaries of the reports of the last `days` days before `now`, newest first. A report
    /// that cannot be read is logged and skipped: history is evidence, not a reason to fail.
    pub fn history(&self, now: Timestamp, days: u32) -> Result<Vec<PatrolSummary>, PatrolError> {
        let cutoff = days_before(now, days);
        let mut entries: Vec<Entry> = list(&self.dir)?
            .into_iter()
            .filter(|e| e.ts >= cutoff)
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse((e.ts, e.seq)));
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match read_report(&e.path) {
                Ok(r) => out.push(r.summary()),
                Err(err) => tracing::warn!(error = %err, "patrol report skipped"),
            }
        }
        Ok(out)
    }

    /// The most recent report, if any.
    pub fn latest(&self) -> Result<Option<PatrolReport>, PatrolError> {
        match list(&self.dir)?.into_iter().max_by_key(|e| (e.ts, e.seq)) {
            Some(e) => read_report(&e.path).map(Some),
            None => Ok(None),
        }
    }
}

fn days_before(now: Timestamp, days: u32) -> Timestamp {
    now.checked_sub(SignedDuration::from_hours(i64::from(days) * 24))
        .unwrap_or(Timestamp::MIN)
}

fn file_name(ts: Timestamp, seq: u64) -> String {
    format!("{}-{seq}.json", ts.strftime("%Y%m%dT%H%M%SZ"))
}

struct Entry {
    path: PathBuf,
    ts: Timestamp,
    seq: u64,
}

/// Report files in `dir`; anything else (meta, temp files of an interrupted write, strays) is
/// left alone.
fn list(dir: &Path) -> Result<Vec<Entry>, PatrolError> {
    let io = |source| PatrolError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((ts, seq)) = parse_name(name) {
            out.push(Entry {
                path: e.path(),
                ts,
                seq,
            });
        }
    }
    Ok(out)
}

fn parse_name(name: &str) -> Option<(Timestamp, u64)> {
    let stem = name.strip_suffix(".json")?;
    let (ts, seq) = stem.split_once('-')?;
    let ts = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", ts).ok()?;
    let ts = jiff::tz::TimeZone::UTC.to_timestamp(ts).ok()?;
    Some((ts, seq.parse().ok()?))
}

fn read_report(path: &Path) -> Result<PatrolReport, PatrolError> {
    let io = |source| PatrolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = fs::metadata(path).map_err(io)?.len();
    if len > MAX_REPORT_BYTES {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "report too large",
        )));
    }
    let bytes = fs::read(path).map_err(io)?;
    serde_json::from_slice(&bytes).map_err(|source| PatrolError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strays_are_ignored() {
        let ts: Timestamp = "2026-03-02T23:00:05Z".parse().unwrap();
        let n = file_name(ts, 42);
        assert_eq!(n, "20260302T230005Z-42.json");
        assert_eq!(parse_name(&n), Some((ts, 42)));
        for stray in [
            "meta.json",
            ".20260302T230005Z-42.json.tmp-9",
            "x-1.json",
            "20260302T230005Z-x.json",
        ] {
            assert_eq!(parse_name(stray), None, "{stray}");
        }
    }
}
