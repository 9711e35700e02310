//! The kernel's clock discipline (adjtimex), in health as `time` (PROTOCOL §9). Every expiry
//! check and every TLS handshake depends on the clock, so a clock that lost its time source
//! for long is an alarm, not a footnote.

use jiff::Timestamp;
use serde::Serialize;

/// How long the clock may stay unsynchronized before `time.unsynchronized` is raised.
pub const UNSYNC_ALARM_S: i64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeStatus {
    pub synchronized: bool,
    /// The kernel's bound on the clock's error.
    pub max_error_ms: u64,
}

/// Where clock-discipline figures come from; the kernel in production.
pub trait TimeSource: Send + Sync {
    fn read(&self) -> Option<TimeStatus>;
}

/// `adjtimex` with no modes (what `ntp_adjtime` wraps): reads the kernel's state, changes nothing.
#[derive(Debug, Default)]
pub struct KernelTime;

impl TimeSource for KernelTime {
    fn read(&self) -> Option<TimeStatus> {
        // SAFETY: `timex` is plain data for which all-zero is valid; modes = 0 makes the call
        // read-only, and the kernel only writes inside the struct we pass.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return None;
        }
        Some(TimeStatus {
            synchronized: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
            max_error_ms: u64::try_from(tx.maxerror).unwrap_or(0) / 1000,
        })
    }
}

/// What changed in the clock's state, for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Unsynchronized since this instant, for longer than [`UNSYNC_ALARM_S`].
    Unsynchronized(Timestamp),
    Recovered,
}

/// Remembers since when the clock is unsynchronized and whether that was reported.
#[derive(Debug, Default)]
pub struct TimeWatch {
    since: Option<Timestamp>,
    raised: bool,
}

impl TimeWatch {
    pub fn observe(&mut self, s: TimeStatus, now: Timestamp) -> Option<Transition> {
        if s.synchronized {
            self.since = None;
            return std::mem::take(&mut self.raised).then_some(Transition::Recovered);
        }
        let since = *self.since.get_or_insert(now);
        if !self.raised && now.as_second() - since.as_second() > UNSYNC_ALARM_S {
            self.raised = true;
            return Some(Transition::Unsynchronized(since));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_after_ten_minutes_once_and_recovers() {
        let t0: Timestamp = "2026-12-01T08:00:00Z".parse().unwrap();
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        let off = TimeStatus {
            synchronized: false,
            max_error_ms: 16_000,
        };
        let on = TimeStatus {
            synchronized: true,
            max_error_ms: 12,
        };
        let mut w = TimeWatch::default();
        assert_eq!(w.observe(on, at(0)), None);
        assert_eq!(w.observe(off, at(10)), None);
        assert_eq!(w.observe(off, at(610)), None);
        assert_eq!(
            w.observe(off, at(611)),
            Some(Transition::Unsynchronized(at(10)))
        );
        assert_eq!(w.observe(off, at(1200)), None);
        assert_eq!(w.observe(on, at(1300)), Some(Transition::Recovered));
        assert_eq!(w.observe(on, at(1400)), None);
        // A short loss is no alarm, and its end is no recovery.
        assert_eq!(w.observe(off, at(1500)), None);
        assert_eq!(w.observe(on, at(1600)), None);
    }

    #[test]
    fn the_kernel_answers() {
        let s = KernelTime.read().expect("adjtimex works on Linux");
        let _: (bool, u64) = (s.synchronized, s.max_error_ms);
    }
}
