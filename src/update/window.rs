//! The maintenance window: when switching a release is allowed.
//!
//! Pure functions of an instant and a time zone, so the decision is testable at any hour and
//! across DST changes; the caller owns the waiting. The zone is a parameter because the
//! window is written in the kiosk's local time and the daemon decides which zone that is.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::update::doc::Window;

fn bounds(w: &Window) -> Option<(u32, u32)> {
    Some((
        crate::config::parse_hhmm(&w.start)?,
        crate::config::parse_hhmm(&w.end)?,
    ))
}

/// True when `now`, read in `tz`, lies in `[start, end)`. An end before the start spans
/// midnight; equal ends mean the whole day. An unparsable window (never after validation)
/// counts as open rather than blocking an update forever.
pub fn in_window(w: &Window, now: Timestamp, tz: &TimeZone) -> bool {
    let Some((start, end)) = bounds(w) else {
        return true;
    };
    let local = now.to_zoned_datetime(tz.clone());
    let m = local.hour() as u32 * 60 + local.minute() as u32;
    match start.cmp(&end) {
        std::cmp::Ordering::Equal => true,
        std::cmp::Ordering::Less => start <= m && m < end,
        std::cmp::Ordering::Greater => m >= start || m < end,
    }
}

/// When the window next opens: `now` itself when it is open, otherwise the next local
/// `start` (a start inside a DST gap resolves to the instant after the gap).
pub fn next_opening(w: &Window, now: Timestamp, tz: &TimeZone) -> Timestamp {
    if in_window(w, now, tz) {
        return now;
    }
    let Some((start, _)) = bounds(w) else {
        return now;
    };
    let local = now.to_zoned_datetime(tz.clone());
    let (h, m) = ((start / 60) as i8, (start % 60) as i8);
    for days in 0..3i32 {
        let Ok(date) = local.date().checked_add(jiff::Span::new().days(days)) else {
            continue;
        };
        if let Ok(at) = date.at(h, m, 0, 0).to_zoned_datetime(tz.clone()) {
            if at.timestamp() > now {
                return at.timestamp();
            }
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str, e: &str) -> Window {
        Window {
            start: s.into(),
            end: e.into(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn window_in_local_time() {
        let sh = TimeZone::get("Asia/Shanghai").unwrap();
        let win = w("02:00", "05:00");
        // 03:00 Shanghai = 19:00Z the day before.
        assert!(in_window(&win, at("2026-03-01T19:00:00Z"), &sh));
        assert!(!in_window(&win, at("2026-03-01T03:00:00Z"), &sh));
        assert!(
            !in_window(&win, at("2026-03-01T21:00:00Z"), &sh),
            "05:00 is closed"
        );
        assert!(in_window(&win, at("2026-03-01T03:00:00Z"), &TimeZone::UTC));
    }

    #[test]
    fn window_across_midnight_and_whole_day() {
        let utc = TimeZone::UTC;
        let night = w("23:00", "01:00");
        assert!(in_window(&night, at("2026-03-01T23:30:00Z"), &utc));
        assert!(in_window(&night, at("2026-03-02T00:30:00Z"), &utc));
        assert!(!in_window(&night, at("2026-03-02T01:00:00Z"), &utc));
        assert!(in_window(
            &w("04:00", "04:00"),
            at("2026-03-02T12:00:00Z"),
            &utc
        ));
    }

    #[test]
    fn next_opening_today_or_tomorrow() {
        let utc = TimeZone::UTC;
        let win = w("02:00", "05:00");
        assert_eq!(
            next_opening(&win, at("2026-03-01T01:00:00Z"), &utc),
            at("2026-03-01T02:00:00Z")
        );
        assert_eq!(
            next_opening(&win, at("2026-03-01T06:00:00Z"), &utc),
            at("2026-03-02T02:00:00Z")
        );
        assert_eq!(
            next_opening(&win, at("2026-03-01T03:00:00Z"), &utc),
            at("2026-03-01T03:00:00Z")
        );
        // 02:30 on the spring-forward night in New York does not exist: opens right after the gap.
        let ny = TimeZone::get("America/New_York").unwrap();
        let dst = w("02:30", "04:00");
        assert_eq!(
            next_opening(&dst, at("2026-03-08T05:00:00Z"), &ny),
            at("2026-03-08T07:30:00Z")
        );
    }

    #[test]
    fn waiting_window_report_says_when() {
        let v = serde_json::json!({
            "kind": "app", "version": 3, "target": "all", "issued_at": "2026-03-01T00:00:00Z",
            "name": "kiosk-ui", "release": "2.4.0",
            "artifact": {"url": "file:///x", "sha256": "a".repeat(64), "size": 1, "format": "file"},
            "window": {"start": "02:00", "end": "05:00"}
        });
        let doc = crate::update::AppDoc::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        let w = doc.window.clone().unwrap();
        let now = at("2026-03-01T12:00:00Z");
        let p =
            crate::update::Progress::waiting_window(&doc, next_opening(&w, now, &TimeZone::UTC));
        assert_eq!(p.status, crate::update::Status::WaitingWindow);
        assert!(p.message.contains("02:00-05:00"), "{}", p.message);
        assert!(p.message.contains("2026-03-02T02:00:00Z"), "{}", p.message);
    }
}
