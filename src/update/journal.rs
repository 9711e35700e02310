//! The install journal: one record per app under `{state_dir}/update/journal/`.
//!
//! It is written atomically before each step that changes what the kiosk runs, so after a
//! kill -9 or power loss the next start knows exactly which step was in flight and whether to
//! finish it or undo it. It also holds the whole verified document, because recovery must not
//! depend on the platform re-sending it.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::{StateError, StateStore};
use crate::update::doc::AppDoc;

/// Where an install stands. Order matters: each phase is recorded before the step that
/// follows it can leave a trace on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The artifact is being fetched; `current` is untouched.
    Downloading,
    /// `releases/{release}` is complete and fsynced; `current` still points at `previous`
    /// (or, if the switch's rename landed before the next record, already at the release).
    Unpacked,
    /// `current` points at the new release; units may or may not have been restarted.
    Switched,
    /// Units restarted, health check running.
    Health,
    /// Health failed; `current` is being (or has been) switched back to `previous`.
    RollingBack,
    /// Finished; the outcome is recorded.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub doc: AppDoc,
    pub phase: Phase,
    /// The release `current` pointed at when the install began; the rollback target.
    pub previous: Option<String>,
    pub started_at: String,
    pub updated_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot remove install journal {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot list install journals in {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct JournalStore {
    store: StateStore,
}

impl JournalStore {
    pub fn new(store: StateStore) -> Self {
        Self { store }
    }

    fn rel(name: &str) -> String {
        format!("update/journal/{name}.json")
    }

    pub fn load(&self, name: &str) -> Result<Option<Journal>, JournalError> {
        Ok(self.store.load(&Self::rel(name))?)
    }

    pub fn save(&self, j: &Journal) -> Result<(), JournalError> {
        Ok(self.store.save(&Self::rel(&j.doc.name), j)?)
    }

    pub fn remove(&self, name: &str) -> Result<(), JournalError> {
        let path = self.store.path(&Self::rel(name));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(JournalError::Remove { path, source }),
        }
        if let Some(dir) = path.parent() {
            crate::state::sync_dir(dir).map_err(|source| JournalError::Remove {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    /// Names of the apps with a journal, sorted so recovery runs in a stable order.
    pub fn names(&self) -> Result<Vec<String>, JournalError> {
        let dir = self.store.path("update/journal");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(JournalError::List { path: dir, source }),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.strip_suffix(".json")
                    .filter(|n| crate::config::valid_id(n))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }
}
