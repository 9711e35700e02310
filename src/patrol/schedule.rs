//! When the next patrol is due: a pure function of `now`, so DST, midnight and "the kiosk opens
//! in ten minutes" are unit tests rather than waits.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use super::PatrolError;
use crate::config::parse_hhmm;

/// The patrol time when neither `patrol.at` nor a power schedule says otherwise.
pub const DEFAULT_AT: &str = "07:30";
/// How long before the schedule's next power-on the patrol runs: the kiosk is up (woken
/// `power.wake_lead_minutes` early) but no citizen is using it yet.
pub const LEAD_BEFORE_ON_MINUTES: i64 = 30;

/// The next patrol strictly after `now`.
///
/// - `at` set (`HH:MM`): that local time in `tz`, daily.
/// - else with the schedule's `next_on`: 30 minutes before it. If that moment has already
///   passed (the daemon started, or the last patrol ran, inside those 30 minutes) the same
///   local time on a later day, so a finished patrol is never immediately due again; the
///   caller recomputes whenever `next_on` changes.
/// - else 07:30 local, daily.
///
/// A local time that falls in a DST gap is moved forward by the gap's length (jiff's
/// "compatible" rule), like every other local time the agent schedules.
pub fn next_patrol(
    now: Timestamp,
    at: Option<&str>,
    tz: &TimeZone,
    next_on: Option<Timestamp>,
) -> Result<Timestamp, PatrolError> {
    if let Some(at) = at {
        let minutes = parse_hhmm(at).ok_or_else(|| PatrolError::BadTime(at.to_string()))?;
        return daily_after(now, tz, minutes);
    }
    if let Some(on) = next_on {
        let lead = on.checked_sub(SignedDuration::from_mins(LEAD_BEFORE_ON_MINUTES))?;
        if lead > now {
            return Ok(lead);
        }
        let local = tz.to_datetime(lead);
        let minutes =
            u32::from(local.hour().unsigned_abs()) * 60 + u32::from(local.minute().unsigned_abs());
        return daily_after(now, tz, minutes);
    }
    let minutes = parse_hhmm(DEFAULT_AT).ok_or_else(|| PatrolError::BadTime(DEFAULT_AT.into()))?;
    daily_after(now, tz, minutes)
}

/// The first `minutes`-after-midnight local time strictly after `now`.
fn daily_after(now: Timestamp, tz: &TimeZone, minutes: u32) -> Result<Timestamp, PatrolError> {
    let time = Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0)?;
    let today = tz.to_datetime(now).date();
    // Two days always suffice: today's slot, or tomorrow's when today's has passed. A third
    // covers a slot pushed past midnight by a DST transition.
    for offset in 0..3i64 {
        let day = today.checked_add(offset.days())?;
        let t = tz.to_timestamp(day.to_datetime(time))?;
        if t > now {
            return Ok(t);
        }
    }
    Err(PatrolError::BadTime(format!(
        "{:02}:{:02}",
        minutes / 60,
        minutes % 60
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }
    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn configured_time_is_local_and_daily() {
        // 06:00 Shanghai on 3 March = 22:00 UTC on 2 March.
        let now = t("2026-03-02T22:00:00Z");
        assert_eq!(
            next_patrol(now, Some("07:00"), &sh(), None).unwrap(),
            t("2026-03-02T23:00:00Z")
        );
        // Exactly at the slot: the next one is tomorrow (strictly after now).
        assert_eq!(
            next_patrol(t("2026-03-02T23:00:00Z"), Some("07:00"), &sh(), None).unwrap(),
            t("2026-03-03T23:00:00Z")
        );
        // `at` wins over the schedule.
        assert_eq!(
            next_patrol(now, Some("07:00"), &sh(), Some(t("2026-03-03T00:30:00Z"))).unwrap(),
            t("2026-03-02T23:00:00Z")
        );
        assert!(matches!(
            next_patrol(now, Some("7:00"), &sh(), None),
            Err(PatrolError::BadTime(_))
        ));
    }

    #[test]
    fn default_is_thirty_minutes_before_next_on_else_0730() {
        let now = t("2026-03-02T22:00:00Z"); // 06:00 local
        // Opens 08:30 local → patrol 08:00 local.
        assert_eq!(
            next_patrol(now, None, &sh(), Some(t("2026-03-03T00:30:00Z"))).unwrap(),
            t("2026-03-03T00:00:00Z")
        );
        // Closed until Monday: the patrol waits for it too.
        assert_eq!(
            next_patrol(now, None, &sh(), Some(t("2026-03-06T01:00:00Z"))).unwrap(),
            t("2026-03-06T00:30:00Z")
        );
        // No schedule: 07:30 local.
        assert_eq!(
            next_patrol(now, None, &sh(), None).unwrap(),
            t("2026-03-02T23:30:00Z")
        );
        // 20:00 local: tomorrow 07:30.
        assert_eq!(
            next_patrol(t("2026-03-02T12:00:00Z"), None, &sh(), None).unwrap(),
            t("2026-03-02T23:30:00Z")
        );
    }

    #[test]
    fn inside_the_lead_window_the_patrol_is_not_due_again() {
        // 08:10 local, opening 08:30: the 08:00 patrol has run; next is tomorrow 08:00.
        let now = t("2026-03-03T00:10:00Z");
        assert_eq!(
            next_patrol(now, None, &sh(), Some(t("2026-03-03T00:30:00Z"))).unwrap(),
            t("2026-03-04T00:00:00Z")
        );
        // Just before the lead moment it is still today's.
        assert_eq!(
            next_patrol(
                t("2026-03-02T23:59:59Z"),
                None,
                &sh(),
                Some(t("2026-03-03T00:30:00Z"))
            )
            .unwrap(),
            t("2026-03-03T00:00:00Z")
        );
    }

    #[test]
    fn dst_gap_moves_forward() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // 29 March 2026: 02:00–03:00 local does not exist.
        let now = t("2026-03-28T23:00:00Z"); // 00:00 local
        assert_eq!(
            next_patrol(now, Some("02:30"), &berlin, None).unwrap(),
            t("2026-03-29T01:30:00Z") // 03:30 CEST
        );
    }
}
