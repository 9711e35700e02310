//! `file_hash`: a file's SHA-256 equals the one the policy pins (integrity of binaries and
//! configuration). Never remediated: the agent cannot know the right content, only that it changed.

use std::io::Read;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, abs_path, spec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
    sha256: String,
}

#[derive(Debug)]
pub struct FileHash {
    path: String,
    sha256: String,
}

impl FileHash {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        abs_path("path", &s.path)?;
        let h = s.sha256.to_ascii_lowercase();
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hex digits".into());
        }
        Ok(Self {
            path: s.path,
            sha256: h,
        })
    }
}

/// A pinned file larger than this is refused rather than hashed for minutes.
const HASH_CAP: u64 = 1024 * 1024 * 1024;

/// Streams the file so a large binary is hashed without being held in memory.
/// Opened without blocking and refused unless it is a regular file; at most [`HASH_CAP`] bytes.
pub(crate) fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = crate::policy::text::open_regular(path)?.take(HASH_CAP + 1);
    let mut total = 0u64;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > HASH_CAP {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "file larger than 1 GiB; not hashed",
            ));
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

impl Check for FileHash {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        match crate::policy::text::confined(ctx.host, &self.path).and_then(|p| sha256_file(&p)) {
            Ok(h) => Outcome::verdict(
                h == self.sha256,
                json!(h),
                if h == self.sha256 {
                    format!("{} matches its pinned hash", self.path)
                } else {
                    format!(
                        "{} changed: sha256 {h}, expected {}",
                        self.path, self.sha256
                    )
                },
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Outcome::fail(json!("absent"), format!("{} does not exist", self.path))
            }
            Err(e) => Outcome::error(format!("cannot read {}: {e}", self.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn matches_changed_and_missing() {
        let fx = Fx::new(&[("/usr/bin/app", "abc")]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c =
            FileHash::build(json!({"path":"/usr/bin/app","sha256":ABC.to_uppercase()})).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        assert!(!c.can_remediate());
        fx.write("/usr/bin/app", "abd");
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        assert_ne!(o.observed, json!(ABC));
        let gone = FileHash::build(json!({"path":"/nope","sha256":ABC})).unwrap();
        assert_eq!(gone.evaluate(&ctx).status, CheckStatus::Fail);
        assert!(
            matches!(FileHash::build(json!({"path":"/x","sha256":"abc"})), Err(ref e) if e.contains("sha256 must be 64 hex digits"))
        );
    }
}
