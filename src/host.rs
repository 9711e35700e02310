//! The two things every capability needs from the machine and that tests must control:
//! where the host's files are (`paths.root`) and what time it is (`Clock`).
//!
//! Decision code never reads the wall clock or a literal `/etc` path directly, so a test can
//! run the same code against a fixture tree and a chosen instant.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

/// Resolves absolute host paths (`/etc/...`, `/proc/...`, `/sys/...`) under `paths.root`.
#[derive(Debug, Clone)]
pub struct HostPaths {
    root: PathBuf,
}

impl HostPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps an absolute host path to the same path under the root. `..` components are
    /// dropped rather than followed so a path from a document can never climb out of the root.
    pub fn resolve(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in host_path.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }
}

/// The wall clock, injectable. Timers still use tokio's monotonic time; only decisions that
/// depend on the calendar (expiry, schedules, windows) ask a `Clock`.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

pub type SharedClock = Arc<dyn Clock>;

/// The system clock, optionally shifted by a fixed offset. The offset exists so an end-to-end
/// test can run the real daemon "at 17:55 on a Friday" without touching the machine's clock.
/// It is read from `KIOSK_AGENT_CLOCK_OFFSET_S` by debug builds only (what `cargo test` runs):
/// a release build, the one that is packaged, always runs on the system clock and says so if
/// the variable is set.
#[derive(Debug, Clone, Default)]
pub struct SystemClock {
    offset: SignedDuration,
}

/// The environment variable a debug build reads its clock offset from (seconds, may be negative).
pub const CLOCK_OFFSET_ENV: &str = "KIOSK_AGENT_CLOCK_OFFSET_S";

impl SystemClock {
    pub fn with_offset_secs(secs: i64) -> Self {
        Self {
            offset: SignedDuration::from_secs(secs),
        }
    }

    /// The daemon's clock: the system clock, shifted by the test offset in a debug build.
    pub fn from_env() -> Self {
        let Ok(v) = std::env::var(CLOCK_OFFSET_ENV) else {
            return Self::default();
        };
        if !cfg!(debug_assertions) {
            tracing::warn!(
                "{CLOCK_OFFSET_ENV} is a test setting of debug builds; this build ignores it"
            );
            return Self::default();
        }
        match v.trim().parse::<i64>() {
            Ok(secs) => Self::with_offset_secs(secs),
            Err(_) => {
                tracing::warn!(value = %v, "{CLOCK_OFFSET_ENV} is not an integer; ignored");
                Self::default()
            }
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.offset)
            .unwrap_or_else(|_| Timestamp::now())
    }
}

/// A clock that stays where a test puts it.
#[derive(Debug)]
pub struct FixedClock(pub std::sync::Mutex<Timestamp>);

impl FixedClock {
    pub fn new(at: Timestamp) -> Self {
        Self(std::sync::Mutex::new(at))
    }
    pub fn set(&self, at: Timestamp) {
        if let Ok(mut g) = self.0.lock() {
            *g = at;
        }
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
            .lock()
            .map(|g| *g)
            .unwrap_or_else(|p| *p.into_inner())
    }
}

/// The one time format the agent writes: RFC 3339, UTC, whole seconds, `Z`.
pub fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses any RFC 3339 form (offsets, fractions) into an instant.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_under_root() {
        let h = HostPaths::new("/tmp/fx");
        assert_eq!(
            h.resolve("/etc/passwd"),
            PathBuf::from("/tmp/fx/etc/passwd")
        );
        assert_eq!(h.resolve("/../../etc/x"), PathBuf::from("/tmp/fx/etc/x"));
        assert_eq!(
            HostPaths::new("/").resolve("/proc/1"),
            PathBuf::from("/proc/1")
        );
    }

    #[test]
    fn writes_whole_seconds_utc() {
        let t: Timestamp = "2026-11-29T16:00:00.789+08:00".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-11-29T08:00:00Z");
        assert_eq!(
            parse_time("2026-11-29T08:00:00Z"),
            Some("2026-11-29T08:00:00Z".parse().unwrap())
        );
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn offset_clock_moves_forward() {
        let c = SystemClock::with_offset_secs(86_400);
        assert!(
            c.now()
                > Timestamp::now()
                    .checked_add(SignedDuration::from_hours(23))
                    .unwrap()
        );
    }
}
