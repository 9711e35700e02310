//! Unpacks a verified artifact into a staging directory and moves it into place whole.
//!
//! The hash says the archive is the one the platform signed, not that it is harmless: a
//! mistake in the build pipeline (an absolute path, a `..`, a symlink to `/etc`, a gzip bomb)
//! must not reach outside the release. Every entry path is normalised here before anything is
//! created, links are checked against the release root, nothing is written through a symlink,
//! and the bytes produced are counted against a cap while they are produced. The release
//! appears under `releases/` only by a rename of a fully written and fsynced staging directory,
//! so a half-unpacked release is never visible.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::update::doc::ArtifactFormat;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry {entry:?} refused: {reason}; nothing was installed")]
    Refused { entry: String, reason: &'static str },
    #[error(
        "archive unpacks to more than {limit} bytes (updates.max_unpacked_bytes); nothing was installed"
    )]
    TooLarge { limit: u64 },
    #[error("archive is damaged: {0}; nothing was installed")]
    Corrupt(String),
    #[error("cannot write {path} while unpacking: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(entry: &Path, reason: &'static str) -> UnpackError {
    UnpackError::Refused {
        entry: entry.display().to_string(),
        reason,
    }
}

/// Bytes counted per entry on top of its content, so an archive of millions of empty files
/// still hits the cap.
const ENTRY_OVERHEAD: u64 = 512;

/// Unpacks `artifact` into `staging` (created fresh), then renames it to `release_dir`.
/// `file_name` names the single file of a `file` artifact. On error the staging directory is
/// removed and `release_dir` is untouched.
pub fn unpack_release(
    artifact: &Path,
    format: ArtifactFormat,
    file_name: &str,
    staging: &Path,
    release_dir: &Path,
    limit: u64,
) -> Result<(), UnpackError> {
    if staging.symlink_metadata().is_ok() {
        fs::remove_dir_all(staging).map_err(io_at(staging))?;
    }
    fs::create_dir_all(staging).map_err(io_at(staging))?;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755)).map_err(io_at(staging))?;
    let result = unpack_into(artifact, format, file_name, staging, limit);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(staging);
        return Err(e);
    }
    let parent = release_dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_at(parent))?;
    if release_dir.symlink_metadata().is_ok() {
        fs::remove_dir_all(release_dir).map_err(io_at(release_dir))?;
    }
    fs::rename(staging, release_dir).map_err(io_at(release_dir))?;
    crate::state::sync_dir(parent).map_err(io_at(parent))?;
    if let Some(sp) = staging.parent() {
        crate::state::sync_dir(sp).map_err(io_at(sp))?;
    }
    Ok(())
}

/// Unpacks into an existing, empty `staging` directory and fsyncs everything written.
pub fn unpack_into(
    artifact: &Path,
    format: ArtifactFormat,
    file_name: &str,
    staging: &Path,
    limit: u64,
) -> Result<(), UnpackError> {
    let src = File::open(artifact).map_err(io_at(artifact))?;
    let mut dirs = BTreeSet::new();
    dirs.insert(staging.to_path_buf());
    match format {
        ArtifactFormat::File => {
            let dest = staging.join(file_name);
            let mut counted = Capped::new(src, limit);
            let tripped = counted.tripped.clone();
            write_file(&mut counted, &dest, 0o755, &tripped, limit)?;
        }
        ArtifactFormat::Tar => unpack_tar(Capped::new(src, limit), staging, limit, &mut dirs)?,
        ArtifactFormat::TarGz => unpack_tar(
            Capped::new(flate2::read::GzDecoder::new(src), limit),
            staging,
            limit,
            &mut dirs,
        )?,
    }
    // Deepest first, so each directory's entry in its parent is durable before the parent.
    for d in dirs.iter().rev() {
        crate::state::sync_dir(d).map_err(io_at(d))?;
    }
    Ok(())
}

/// A reader that fails once more than `limit` bytes have come out of it: the decompressed
/// stream of a gzip bomb is stopped here, before tar or the disk see the excess.
/// The trip flag is shared because tar wraps the reader's error in its own, and the cause
/// must still be told apart from a damaged archive.
struct Capped<R> {
    inner: R,
    limit: u64,
    seen: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            tripped: Rc::new(Cell::new(false)),
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.limit {
            self.tripped.set(true);
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        Ok(n)
    }
}

fn read_error(e: io::Error, tripped: &Cell<bool>, limit: u64) -> UnpackError {
    if tripped.get() {
        UnpackError::TooLarge { limit }
    } else {
        UnpackError::Corrupt(e.to_string())
    }
}

/// Turns an archive path into a relative path of normal components, or refuses it.
fn normalise(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(refused(raw, "path contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(raw, "absolute path"));
            }
        }
    }
    Ok(out)
}

/// Refuses to place anything beneath a symlink: an entry `a/b` after a link `a -> /etc`
/// would otherwise write into `/etc`, whatever the entry's own path says.
fn ensure_parents(
    staging: &Path,
    rel: &Path,
    dirs: &mut BTreeSet<PathBuf>,
) -> Result<(), UnpackError> {
    let mut cur = staging.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match cur.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(rel, "a parent directory is a symlink"));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused(rel, "a parent path is not a directory")),
            Err(_) => {
                fs::create_dir(&cur).map_err(io_at(&cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_at(&cur))?;
                dirs.insert(cur.clone());
            }
        }
    }
    Ok(())
}

/// Clears the way for a new non-directory entry; a later entry may replace an earlier file
/// (tar semantics) but never a directory.
fn clear_slot(dest: &Path, rel: &Path) -> Result<(), UnpackError> {
    match dest.symlink_metadata() {
        Ok(m) if m.is_dir() => Err(refused(rel, "would replace a directory")),
        Ok(_) => fs::remove_file(dest).map_err(io_at(dest)),
        Err(_) => Ok(()),
    }
}

/// The mode an unpacked entry gets: the archive's read and execute bits, never write for group
/// or others (a local user must not be able to rewrite the kiosk UI's code), and never
/// setuid, setgid or sticky (an app release has no business with them).
pub fn clamp_mode(mode: u32) -> u32 {
    mode & 0o755
}

fn write_file(
    r: &mut dyn Read,
    dest: &Path,
    mode: u32,
    tripped: &Cell<bool>,
    limit: u64,
) -> Result<u64, UnpackError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(dest)
        .map_err(io_at(dest))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, tripped, limit)),
        };
        f.write_all(&buf[..n]).map_err(io_at(dest))?;
        total += n as u64;
    }
    f.set_permissions(fs::Permissions::from_mode(clamp_mode(mode)))
        .map_err(io_at(dest))?;
    f.sync_all().map_err(io_at(dest))?;
    Ok(total)
}

/// Checks that a symlink at `rel` with target `target` resolves inside the release. `..` is
/// allowed only as leading components: they then climb from the link's own directory, which
/// is a real directory (nothing is created under a symlink), so the lexical result is the
/// real one. A `..` after a normal component could step back out of another symlink and
/// escape, so it is refused.
fn check_symlink_target(rel: &Path, target: &Path) -> Result<(), UnpackError> {
    let mut depth = rel.components().count().saturating_sub(1) as i64;
    let mut seen_normal = false;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(rel, "symlink to an absolute path"));
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if seen_normal {
                    return Err(refused(rel, "symlink target has `..` after a name"));
                }
                depth -= 1;
                if depth < 0 {
                    return Err(refused(rel, "symlink points outside the release"));
                }
            }
            Component::Normal(_) => {
                seen_normal = true;
                depth += 1;
            }
        }
    }
    Ok(())
}

fn unpack_tar<R: Read>(
    reader: Capped<R>,
    staging: &Path,
    limit: u64,
    dirs: &mut BTreeSet<PathBuf>,
) -> Result<(), UnpackError> {
    use tar::EntryType;
    let tripped = reader.tripped.clone();
    let mut archive = tar::Archive::new(reader);
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| read_error(e, &tripped, limit))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, &tripped, limit))?;
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?
            .into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let rel = normalise(&raw)?;
        total = total.saturating_add(ENTRY_OVERHEAD);
        if total > limit {
            return Err(UnpackError::TooLarge { limit });
        }
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(refused(&raw, "empty path"));
        }
        let dest = staging.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644);
        match kind {
            EntryType::Directory => {
                ensure_parents(staging, &rel, dirs)?;
                match dest.symlink_metadata() {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refused(&raw, "directory replaces a file or link")),
                    Err(_) => {
                        fs::create_dir(&dest).map_err(io_at(&dest))?;
                    }
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(clamp_mode(mode) | 0o700))
                    .map_err(io_at(&dest))?;
                dirs.insert(dest);
            }
            EntryType::Regular | EntryType::Continuous => {
                let declared = entry.header().size().unwrap_or(u64::MAX);
                if total.saturating_add(declared) > limit {
                    return Err(UnpackError::TooLarge { limit });
                }
                ensure_parents(staging, &rel, dirs)?;
                clear_slot(&dest, &rel)?;
                let written = write_file(&mut entry, &dest, mode, &tripped, limit)?;
                total = total.saturating_add(written);
                if total > limit {
                    return Err(UnpackError::TooLarge { limit });
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| refused(&raw, "symlink without a target"))?
                    .into_owned();
                check_symlink_target(&rel, &target)?;
                ensure_parents(staging, &rel, dirs)?;
                clear_slot(&dest, &rel)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(io_at(&dest))?;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| refused(&raw, "hard link without a target"))?
                    .into_owned();
                let target_rel = normalise(&target_raw)
                    .map_err(|_| refused(&raw, "hard link points outside the release"))?;
                ensure_parents(staging, &target_rel, dirs)
                    .map_err(|_| refused(&raw, "hard link target lies under a symlink"))?;
                let target = staging.join(&target_rel);
                match target.symlink_metadata() {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(refused(
                            &raw,
                            "hard link target is not a file in the release",
                        ));
                    }
                }
                ensure_parents(staging, &rel, dirs)?;
                clear_slot(&dest, &rel)?;
                fs::hard_link(&target, &dest).map_err(io_at(&dest))?;
            }
            EntryType::Char | EntryType::Block => {
                return Err(refused(&raw, "device files are not allowed"));
            }
            EntryType::Fifo => return Err(refused(&raw, "fifos are not allowed")),
            _ => return Err(refused(&raw, "unsupported entry type")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_refuses_escapes() {
        assert_eq!(normalise(Path::new("./a/b")).unwrap(), PathBuf::from("a/b"));
        assert!(matches!(
            normalise(Path::new("/etc/passwd")),
            Err(UnpackError::Refused {
                reason: "absolute path",
                ..
            })
        ));
        assert!(matches!(
            normalise(Path::new("a/../../x")),
            Err(UnpackError::Refused {
                reason: "path contains `..`",
                ..
            })
        ));
    }

    #[test]
    fn symlink_targets() {
        let ok = |l: &str, t: &str| check_symlink_target(Path::new(l), Path::new(t)).is_ok();
        assert!(ok("bin/app", "../lib/app.so"));
        assert!(ok("current-data", "data/x"));
        assert!(!ok("app", "../x"));
        assert!(!ok("a/b", "../../x"));
        assert!(!ok("a", "/etc/passwd"));
        assert!(!ok("t", "s/../x"));
    }

    #[test]
    fn capped_reader_stops_at_limit() {
        let mut r = Capped::new(&[0u8; 100][..], 50);
        let mut out = vec![];
        assert!(
            matches!(r.read_to_end(&mut out), Err(ref e) if e.to_string() == "unpacked size limit exceeded")
        );
        assert!(r.tripped.get());
    }
}
