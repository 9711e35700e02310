//! What `check-config` adds to parsing: every file the daemon will read at start-up is opened
//! and parsed here the same way, so provisioning learns of a missing, unreadable, garbage or
//! wrong-type file (naming its key) before the service is started, not from a refusal loop.
//! Run it as the user the service runs as, so permissions are judged as the daemon meets them.

use std::io::Read;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Config;

/// No credential or CA file is anywhere near this large.
const FILE_CAP: u64 = 1024 * 1024;

/// Reads a file without blocking on it (a FIFO or a device is refused by type first).
fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let at = |m: String| format!("{key}: {}: {m}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| at(e.to_string()))?;
    if !meta.is_file() {
        return Err(at(if meta.is_dir() {
            "is a directory, not a file".into()
        } else {
            "is not a regular file".into()
        }));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| at(format!("cannot be read by this user: {e}")))?;
    let mut buf = Vec::new();
    f.take(FILE_CAP + 1)
        .read_to_end(&mut buf)
        .map_err(|e| at(format!("cannot be read: {e}")))?;
    if buf.len() as u64 > FILE_CAP {
        return Err(at("is larger than 1 MiB".into()));
    }
    Ok(buf)
}

fn certs(key: &str, path: &Path) -> Result<(), String> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(())
}

/// Every file problem, each prefixed with the key at fault.
pub fn check_files(cfg: &Config) -> Vec<String> {
    let mut e = Vec::new();
    let m = &cfg.mqtt;
    if let Some(p) = &m.ca_file
        && let Err(x) = certs("mqtt.ca_file", p)
    {
        e.push(x);
    }
    if let Some(p) = &m.cert_file
        && let Err(x) = certs("mqtt.cert_file", p)
    {
        e.push(x);
    }
    if let Some(p) = &m.key_file {
        match read("mqtt.key_file", p) {
            Ok(bytes) => {
                if let Err(x) = PrivateKeyDer::from_pem_slice(&bytes) {
                    e.push(format!(
                        "mqtt.key_file: {}: not a PEM private key: {x}",
                        p.display()
                    ));
                }
            }
            Err(x) => e.push(x),
        }
    }
    if let Some(p) = &m.password_file {
        match read("mqtt.password_file", p) {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(s) if s.trim_end().is_empty() => {
                    e.push(format!("mqtt.password_file: {}: is empty", p.display()))
                }
                Ok(s) if s.trim_end().contains(['\n', '\0']) => e.push(format!(
                    "mqtt.password_file: {}: holds more than one line",
                    p.display()
                )),
                Ok(_) => {}
                Err(_) => e.push(format!(
                    "mqtt.password_file: {}: is not UTF-8 text",
                    p.display()
                )),
            },
            Err(x) => e.push(x),
        }
        if m.username.is_none() {
            e.push("mqtt.password_file: set without mqtt.username; it would be ignored".into());
        }
    }
    if let Some(p) = &cfg.updates.ca_file
        && let Err(x) = certs("updates.ca_file", p)
    {
        e.push(x);
    }
    e
}
