//! At most N `security.rejected` events per minute: a flood of forged messages must not
//! flood the platform (or the disk queue) in turn. The next event let through says how many
//! were suppressed.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    per_min: u32,
    window_start: Option<Instant>,
    sent: u32,
    suppressed: u64,
}

impl RateLimiter {
    pub fn new(per_min: u32) -> Self {
        Self {
            per_min,
            window_start: None,
            sent: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one let through)` when an event may be sent now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60));
        if fresh {
            self.window_start = Some(now);
            self.sent = 0;
        }
        if self.sent < self.per_min {
            self.sent += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_minute_and_counts_suppressed() {
        let mut l = RateLimiter::new(2);
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), None);
        assert_eq!(l.allow(t + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t + Duration::from_secs(61)), Some(2));
    }
}
