//! Per-terminal spreading for a fleet (PROTOCOL §8): pure functions of the terminal id, so
//! the platform can compute the same numbers from the id alone with any SHA-256.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The first 8 bytes of SHA-256(`s`) as a big-endian u64.
fn hash64(s: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// Seconds this terminal wakes earlier than the wake lead alone would say, so a district does
/// not boot and connect in the same second: `u64_be(SHA-256(id)[0..8]) mod (minutes × 60)`.
pub fn wake_spread_s(terminal_id: &str, spread_minutes: u64) -> u64 {
    let span = spread_minutes.saturating_mul(60);
    if span == 0 {
        return 0;
    }
    hash64(terminal_id) % span
}

/// The terminal's position in a rollout, a real in [0, 100):
/// `u64_be(SHA-256("{id}/{name}/{release}")[0..8]) × 100 / 2^64`.
pub fn rollout_position(terminal_id: &str, name: &str, release: &str) -> f64 {
    let h = hash64(&format!("{terminal_id}/{name}/{release}"));
    // Exact in u128, then one rounding to f64.
    ((u128::from(h) * 100) as f64) / 18_446_744_073_709_551_616.0
}

/// `rollout` of an application document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub start: Timestamp,
    pub waves: Vec<Wave>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub percent: f64,
    pub after_s: u64,
}

// `validate` refuses NaN, so equality on a validated rollout is total.
impl Eq for Wave {}
impl Eq for Rollout {}

/// Where one terminal stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub position: f64,
    /// Index of the wave that includes the terminal; `None` when no wave does.
    pub wave: Option<usize>,
    /// `start + after_s` of that wave.
    pub not_before: Option<Timestamp>,
}

impl Rollout {
    /// `percent` strictly increasing, in (0, 100]; `after_s` not decreasing; at least one wave.
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("rollout.waves: at least one wave is required".into());
        }
        let mut prev: Option<Wave> = None;
        for (i, w) in self.waves.iter().enumerate() {
            if !w.percent.is_finite() || w.percent <= 0.0 || w.percent > 100.0 {
                return Err(format!(
                    "rollout.waves[{i}].percent: {} is not in (0, 100]",
                    w.percent
                ));
            }
            if let Some(p) = prev {
                if w.percent <= p.percent {
                    return Err(format!(
                        "rollout.waves[{i}].percent: must be greater than the previous wave's {}",
                        p.percent
                    ));
                }
                if w.after_s < p.after_s {
                    return Err(format!(
                        "rollout.waves[{i}].after_s: must not be less than the previous wave's {}",
                        p.after_s
                    ));
                }
            }
            if i64::try_from(w.after_s).is_err()
                || self
                    .start
                    .checked_add(SignedDuration::from_secs(w.after_s as i64))
                    .is_err()
            {
                return Err(format!("rollout.waves[{i}].after_s: out of range"));
            }
            prev = Some(*w);
        }
        Ok(())
    }

    pub fn place(&self, terminal_id: &str, name: &str, release: &str) -> Placement {
        let position = rollout_position(terminal_id, name, release);
        let wave = self.waves.iter().position(|w| w.percent > position);
        let not_before = wave.and_then(|i| {
            let after = i64::try_from(self.waves[i].after_s).ok()?;
            self.start
                .checked_add(SignedDuration::from_secs(after))
                .ok()
        });
        Placement {
            position,
            wave,
            not_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_bounded_and_zero_disables() {
        assert_eq!(wake_spread_s("sz-ft-0001", 0), 0);
        for i in 0..200 {
            assert!(wake_spread_s(&format!("sz-ft-{i:04}"), 10) < 600);
        }
    }

    #[test]
    fn rollout_validation_refuses_bad_waves() {
        let r = |w: &[(f64, u64)]| Rollout {
            start: "2026-12-01T00:00:00Z".parse().unwrap(),
            waves: w
                .iter()
                .map(|&(percent, after_s)| Wave { percent, after_s })
                .collect(),
        };
        assert!(r(&[(5.0, 0), (100.0, 86400)]).validate().is_ok());
        assert!(r(&[]).validate().is_err());
        assert!(
            r(&[(50.0, 0), (50.0, 10)])
                .validate()
                .unwrap_err()
                .contains("greater")
        );
        assert!(
            r(&[(5.0, 10), (50.0, 0)])
                .validate()
                .unwrap_err()
                .contains("after_s")
        );
        assert!(r(&[(101.0, 0)]).validate().is_err());
        assert!(r(&[(0.0, 0)]).validate().is_err());
        let p = r(&[(5.0, 0), (100.0, 86400)]).place("sz-ft-0001", "kiosk-ui", "2.4.0");
        assert!(p.position >= 0.0 && p.position < 100.0);
        assert!(p.wave.is_some());
    }
}
