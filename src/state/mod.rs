//! Durable records under `paths.state_dir`.
//!
//! Owns the one way the agent writes a file that matters: temp file in the same directory,
//! fsync, rename over the target, fsync the directory. After a power cut the reader sees the
//! old content or the new, never a mix. It never interprets what it stores; each capability
//! owns the meaning of its own records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode record for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Writes `bytes` to `path` atomically. `mode` is applied to the new file; `None` keeps the mode
/// of the file being replaced (0644 for a new one), so rewriting a host config never widens it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let mode = match mode {
        Some(m) => m,
        None => fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        // The umask may have narrowed the mode on create; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// fsync a directory so a rename or create inside it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Typed JSON records under the state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (and creates) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StateError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Creates a sub-directory for a capability's own files.
    pub fn subdir(&self, rel: &str) -> Result<PathBuf, StateError> {
        let p = self.dir.join(rel);
        fs::create_dir_all(&p).map_err(|source| StateError::Write {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }

    /// Loads a record; a missing file is `Ok(None)`, a corrupt one is an error for the caller
    /// to report (never silently replaced by a default).
    pub fn load<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>, StateError> {
        let path = self.path(rel);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse { path, source })
    }

    pub fn save<T: Serialize>(&self, rel: &str, value: &T) -> Result<(), StateError> {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| StateError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Encode {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes, Some(0o640))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.conf");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"new", None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn store_roundtrip_and_corrupt_is_error() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path().join("state")).unwrap();
        assert_eq!(s.load::<u64>("n.json").unwrap(), None);
        s.save("n.json", &42u64).unwrap();
        assert_eq!(s.load::<u64>("n.json").unwrap(), Some(42));
        fs::write(s.path("n.json"), "{torn").unwrap();
        assert!(matches!(
            s.load::<u64>("n.json"),
            Err(StateError::Parse { .. })
        ));
    }
}
