//! The one boundary through which policy remediation changes the host.
//!
//! Checks decide *what* to write; a [`Remediator`] performs it. Every path it receives is a host
//! path (`/etc/...`) that it maps under `paths.root`, canonicalises, and refuses when the result
//! leaves the root (a symlink planted in `/etc` must not turn a config rewrite into a write to
//! somewhere else). Files are replaced atomically with their mode kept, so a failure part-way
//! leaves the original intact. The verb set is deliberately small and fixed so it can later move
//! into a privileged helper behind a socket without the checks changing.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::host::HostPaths;
use crate::state::{StateError, sync_dir, write_atomic};

use super::runner::{CommandRunner, SystemRunner};

#[derive(Debug, thiserror::Error)]
pub enum RemediateError {
    #[error("{path}: resolves outside the host root; refused")]
    OutsideRoot { path: String },
    #[error("{path}: {message}; refused")]
    Refused { path: String, message: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path}: candidate failed validation, original kept: {message}")]
    Validation { path: String, message: String },
    #[error(transparent)]
    Write(#[from] StateError),
    #[error("this check has no remediation")]
    Unsupported,
}

/// A syntax check run on a candidate file before it replaces the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    /// `sshd -t -f <candidate>`, when the sshd binary exists under the root.
    Sshd,
}

/// The executor of remediation. Paths are host paths; implementations confine them to the root.
pub trait Remediator: Send + Sync + std::fmt::Debug {
    /// Replaces (or creates, mode 0644, with missing parent directories) a file atomically,
    /// keeping an existing file's mode. Returns a note for the evidence (e.g. how it was validated).
    fn write_file(
        &self,
        path: &str,
        bytes: &[u8],
        validator: Option<Validator>,
    ) -> Result<String, RemediateError>;
    /// Removes a file the agent wrote itself (rolling back its own drop-in). Absent is fine.
    fn remove_file(&self, path: &str) -> Result<(), RemediateError>;
    fn set_mode(&self, path: &str, mode: u32) -> Result<(), RemediateError>;
    fn set_owner(&self, path: &str, uid: u32) -> Result<(), RemediateError>;
    /// Writes a live kernel parameter (`/proc/sys/<key as path>`).
    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), RemediateError>;
    /// Masks a systemd unit: `/etc/systemd/system/<unit>` becomes a symlink to `/dev/null`.
    /// systemd notices at its next reload or boot.
    fn mask_unit(&self, unit: &str) -> Result<(), RemediateError>;
}

/// The in-process remediator: direct file operations under the root.
#[derive(Debug, Clone)]
pub struct FsRemediator {
    host: HostPaths,
    runner: Arc<dyn CommandRunner>,
    sshd_validator: Option<Vec<String>>,
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> RemediateError + 'a {
    move |source| RemediateError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

/// Unit names as systemd spells them; anything else (a `/`, `..`) is refused before a path is built.
pub fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 255
        && unit.contains('.')
        && !unit.starts_with('.')
        && unit.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':' | b'\\')
        })
}

/// Dotted sysctl keys: lowercase names, digits, `_`, `-`; no empty component.
pub fn valid_sysctl_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        })
}

impl FsRemediator {
    pub fn new(host: HostPaths) -> Self {
        Self {
            host,
            runner: Arc::new(SystemRunner),
            sshd_validator: None,
        }
    }

    /// Uses `runner` for validators (tests inject a fake).
    pub fn with_runner(mut self, runner: Arc<dyn CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    /// Replaces the sshd validator command; the candidate path is appended as the last argument.
    /// Lets a host with sshd elsewhere (or a test) say how to validate.
    pub fn with_sshd_validator(mut self, argv: Vec<String>) -> Self {
        self.sshd_validator = Some(argv);
        self
    }

    /// Maps a host path under the root and resolves every symlink on the way; see [`confine`].
    pub fn confine(&self, host_path: &str) -> Result<PathBuf, RemediateError> {
        confine(&self.host, host_path)
    }

    fn validate(
        &self,
        path: &str,
        target: &Path,
        bytes: &[u8],
        validator: Validator,
    ) -> Result<String, RemediateError> {
        let argv = match (validator, &self.sshd_validator) {
            (Validator::Sshd, Some(argv)) => argv.clone(),
            (Validator::Sshd, None) => {
                let bin = self.host.resolve("/usr/sbin/sshd");
                if !bin.exists() {
                    return Ok("sshd not installed under root: candidate not validated".into());
                }
                vec![bin.display().to_string(), "-t".into(), "-f".into()]
            }
        };
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let candidate = dir.join(format!(".{name}.kiosk-agent-candidate"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&candidate)
                .map_err(io_err("write candidate for", path))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(io_err("write candidate for", path))?;
            let mut full = argv.clone();
            full.push(candidate.display().to_string());
            let out = self
                .runner
                .run(&full, Duration::from_secs(30))
                .map_err(|message| RemediateError::Validation {
                    path: path.into(),
                    message,
                })?;
            if out.code == Some(0) {
                Ok(format!("validated with {}", argv.join(" ")))
            } else {
                Err(RemediateError::Validation {
                    path: path.into(),
                    message: format!(
                        "{} exited {:?}: {}",
                        argv.join(" "),
                        out.code,
                        out.stderr.trim()
                    ),
                })
            }
        })();
        let _ = fs::remove_file(&candidate);
        result
    }
}

impl Remediator for FsRemediator {
    fn write_file(
        &self,
        path: &str,
        bytes: &[u8],
        validator: Option<Validator>,
    ) -> Result<String, RemediateError> {
        let target = self.confine(path)?;
        if let Ok(m) = fs::symlink_metadata(&target) {
            if !m.is_file() {
                return Err(RemediateError::Refused {
                    path: path.into(),
                    message: "not a regular file".into(),
                });
            }
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create directory for", path))?;
        }
        let note = match validator {
            Some(v) => self.validate(path, &target, bytes, v)?,
            None => String::new(),
        };
        write_atomic(&target, bytes, None)?;
        Ok(note)
    }

    fn remove_file(&self, path: &str) -> Result<(), RemediateError> {
        let target = self.confine(path)?;
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove", path)(e)),
        }
        if let Some(parent) = target.parent() {
            sync_dir(parent).map_err(io_err("sync directory of", path))?;
        }
        Ok(())
    }

    fn set_mode(&self, path: &str, mode: u32) -> Result<(), RemediateError> {
        let target = self.confine(path)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_err("chmod", path))
    }

    fn set_owner(&self, path: &str, uid: u32) -> Result<(), RemediateError> {
        let target = self.confine(path)?;
        nix::unistd::chown(&target, Some(nix::unistd::Uid::from_raw(uid)), None)
            .map_err(|e| io_err("chown", path)(io::Error::from(e)))
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), RemediateError> {
        if !valid_sysctl_key(key) {
            return Err(RemediateError::Refused {
                path: key.into(),
                message: "not a sysctl key".into(),
            });
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let target = self.confine(&path)?;
        // /proc/sys files cannot be renamed over; they are written in place, never created.
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&target)
            .map_err(io_err("open", &path))?;
        f.write_all(format!("{value}\n").as_bytes())
            .map_err(io_err("write", &path))
    }

    fn mask_unit(&self, unit: &str) -> Result<(), RemediateError> {
        let path = format!("/etc/systemd/system/{unit}");
        if !valid_unit_name(unit) {
            return Err(RemediateError::Refused {
                path,
                message: "not a unit name".into(),
            });
        }
        let link = self.host.resolve(&path);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                if fs::read_link(&link).ok().as_deref() == Some(Path::new("/dev/null")) {
                    return Ok(());
                }
                return Err(RemediateError::Refused {
                    path,
                    message: "a symlink to another unit is already there".into(),
                });
            }
            Ok(_) => {
                return Err(RemediateError::Refused {
                    path,
                    message: "a unit file is installed there".into(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
        let dir = self.confine("/etc/systemd/system")?;
        fs::create_dir_all(&dir).map_err(io_err("create directory for", &path))?;
        let tmp = dir.join(format!(".{unit}.kiosk-agent-tmp"));
        let _ = fs::remove_file(&tmp);
        let res = std::os::unix::fs::symlink("/dev/null", &tmp)
            .and_then(|_| fs::rename(&tmp, dir.join(unit)))
            .and_then(|_| sync_dir(&dir));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map_err(io_err("mask", &path))
    }
}

fn root_canonical(host: &HostPaths) -> Result<PathBuf, RemediateError> {
    let root = host.root();
    fs::canonicalize(root).map_err(|source| RemediateError::Io {
        op: "resolve root",
        path: root.display().to_string(),
        source,
    })
}

/// Maps a host path under the root and resolves every symlink on the way; the result is
/// refused unless it stays under the canonical root. Missing trailing components are kept
/// (they will be created), but their nearest existing ancestor is what gets checked.
pub fn confine(host: &HostPaths, host_path: &str) -> Result<PathBuf, RemediateError> {
    let root = root_canonical(host)?;
    let full = host.resolve(host_path);
    let mut existing = full.clone();
    let mut missing = Vec::new();
    loop {
        match fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(RemediateError::OutsideRoot {
                        path: host_path.into(),
                    });
                };
                missing.push(name);
                if !existing.pop() {
                    return Err(RemediateError::OutsideRoot {
                        path: host_path.into(),
                    });
                }
            }
            Err(e) => return Err(io_err("inspect", host_path)(e)),
        }
    }
    let canon = match fs::canonicalize(&existing) {
        Ok(c) => c,
        // A dangling symlink: its target is outside what we can check; never follow it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RemediateError::Refused {
                path: host_path.into(),
                message: "dangling symlink".into(),
            });
        }
        Err(e) => return Err(io_err("resolve", host_path)(e)),
    };
    if !canon.starts_with(&root) {
        return Err(RemediateError::OutsideRoot {
            path: host_path.into(),
        });
    }
    let mut out = canon;
    for m in missing.into_iter().rev() {
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, FsRemediator) {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc/ssh")).unwrap();
        let r = FsRemediator::new(HostPaths::new(d.path()));
        (d, r)
    }

    #[test]
    fn writes_atomically_keeping_mode_and_creating_parents() {
        let (d, r) = setup();
        let p = d.path().join("etc/ssh/sshd_config");
        fs::write(&p, "old\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        r.write_file("/etc/ssh/sshd_config", b"new\n", None)
            .unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        r.write_file("/etc/sysctl.d/90-kiosk-agent.conf", b"a = 1\n", None)
            .unwrap();
        assert!(d.path().join("etc/sysctl.d/90-kiosk-agent.conf").is_file());
    }

    #[test]
    fn symlink_out_of_root_is_refused_and_target_untouched() {
        let (d, r) = setup();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        symlink(&victim, d.path().join("etc/login.defs")).unwrap();
        symlink(outside.path(), d.path().join("etc/sysctl.d")).unwrap();
        let e = r.write_file("/etc/login.defs", b"x", None).unwrap_err();
        assert!(matches!(e, RemediateError::OutsideRoot { .. }), "{e}");
        let e = r
            .write_file("/etc/sysctl.d/victim", b"x", None)
            .unwrap_err();
        assert!(matches!(e, RemediateError::OutsideRoot { .. }), "{e}");
        assert!(matches!(
            r.set_mode("/etc/login.defs", 0o600),
            Err(RemediateError::OutsideRoot { .. })
        ));
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // a dangling absolute link would resolve against the real host: refused too
        symlink("/nonexistent-kiosk-target", d.path().join("etc/issue")).unwrap();
        assert!(
            matches!(r.write_file("/etc/issue", b"x", None), Err(RemediateError::Refused { ref message, .. }) if message == "dangling symlink")
        );
    }

    #[test]
    fn symlink_inside_root_is_followed_to_its_target() {
        let (d, r) = setup();
        fs::write(d.path().join("etc/real.conf"), "a").unwrap();
        symlink("real.conf", d.path().join("etc/alias.conf")).unwrap();
        r.write_file("/etc/alias.conf", b"b", None).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("etc/real.conf")).unwrap(),
            "b"
        );
        assert!(
            fs::symlink_metadata(d.path().join("etc/alias.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn failed_validation_keeps_the_original_and_leaves_no_candidate() {
        let (d, r) = setup();
        let r = r.with_sshd_validator(vec![
            "sh".into(),
            "-c".into(),
            "exit 255".into(),
            "sh".into(),
        ]);
        let p = d.path().join("etc/ssh/sshd_config");
        fs::write(&p, "PermitRootLogin yes\n").unwrap();
        let e = r
            .write_file("/etc/ssh/sshd_config", b"garbage\n", Some(Validator::Sshd))
            .unwrap_err();
        assert!(matches!(e, RemediateError::Validation { .. }), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "PermitRootLogin yes\n");
        assert_eq!(fs::read_dir(d.path().join("etc/ssh")).unwrap().count(), 1);
        let ok = r.with_sshd_validator(vec!["true".into()]);
        let note = ok
            .write_file(
                "/etc/ssh/sshd_config",
                b"PermitRootLogin no\n",
                Some(Validator::Sshd),
            )
            .unwrap();
        assert!(note.contains("validated"), "{note}");
    }

    #[test]
    fn missing_sshd_binary_skips_validation_with_a_note() {
        let (_d, r) = setup();
        let note = r
            .write_file("/etc/ssh/sshd_config", b"X no\n", Some(Validator::Sshd))
            .unwrap();
        assert!(note.contains("not validated"), "{note}");
    }

    #[test]
    fn mask_unit_links_to_dev_null_and_refuses_real_unit_files() {
        let (d, r) = setup();
        r.mask_unit("ctrl-alt-del.target").unwrap();
        let l = d.path().join("etc/systemd/system/ctrl-alt-del.target");
        assert_eq!(fs::read_link(&l).unwrap(), PathBuf::from("/dev/null"));
        r.mask_unit("ctrl-alt-del.target").unwrap();
        fs::write(d.path().join("etc/systemd/system/mine.service"), "[Unit]\n").unwrap();
        assert!(
            matches!(r.mask_unit("mine.service"), Err(RemediateError::Refused { ref message, .. }) if message == "a unit file is installed there")
        );
        assert!(
            matches!(r.mask_unit("../../x.service"), Err(RemediateError::Refused { ref message, .. }) if message == "not a unit name")
        );
    }

    #[test]
    fn sysctl_is_written_in_place_and_never_created() {
        let (d, r) = setup();
        let p = d.path().join("proc/sys/kernel/sysrq");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "438\n").unwrap();
        r.write_sysctl("kernel.sysrq", "0").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "0\n");
        assert!(matches!(
            r.write_sysctl("kernel.nosuch", "1"),
            Err(RemediateError::Io { op: "open", .. })
        ));
        assert!(!d.path().join("proc/sys/kernel/nosuch").exists());
        assert!(
            matches!(r.write_sysctl("../etc", "1"), Err(RemediateError::Refused { ref message, .. }) if message == "not a sysctl key")
        );
    }
}
