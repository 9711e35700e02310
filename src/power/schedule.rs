//! The opening-hours calendar of a kiosk, as a pure function of an instant.
//!
//! Everything here is computed from `(schedule, now)` so the planner, `kioskctl schedule`,
//! the patrol report and the tests all agree on what "the next on" means. Local times are
//! turned into instants through the schedule's own IANA zone (jiff), never through the host's
//! zone, because a fleet's machines are not all set up alike.
//!
//! Rules: a `dates` entry replaces the weekly window for that civil date; an `off` earlier than
//! `on` ends on the next day; a window belongs to the civil date it starts on (a `closed` date
//! does not cut short the previous evening's window that runs past midnight); windows that touch
//! or overlap are one on-period. A local time that does not exist (DST gap) is moved forward,
//! an ambiguous one (DST fold) takes the earlier instant, as RFC 5545 / Temporal "compatible".

use std::collections::BTreeMap;

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::parse_hhmm;
use crate::host::rfc3339;

/// How far `next_on`/`next_off` look. A year plus a margin, so a kiosk closed for a long
/// holiday season still learns when it opens again.
pub const LOOKAHEAD_DAYS: usize = 400;

/// A warning longer than a day would be announced before the previous window even opened.
const MAX_WARN_MINUTES: u64 = 24 * 60;

const DEFAULT_WARN_MINUTES: u32 = 10;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Why a schedule document was refused. Every variant names the field at fault so the
/// operator reading `reported/schedule` can fix the document without guessing.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule is not a valid document: {0}")]
    Json(#[source] serde_json::Error),
    #[error("schedule `kind`: {0:?} is not \"schedule\"")]
    WrongKind(String),
    #[error("schedule `timezone`: unknown time zone {name:?}")]
    UnknownZone { name: String },
    #[error("schedule `{field}`: {value:?} is not a time of day (HH:MM, 00:00 to 23:59)")]
    BadTime { field: String, value: String },
    #[error(
        "schedule `{field}`: unknown weekday {value:?} (expected mon, tue, wed, thu, fri, sat or sun)"
    )]
    UnknownDay { field: String, value: String },
    #[error("schedule `{field}`: {day} already has a window in weekly[{first}]")]
    DuplicateDay {
        field: String,
        day: String,
        first: usize,
    },
    #[error("schedule `{field}`: {value:?} is not a calendar date (YYYY-MM-DD)")]
    BadDate { field: String, value: String },
    #[error("schedule `{field}`: {date} is listed more than once")]
    DuplicateDate { field: String, date: String },
    #[error("schedule `{field}`: `on` and `off` are both {value}; a window needs a length")]
    EmptyWindow { field: String, value: String },
    #[error("schedule `{field}`: {reason}")]
    BadEntry { field: String, reason: &'static str },
    #[error(
        "schedule `off_action`: unknown action {value:?} (expected poweroff, display_off or none)"
    )]
    UnknownOffAction { value: String },
    #[error("schedule `warn_minutes`: {value} is more than a day")]
    WarnTooLong { value: u64 },
}

/// What happens at the end of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffAction {
    Poweroff,
    DisplayOff,
    None,
}

impl OffAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::DisplayOff => "display_off",
            Self::None => "none",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "poweroff" => Some(Self::Poweroff),
            "display_off" => Some(Self::DisplayOff),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// One opening window in local minutes after midnight. `off < on` means it ends the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    on: u32,
    off: u32,
}

impl Window {
    fn ends_next_day(self) -> bool {
        self.off < self.on
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatePlan {
    Closed,
    Open(Window),
}

/// Where a day's plan came from, for display: technicians ask "why is it closed today?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSource {
    Weekly,
    Date,
    None,
}

/// One civil day of the calendar as `kioskctl schedule` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayWindow {
    /// `YYYY-MM-DD` in the schedule's zone.
    pub date: String,
    /// `mon` … `sun`.
    pub weekday: String,
    /// Local `HH:MM`; absent on a day without a window.
    pub on: Option<String>,
    pub off: Option<String>,
    /// The window ends on the following civil date.
    pub ends_next_day: bool,
    /// A `dates` entry closed this day.
    pub closed: bool,
    pub source: WindowSource,
    /// The same window as UTC instants, after DST resolution.
    pub on_at: Option<String>,
    pub off_at: Option<String>,
}

/// The part of a schedule worth showing in a status line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSummary {
    pub version: Option<u64>,
    pub target: Option<String>,
    pub issued_at: Option<String>,
    pub timezone: String,
    pub off_action: OffAction,
    pub warn_minutes: u32,
    pub weekly_days: usize,
    pub dates: usize,
}

/// A validated schedule. Only `parse` builds one, so every instance is usable as is.
#[derive(Debug, Clone)]
pub struct Schedule {
    version: Option<u64>,
    target: Option<String>,
    issued_at: Option<String>,
    timezone: String,
    tz: TimeZone,
    /// Indexed Monday = 0.
    weekly: [Option<Window>; 7],
    dates: BTreeMap<Date, DatePlan>,
    off_action: OffAction,
    warn_minutes: u32,
}

#[derive(Deserialize)]
struct RawSchedule {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    issued_at: Option<String>,
    timezone: String,
    #[serde(default)]
    weekly: Vec<RawWeekly>,
    #[serde(default)]
    dates: Vec<RawDate>,
    #[serde(default)]
    off_action: Option<String>,
    #[serde(default)]
    warn_minutes: Option<u64>,
}

#[derive(Deserialize)]
struct RawWeekly {
    days: Vec<String>,
    on: String,
    off: String,
}

#[derive(Deserialize)]
struct RawDate {
    date: String,
    #[serde(default)]
    closed: bool,
    #[serde(default)]
    on: Option<String>,
    #[serde(default)]
    off: Option<String>,
}

fn time_field(field: String, value: &str) -> Result<u32, ScheduleError> {
    parse_hhmm(value).ok_or_else(|| ScheduleError::BadTime {
        field,
        value: value.to_string(),
    })
}

fn window(prefix: &str, on: &str, off: &str) -> Result<Window, ScheduleError> {
    let w = Window {
        on: time_field(format!("{prefix}.on"), on)?,
        off: time_field(format!("{prefix}.off"), off)?,
    };
    if w.on == w.off {
        return Err(ScheduleError::EmptyWindow {
            field: prefix.to_string(),
            value: on.to_string(),
        });
    }
    Ok(w)
}

/// Strict `YYYY-MM-DD`: jiff's own parser also accepts full timestamps, which would let a
/// typo like `2026-10-01T00:00+08` pass as a date.
fn parse_date(field: &str, s: &str) -> Result<Date, ScheduleError> {
    let bad = || ScheduleError::BadDate {
        field: field.to_string(),
        value: s.to_string(),
    };
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err(bad());
    }
    let y: i16 = s[0..4].parse().map_err(|_| bad())?;
    let m: i8 = s[5..7].parse().map_err(|_| bad())?;
    let d: i8 = s[8..10].parse().map_err(|_| bad())?;
    Date::new(y, m, d).map_err(|_| bad())
}

fn fmt_hhmm(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

fn at_minutes(date: Date, minutes: u32) -> DateTime {
    // Both values are below 24 and 60 by construction (parse_hhmm), so the casts are lossless.
    date.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0)
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

impl Schedule {
    /// Validates a whole document; any fault refuses it whole so a half-understood calendar
    /// never powers a kiosk off in the middle of a working day.
    pub fn parse(payload: &[u8]) -> Result<Schedule, ScheduleError> {
        let raw: RawSchedule = serde_json::from_slice(payload).map_err(ScheduleError::Json)?;
        if let Some(kind) = &raw.kind
            && kind != "schedule"
        {
            return Err(ScheduleError::WrongKind(kind.clone()));
        }
        let tz = TimeZone::get(&raw.timezone).map_err(|_| ScheduleError::UnknownZone {
            name: raw.timezone.clone(),
        })?;

        let mut weekly: [Option<Window>; 7] = [None; 7];
        let mut owner: [Option<usize>; 7] = [None; 7];
        for (i, entry) in raw.weekly.iter().enumerate() {
            let prefix = format!("weekly[{i}]");
            if entry.days.is_empty() {
                return Err(ScheduleError::BadEntry {
                    field: format!("{prefix}.days"),
                    reason: "lists no day",
                });
            }
            let w = window(&prefix, &entry.on, &entry.off)?;
            for (j, day) in entry.days.iter().enumerate() {
                let field = format!("{prefix}.days[{j}]");
                let idx = DAY_NAMES.iter().position(|d| d == day).ok_or_else(|| {
                    ScheduleError::UnknownDay {
                        field: field.clone(),
                        value: day.clone(),
                    }
                })?;
                if let Some(first) = owner[idx] {
                    return Err(ScheduleError::DuplicateDay {
                        field,
                        day: day.clone(),
                        first,
                    });
                }
                owner[idx] = Some(i);
                weekly[idx] = Some(w);
            }
        }

        let mut dates = BTreeMap::new();
        for (i, entry) in raw.dates.iter().enumerate() {
            let prefix = format!("dates[{i}]");
            let date = parse_date(&format!("{prefix}.date"), &entry.date)?;
            let plan = match (entry.closed, &entry.on, &entry.off) {
                (true, None, None) => DatePlan::Closed,
                (true, _, _) => {
                    return Err(ScheduleError::BadEntry {
                        field: prefix,
                        reason: "a closed date cannot also have `on`/`off`",
                    });
                }
                (false, Some(on), Some(off)) => DatePlan::Open(window(&prefix, on, off)?),
                (false, _, _) => {
                    return Err(ScheduleError::BadEntry {
                        field: prefix,
                        reason: "needs either `closed: true` or both `on` and `off`",
                    });
                }
            };
            if dates.insert(date, plan).is_some() {
                return Err(ScheduleError::DuplicateDate {
                    field: format!("{prefix}.date"),
                    date: entry.date.clone(),
                });
            }
        }

        let off_action = match raw.off_action.as_deref() {
            None => OffAction::Poweroff,
            Some(s) => OffAction::parse(s).ok_or_else(|| ScheduleError::UnknownOffAction {
                value: s.to_string(),
            })?,
        };
        let warn_minutes = match raw.warn_minutes {
            None => DEFAULT_WARN_MINUTES,
            Some(v) if v > MAX_WARN_MINUTES => return Err(ScheduleError::WarnTooLong { value: v }),
            Some(v) => v as u32,
        };

        Ok(Schedule {
            version: raw.version,
            target: raw.target,
            issued_at: raw.issued_at,
            timezone: raw.timezone,
            tz,
            weekly,
            dates,
            off_action,
            warn_minutes,
        })
    }

    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    pub fn off_action(&self) -> OffAction {
        self.off_action
    }

    pub fn warn_minutes(&self) -> u32 {
        self.warn_minutes
    }

    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn summary(&self) -> ScheduleSummary {
        ScheduleSummary {
            version: self.version,
            target: self.target.clone(),
            issued_at: self.issued_at.clone(),
            timezone: self.timezone.clone(),
            off_action: self.off_action,
            warn_minutes: self.warn_minutes,
            weekly_days: self.weekly.iter().filter(|w| w.is_some()).count(),
            dates: self.dates.len(),
        }
    }

    /// The civil date an instant falls on in the schedule's zone.
    pub fn local_date(&self, now: Timestamp) -> Date {
        self.tz.to_datetime(now).date()
    }

    fn plan(&self, date: Date) -> (Option<Window>, WindowSource, bool) {
        match self.dates.get(&date) {
            Some(DatePlan::Closed) => (None, WindowSource::Date, true),
            Some(DatePlan::Open(w)) => (Some(*w), WindowSource::Date, false),
            None => match self.weekly[weekday_index(date.weekday())] {
                Some(w) => (Some(w), WindowSource::Weekly, false),
                None => (None, WindowSource::None, false),
            },
        }
    }

    /// The window starting on `date` as instants; `None` when there is none, or when DST
    /// resolution left its end no later than its start (never a negative-length period).
    fn interval(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        let w = self.plan(date).0?;
        let start = self.tz.to_timestamp(at_minutes(date, w.on)).ok()?;
        let end_date = if w.ends_next_day() {
            date.tomorrow().ok()?
        } else {
            date
        };
        let end = self.tz.to_timestamp(at_minutes(end_date, w.off)).ok()?;
        (end > start).then_some((start, end))
    }

    /// On-periods in order, touching or overlapping windows merged, for the `days` civil dates
    /// starting at `from`.
    fn periods(
        &self,
        from: Date,
        days: usize,
    ) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let mut raw = std::iter::successors(Some(from), |d| d.tomorrow().ok())
            .take(days)
            .filter_map(|d| self.interval(d))
            .peekable();
        std::iter::from_fn(move || {
            let (start, mut end) = raw.next()?;
            while let Some(&(s, e)) = raw.peek() {
                if s > end {
                    break;
                }
                end = end.max(e);
                raw.next();
            }
            Some((start, end))
        })
    }

    /// Periods that can contain or follow `now`. Starting two days back catches an overnight
    /// window from the previous evening, with a day of margin for DST shifts.
    fn periods_around(&self, now: Timestamp) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let today = self.local_date(now);
        let from = today
            .checked_sub(jiff::Span::new().days(2))
            .unwrap_or(today);
        self.periods(from, LOOKAHEAD_DAYS + 3)
    }

    /// Whether the kiosk should be on at `now`.
    pub fn is_on(&self, now: Timestamp) -> bool {
        self.periods_around(now)
            .take_while(|&(s, _)| s <= now)
            .any(|(s, e)| s <= now && now < e)
    }

    /// The next off→on transition strictly after `now`.
    pub fn next_on(&self, now: Timestamp) -> Option<Timestamp> {
        self.periods_around(now).map(|(s, _)| s).find(|&s| s > now)
    }

    /// The next on→off transition strictly after `now`.
    pub fn next_off(&self, now: Timestamp) -> Option<Timestamp> {
        self.periods_around(now).map(|(_, e)| e).find(|&e| e > now)
    }

    /// The plan of `days` civil dates from `from`, in local time.
    pub fn windows(&self, from: Date, days: usize) -> Vec<DayWindow> {
        std::iter::successors(Some(from), |d| d.tomorrow().ok())
            .take(days)
            .map(|date| {
                let (w, source, closed) = self.plan(date);
                let at = self.interval(date);
                DayWindow {
                    date: date.to_string(),
                    weekday: DAY_NAMES[weekday_index(date.weekday())].to_string(),
                    on: w.map(|w| fmt_hhmm(w.on)),
                    off: w.map(|w| fmt_hhmm(w.off)),
                    ends_next_day: w.is_some_and(Window::ends_next_day),
                    closed,
                    source,
                    on_at: at.map(|(s, _)| rfc3339(s)),
                    off_at: at.map(|(_, e)| rfc3339(e)),
                }
            })
            .collect()
    }
}

/// `t - minutes`, saturating at the representable range instead of failing: used for warning
/// and wake instants, which are never near the edges in practice.
pub(crate) fn minus_minutes(t: Timestamp, minutes: u64) -> Timestamp {
    let secs = i64::try_from(minutes.saturating_mul(60)).unwrap_or(i64::MAX);
    t.checked_sub(SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sched(v: serde_json::Value) -> Schedule {
        Schedule::parse(v.to_string().as_bytes()).unwrap()
    }

    fn err(v: serde_json::Value) -> ScheduleError {
        Schedule::parse(v.to_string().as_bytes()).unwrap_err()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    // ---- an independent calendar model, with no time-zone library involved ----

    /// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (
            if m <= 2 {
                yoe + era * 400 + 1
            } else {
                yoe + era * 400
            },
            m,
            d,
        )
    }

    /// Shenzhen office hours for a civil day (days since epoch), in local minutes:
    /// Mon–Fri 09:00–18:00, Sat 09:00–12:00, holidays closed, make-up days full days.
    fn shenzhen_expected(
        day: i64,
        closed: &[(i64, i64, i64)],
        makeup: &[(i64, i64, i64)],
    ) -> Option<(i64, i64)> {
        let ymd = civil_from_days(day);
        if closed.contains(&ymd) {
            return None;
        }
        if makeup.contains(&ymd) {
            return Some((9 * 60, 18 * 60));
        }
        // 1970-01-01 was a Thursday; 0 = Monday.
        match (day + 3).rem_euclid(7) {
            0..=4 => Some((9 * 60, 18 * 60)),
            5 => Some((9 * 60, 12 * 60)),
            _ => None,
        }
    }

    const CLOSED_2026: &[(i64, i64, i64)] = &[
        (2026, 1, 1),
        (2026, 1, 2),
        (2026, 1, 3),
        (2026, 2, 16),
        (2026, 2, 17),
        (2026, 2, 18),
        (2026, 2, 19),
        (2026, 2, 20),
        (2026, 5, 1),
        (2026, 5, 4),
        (2026, 5, 5),
        (2026, 10, 1),
        (2026, 10, 2),
        (2026, 10, 3),
        (2026, 10, 4),
        (2026, 10, 5),
        (2026, 10, 6),
        (2026, 10, 7),
        (2027, 1, 1),
    ];
    const MAKEUP_2026: &[(i64, i64, i64)] = &[
        (2026, 1, 4),
        (2026, 2, 14),
        (2026, 5, 9),
        (2026, 9, 27),
        (2026, 10, 10),
    ];

    fn shenzhen_doc() -> serde_json::Value {
        let mut dates: Vec<serde_json::Value> = CLOSED_2026
            .iter()
            .map(|(y, m, d)| json!({"date": format!("{y:04}-{m:02}-{d:02}"), "closed": true}))
            .collect();
        dates.extend(
            MAKEUP_2026
                .iter()
                .map(|(y, m, d)| json!({"date": format!("{y:04}-{m:02}-{d:02}"), "on": "09:00", "off": "18:00"})),
        );
        json!({
            "kind": "schedule", "version": 7, "target": "g/futian", "issued_at": "2025-12-20T02:00:00Z",
            "timezone": "Asia/Shanghai",
            "weekly": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "on": "09:00", "off": "18:00"},
                {"days": ["sat"], "on": "09:00", "off": "12:00"}
            ],
            "dates": dates,
            "off_action": "poweroff", "warn_minutes": 10
        })
    }

    /// Local minute `m` of civil day `day` in UTC+8, as a Timestamp, without jiff's tz code.
    fn cst(day: i64, m: i64) -> Timestamp {
        Timestamp::from_second(day * 86_400 + m * 60 - 8 * 3600).unwrap()
    }

    #[test]
    fn shenzhen_year_every_day_matches_an_independent_calendar() {
        let s = sched(shenzhen_doc());
        let first = days_from_civil(2026, 1, 1);
        let last = days_from_civil(2026, 12, 31);
        // Expected on-periods from the model, far enough to answer for Dec 31.
        let periods: Vec<(Timestamp, Timestamp)> = (first - 3..=last + 40)
            .filter_map(|d| {
                shenzhen_expected(d, CLOSED_2026, MAKEUP_2026)
                    .map(|(on, off)| (cst(d, on), cst(d, off)))
            })
            .collect();
        let exp_on = |t: Timestamp| periods.iter().any(|&(a, b)| a <= t && t < b);
        let exp_next_on = |t: Timestamp| periods.iter().map(|p| p.0).find(|&a| a > t);
        let exp_next_off = |t: Timestamp| periods.iter().map(|p| p.1).find(|&b| b > t);

        let mut open_days = 0;
        for day in first..=last {
            if shenzhen_expected(day, CLOSED_2026, MAKEUP_2026).is_some() {
                open_days += 1;
            }
            for m in [
                0,
                8 * 60 + 59,
                9 * 60,
                11 * 60 + 59,
                12 * 60,
                17 * 60 + 59,
                18 * 60,
                23 * 60 + 59,
            ] {
                let t = cst(day, m);
                let at = civil_from_days(day);
                assert_eq!(s.is_on(t), exp_on(t), "is_on {at:?} minute {m}");
                assert_eq!(s.next_on(t), exp_next_on(t), "next_on {at:?} minute {m}");
                assert_eq!(s.next_off(t), exp_next_off(t), "next_off {at:?} minute {m}");
            }
        }
        // The model is the reference; this only guards against a model that opens nowhere.
        assert!(open_days > 280, "{open_days}");
    }

    #[test]
    fn national_day_closure_and_make_up_days() {
        let s = sched(shenzhen_doc());
        // Wed 2026-09-30 18:00 local: the next opening is Thu 2026-10-08, not during the closure.
        assert_eq!(
            s.next_on(ts("2026-09-30T10:00:00Z")),
            Some(ts("2026-10-08T01:00:00Z"))
        );
        // Sun 2026-09-27 is a make-up working day.
        assert!(s.is_on(ts("2026-09-27T05:00:00Z")));
        assert_eq!(
            s.next_off(ts("2026-09-27T05:00:00Z")),
            Some(ts("2026-09-27T10:00:00Z"))
        );
        // Sat 2026-10-10 runs a full day instead of the Saturday morning.
        assert!(s.is_on(ts("2026-10-10T09:00:00Z")));
        // An ordinary Saturday closes at noon.
        assert!(!s.is_on(ts("2026-10-17T05:00:00Z")));
        let w = s.windows(Date::constant(2026, 9, 30), 11);
        assert_eq!(w.len(), 11);
        assert_eq!(w[0].on.as_deref(), Some("09:00"));
        assert_eq!(w[0].source, WindowSource::Weekly);
        assert!(w[1].closed && w[1].on.is_none() && w[1].source == WindowSource::Date);
        assert_eq!(w[8].date, "2026-10-08");
        assert_eq!(w[8].weekday, "thu");
        assert_eq!(w[8].on_at.as_deref(), Some("2026-10-08T01:00:00Z"));
        assert_eq!(
            (w[10].off.as_deref(), w[10].source),
            (Some("18:00"), WindowSource::Date)
        );
        let sum = s.summary();
        assert_eq!(
            (sum.version, sum.weekly_days, sum.off_action),
            (Some(7), 6, OffAction::Poweroff)
        );
    }

    #[test]
    fn window_past_midnight_ends_the_next_day() {
        let s = sched(json!({
            "timezone": "Asia/Shanghai",
            "weekly": [{"days": ["fri", "sat"], "on": "08:00", "off": "01:00"}],
            "dates": [{"date": "2026-10-17", "closed": true}]
        }));
        // Fri 2026-10-16 10:00 local.
        let fri = ts("2026-10-16T02:00:00Z");
        assert!(s.is_on(fri));
        assert_eq!(s.next_off(fri), Some(ts("2026-10-16T17:00:00Z"))); // Sat 01:00 local
        // Sat 00:30 local still belongs to Friday's window, although Saturday is closed.
        assert!(s.is_on(ts("2026-10-16T16:30:00Z")));
        assert!(!s.is_on(ts("2026-10-16T17:00:00Z")));
        // Saturday closed: next opening is Fri 2026-10-23 08:00 local.
        assert_eq!(
            s.next_on(ts("2026-10-16T17:00:00Z")),
            Some(ts("2026-10-23T00:00:00Z"))
        );
        let w = s.windows(Date::constant(2026, 10, 16), 1);
        assert!(w[0].ends_next_day);
        assert_eq!(w[0].off_at.as_deref(), Some("2026-10-16T17:00:00Z"));
    }

    #[test]
    fn touching_windows_are_one_on_period() {
        let s = sched(json!({
            "timezone": "Asia/Shanghai",
            "weekly": [{"days": ["mon"], "on": "20:00", "off": "00:00"}, {"days": ["tue"], "on": "00:00", "off": "02:00"}]
        }));
        // Mon 2026-10-12 21:00 local: no off at midnight, the next off is Tue 02:00.
        let t = ts("2026-10-12T13:00:00Z");
        assert_eq!(s.next_off(t), Some(ts("2026-10-12T18:00:00Z")));
        assert_eq!(s.next_on(t), Some(ts("2026-10-19T12:00:00Z")));
    }

    #[test]
    fn empty_week_has_no_transitions() {
        let s = sched(json!({"timezone": "Asia/Shanghai", "weekly": [], "off_action": "none"}));
        let t = ts("2026-06-01T00:00:00Z");
        assert!(!s.is_on(t));
        assert_eq!((s.next_on(t), s.next_off(t)), (None, None));
        assert!(
            s.windows(Date::constant(2026, 6, 1), 7)
                .iter()
                .all(|w| w.on.is_none() && !w.closed)
        );
        // Only dates: transitions exist until the last one.
        let s = sched(
            json!({"timezone": "Asia/Shanghai", "dates": [{"date": "2026-06-03", "on": "10:00", "off": "11:00"}]}),
        );
        assert_eq!(s.next_on(t), Some(ts("2026-06-03T02:00:00Z")));
        assert_eq!(s.next_on(ts("2026-06-03T02:00:00Z")), None);
        assert_eq!(
            s.next_off(ts("2026-06-03T02:00:00Z")),
            Some(ts("2026-06-03T03:00:00Z"))
        );
    }

    #[test]
    fn berlin_dst_days_resolve_without_panicking() {
        let s = sched(json!({
            "timezone": "Europe/Berlin",
            "weekly": [{"days": ["mon","tue","wed","thu","fri","sat","sun"], "on": "02:30", "off": "23:00"}]
        }));
        // Spring forward, Sun 2026-03-29: 02:30 does not exist and moves forward to 03:30 CEST.
        assert_eq!(
            s.next_on(ts("2026-03-29T00:00:00Z")),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            s.windows(Date::constant(2026, 3, 29), 1)[0]
                .on_at
                .as_deref(),
            Some("2026-03-29T01:30:00Z")
        );
        // Fall back, Sun 2026-10-25: 02:30 happens twice; the earlier (CEST) one is used.
        assert_eq!(
            s.next_on(ts("2026-10-25T00:10:00Z")),
            Some(ts("2026-10-25T00:30:00Z"))
        );
        // Every hour of the year answers, and answers consistently.
        let mut t = ts("2026-01-01T00:00:00Z");
        let end = ts("2027-01-01T00:00:00Z");
        while t < end {
            let on = s.next_on(t).unwrap();
            let off = s.next_off(t).unwrap();
            assert!(on > t && off > t);
            assert_eq!(s.is_on(t), off < on, "at {t}");
            t = t.checked_add(SignedDuration::from_hours(1)).unwrap();
        }
    }

    #[test]
    fn windows_touching_dst_gaps_keep_a_real_length() {
        // Saturday evening until a nonexistent 02:30 on Sunday: ends at 03:30 CEST.
        let s = sched(
            json!({"timezone": "Europe/Berlin", "dates": [{"date": "2026-03-28", "on": "22:00", "off": "02:30"}]}),
        );
        assert_eq!(
            s.next_off(ts("2026-03-28T22:00:00Z")),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        assert!(s.is_on(ts("2026-03-29T01:00:00Z")));
        // Both ends inside the gap: both move forward by the same hour.
        let s = sched(
            json!({"timezone": "Europe/Berlin", "dates": [{"date": "2026-03-29", "on": "02:10", "off": "02:50"}]}),
        );
        assert_eq!(
            s.next_on(ts("2026-03-28T00:00:00Z")),
            Some(ts("2026-03-29T01:10:00Z"))
        );
        assert_eq!(
            s.next_off(ts("2026-03-28T00:00:00Z")),
            Some(ts("2026-03-29T01:50:00Z"))
        );
    }

    #[test]
    fn the_bundled_zone_database_knows_the_fleet_zones() {
        // The agent must still understand zones on a host without /usr/share/zoneinfo.
        let db = jiff::tz::TimeZoneDatabase::bundled();
        assert!(db.get("Asia/Shanghai").is_ok());
        assert!(db.get("Europe/Berlin").is_ok());
    }

    #[test]
    fn invalid_documents_are_refused_whole_naming_the_field() {
        let base = || json!({"timezone": "Asia/Shanghai", "weekly": [{"days": ["mon"], "on": "08:00", "off": "18:00"}]});
        let with = |k: &str, v: serde_json::Value| {
            let mut d = base();
            d[k] = v;
            d
        };
        let e = err(with("timezone", json!("Asia/Shenzhen")));
        assert!(
            matches!(&e, ScheduleError::UnknownZone { name } if name == "Asia/Shenzhen"),
            "{e}"
        );
        assert!(e.to_string().contains("`timezone`"));

        let e = err(with(
            "weekly",
            json!([{"days": ["mon"], "on": "25:00", "off": "18:00"}]),
        ));
        assert!(
            matches!(&e, ScheduleError::BadTime { field, .. } if field == "weekly[0].on"),
            "{e}"
        );
        let e = err(with(
            "weekly",
            json!([{"days": ["mon"], "on": "8:00", "off": "18:00"}]),
        ));
        assert!(matches!(e, ScheduleError::BadTime { .. }));

        let e = err(with(
            "weekly",
            json!([{"days": ["mon", "funday"], "on": "08:00", "off": "18:00"}]),
        ));
        assert!(
            matches!(&e, ScheduleError::UnknownDay { field, value } if field == "weekly[0].days[1]" && value == "funday"),
            "{e}"
        );
        let e = err(with(
            "weekly",
            json!([{"days": ["Mon"], "on": "08:00", "off": "18:00"}]),
        ));
        assert!(matches!(e, ScheduleError::UnknownDay { .. }));
        let e = err(with(
            "weekly",
            json!([{"days": [], "on": "08:00", "off": "18:00"}]),
        ));
        assert!(matches!(e, ScheduleError::BadEntry { .. }));
        let e = err(with(
            "weekly",
            json!([{"days": ["mon"], "on": "08:00", "off": "18:00"}, {"days": ["tue", "mon"], "on": "09:00", "off": "10:00"}]),
        ));
        assert!(
            matches!(&e, ScheduleError::DuplicateDay { field, first: 0, .. } if field == "weekly[1].days[1]"),
            "{e}"
        );

        let e = err(with(
            "weekly",
            json!([{"days": ["mon"], "on": "08:00", "off": "08:00"}]),
        ));
        assert!(
            matches!(&e, ScheduleError::EmptyWindow { field, .. } if field == "weekly[0]"),
            "{e}"
        );

        for bad in [
            "2026-02-30",
            "2026-13-01",
            "26-10-01",
            "2026-10-01T00:00:00Z",
            "2026/10/01",
            "2026-1-01",
        ] {
            let e = err(with("dates", json!([{"date": bad, "closed": true}])));
            assert!(
                matches!(&e, ScheduleError::BadDate { field, .. } if field == "dates[0].date"),
                "{bad}: {e}"
            );
        }
        let e = err(with(
            "dates",
            json!([{"date": "2026-10-01", "closed": true}, {"date": "2026-10-01", "closed": true}]),
        ));
        assert!(matches!(e, ScheduleError::DuplicateDate { .. }));
        let e = err(with(
            "dates",
            json!([{"date": "2026-10-01", "closed": true, "on": "09:00", "off": "10:00"}]),
        ));
        assert!(matches!(e, ScheduleError::BadEntry { .. }));
        let e = err(with(
            "dates",
            json!([{"date": "2026-10-01", "on": "09:00"}]),
        ));
        assert!(matches!(&e, ScheduleError::BadEntry { field, .. } if field == "dates[0]"));
        let e = err(with(
            "dates",
            json!([{"date": "2026-10-01", "on": "09:00", "off": "09:00"}]),
        ));
        assert!(matches!(e, ScheduleError::EmptyWindow { .. }));

        let e = err(with("off_action", json!("hibernate")));
        assert!(
            matches!(&e, ScheduleError::UnknownOffAction { value } if value == "hibernate"),
            "{e}"
        );
        assert!(e.to_string().contains("`off_action`"));
        assert!(matches!(
            err(with("warn_minutes", json!(5000))),
            ScheduleError::WarnTooLong { .. }
        ));
        assert!(matches!(
            err(with("warn_minutes", json!(-1))),
            ScheduleError::Json(_)
        ));
        assert!(matches!(
            err(with("kind", json!("policy"))),
            ScheduleError::WrongKind(_)
        ));
        assert!(matches!(err(json!({"weekly": []})), ScheduleError::Json(_)));
        assert!(matches!(
            Schedule::parse(b"\xff{"),
            Err(ScheduleError::Json(_))
        ));
    }

    #[test]
    fn defaults_and_minus_minutes() {
        let s = sched(json!({"timezone": "UTC"}));
        assert_eq!(
            (s.off_action(), s.warn_minutes(), s.timezone()),
            (OffAction::Poweroff, 10, "UTC")
        );
        assert_eq!(
            minus_minutes(ts("2026-10-12T01:00:00Z"), 5),
            ts("2026-10-12T00:55:00Z")
        );
        assert_eq!(
            minus_minutes(ts("2026-10-12T01:00:00Z"), u64::MAX),
            Timestamp::MIN
        );
    }
}
