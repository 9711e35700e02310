//! Fault grades P1–P4 (docs/security-baseline.md §3.2) and the reading a kiosk device probe returns.
//!
//! The platform dispatches technicians by grade, with a response time per grade, so the grade
//! must come from one documented rule rather than from each probe's taste:
//!
//! 1. A device that understands its own state (a printer saying `media-empty`, a UPS saying
//!    `LB`) sets the grade of its reading; that wins, because the device knows more than the
//!    configured severity does.
//! 2. Otherwise a failing probe takes the default of its configured severity:
//!    critical → P1, major → P2, minor → P3, info → P4. A probe that is ok and whose reading
//!    carries no grade has no fault at all.
//! 3. A fault that outlives its restore target escalates by exactly one grade: P2 after 8 h
//!    becomes P1, P3 after 24 h becomes P2. P1 cannot rise and P4 (advisory) never escalates.
//!    UPS (`nut`) faults do not escalate on duration: a long stay on battery escalates by itself
//!    when the battery runs low.
//!
//! `Grade` orders P1 first, so sorting faults ascending puts the worst open fault first.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::Severity;

/// A fault grade. `P1 < P2 < P3 < P4`: smaller is worse, so an ascending sort is worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Grade {
    /// 紧急: the kiosk cannot serve, or a compromise is suspected. Response 30 min.
    P1,
    /// 严重: a core business function (printing, ID reading) is blocked. Response 2 h.
    P2,
    /// 一般: degraded or a secondary peripheral down (paper low, UPS on battery). Response 4 h.
    P3,
    /// 提示: advisory. Next maintenance window.
    P4,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P1 => "P1",
            Self::P2 => "P2",
            Self::P3 => "P3",
            Self::P4 => "P4",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "P1" => Some(Self::P1),
            "P2" => Some(Self::P2),
            "P3" => Some(Self::P3),
            "P4" => Some(Self::P4),
            _ => None,
        }
    }

    /// The default grade of a failing probe of this configured severity.
    pub fn from_severity(s: Severity) -> Self {
        match s {
            Severity::Critical => Self::P1,
            Severity::Major => Self::P2,
            Severity::Minor => Self::P3,
            Severity::Info => Self::P4,
        }
    }

    /// The event severity a fault of this grade is raised with, so the platform's existing
    /// severity filters keep working for device faults.
    pub fn severity(self) -> Severity {
        match self {
            Self::P1 => Severity::Critical,
            Self::P2 => Severity::Major,
            Self::P3 => Severity::Minor,
            Self::P4 => Severity::Info,
        }
    }

    /// One grade worse; P1 stays P1.
    pub fn escalated(self) -> Self {
        match self {
            Self::P1 | Self::P2 => Self::P1,
            Self::P3 => Self::P2,
            Self::P4 => Self::P3,
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a fault of each grade may stay open before it escalates one grade. The defaults are
/// the restore targets of §3.2 (P2: 8 h; P3: next working day, taken as 24 h). Contracts differ,
/// hence a value rather than constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    pub p2_after: SignedDuration,
    pub p3_after: SignedDuration,
}

impl Default for Escalation {
    fn default() -> Self {
        Self {
            p2_after: SignedDuration::from_hours(8),
            p3_after: SignedDuration::from_hours(24),
        }
    }
}

/// The fault grade of one probe result with the default escalation; `None` means no fault.
///
/// `failing_since` is when the probe first reported the current fault (failing, or ok with a
/// graded reading such as paper low); the caller keeps it across runs.
pub fn grade(
    kind: &str,
    severity: Severity,
    ok: bool,
    reading_level: Option<Grade>,
    failing_since: Option<Timestamp>,
    now: Timestamp,
) -> Option<Grade> {
    grade_with(
        &Escalation::default(),
        kind,
        severity,
        ok,
        reading_level,
        failing_since,
        now,
    )
}

/// `grade` with a contract's own escalation thresholds.
pub fn grade_with(
    esc: &Escalation,
    kind: &str,
    severity: Severity,
    ok: bool,
    reading_level: Option<Grade>,
    failing_since: Option<Timestamp>,
    now: Timestamp,
) -> Option<Grade> {
    let base = match (ok, reading_level) {
        (_, Some(g)) => g,
        (true, None) => return None,
        (false, None) => Grade::from_severity(severity),
    };
    if kind == "nut" {
        return Some(base);
    }
    let limit = match base {
        Grade::P2 => esc.p2_after,
        Grade::P3 => esc.p3_after,
        Grade::P1 | Grade::P4 => return Some(base),
    };
    // A clock stepped back makes the duration negative: that never escalates.
    match failing_since {
        Some(since) if now.duration_since(since) >= limit => Some(base.escalated()),
        _ => Some(base),
    }
}

/// What a consumable needs, so operations can send the right supplies before the kiosk stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupplyState {
    Low,
    Empty,
}

/// A consumable that needs attention: paper, toner, ink, a UPS battery to replace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumable {
    /// `paper`, `toner`, `ink`, `battery` or the device's own marker type.
    pub kind: String,
    /// The device's name for it (`Black Toner`), or the kind when the device gives none.
    pub name: String,
    pub state: SupplyState,
    /// Percent remaining when the device reports it.
    pub level: Option<u8>,
}

/// What a kiosk device probe (`ipp`, `nut`) found, interpreted: the daemon maps it onto a
/// `ProbeResult` and events without knowing the device's protocol.
///
/// `ok` is whether the device can do its job right now; a degraded but working device (paper
/// low, UPS on battery is the exception: see `nut`) is `ok` with a `level`, so the health report
/// shows the fault without raising a failure event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReading {
    pub ok: bool,
    /// The grade the device itself implies; feed it to `grade` as `reading_level`.
    pub level: Option<Grade>,
    /// One line for people: `idle; Black Toner 12% (low)`.
    pub detail: String,
    /// Structured figures for the platform (`markers`, `charge`, `runtime_s`, `status`, …).
    pub details: Value,
    /// Consumables that need replacing, worst first.
    pub consumables: Vec<Consumable>,
    /// The event code to raise when this reading turns the probe from ok to failing:
    /// `device.consumable` when the fault is an empty consumable, `probe.failed` otherwise.
    pub event_code: Option<&'static str>,
    /// Set by the UPS probe on low battery: the daemon should power off cleanly now (when
    /// `power.on_low_battery` is set) rather than let the battery die mid-transaction.
    pub power_off_recommended: bool,
}

impl DeviceReading {
    /// A device that could not be asked at all (unreachable, garbage answer, timeout).
    pub fn unreachable(level: Grade, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            level: Some(level),
            detail: detail.into(),
            details: Value::Object(Default::default()),
            consumables: Vec::new(),
            event_code: Some("probe.failed"),
            power_off_recommended: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn worst_first_is_an_ascending_sort() {
        let mut v = vec![Grade::P3, Grade::P1, Grade::P4, Grade::P2];
        v.sort();
        assert_eq!(v, vec![Grade::P1, Grade::P2, Grade::P3, Grade::P4]);
        let mut faults = vec![Some(Grade::P3), None, Some(Grade::P2)];
        faults.sort_by_key(|g| (g.is_none(), *g));
        assert_eq!(faults, vec![Some(Grade::P2), Some(Grade::P3), None]);
    }

    #[test]
    fn severity_sets_the_default_and_the_reading_wins() {
        let now = t("2026-03-02T00:00:00Z");
        assert_eq!(grade("usb", Severity::Major, true, None, None, now), None);
        assert_eq!(
            grade("usb", Severity::Critical, false, None, None, now),
            Some(Grade::P1)
        );
        assert_eq!(
            grade("usb", Severity::Info, false, None, None, now),
            Some(Grade::P4)
        );
        assert_eq!(
            grade("ipp", Severity::Critical, false, Some(Grade::P2), None, now),
            Some(Grade::P2)
        );
        assert_eq!(
            grade("ipp", Severity::Major, true, Some(Grade::P3), None, now),
            Some(Grade::P3),
            "paper low is a fault even though the printer works"
        );
    }

    #[test]
    fn a_fault_outliving_its_restore_target_escalates_once() {
        let now = t("2026-03-02T12:00:00Z");
        let p3 = |since: &str| {
            grade(
                "ipp",
                Severity::Major,
                true,
                Some(Grade::P3),
                Some(t(since)),
                now,
            )
        };
        assert_eq!(p3("2026-03-01T12:00:01Z"), Some(Grade::P3));
        assert_eq!(p3("2026-03-01T12:00:00Z"), Some(Grade::P2));
        assert_eq!(p3("2026-01-01T00:00:00Z"), Some(Grade::P2), "one step only");
        let p2 = |since: &str| grade("usb", Severity::Major, false, None, Some(t(since)), now);
        assert_eq!(p2("2026-03-02T04:00:01Z"), Some(Grade::P2));
        assert_eq!(p2("2026-03-02T04:00:00Z"), Some(Grade::P1));
        assert_eq!(
            grade(
                "usb",
                Severity::Info,
                false,
                None,
                Some(t("2020-01-01T00:00:00Z")),
                now
            ),
            Some(Grade::P4)
        );
        assert_eq!(
            grade(
                "nut",
                Severity::Major,
                false,
                Some(Grade::P3),
                Some(t("2026-02-01T00:00:00Z")),
                now
            ),
            Some(Grade::P3),
            "battery state escalates by itself"
        );
        assert_eq!(
            p3("2026-03-03T00:00:00Z"),
            Some(Grade::P3),
            "a clock stepped back never escalates"
        );
    }
}
