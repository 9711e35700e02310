//! Pure aggregation of usage records into periods of local hours. No clock, no disk: every
//! function takes `now` and the zone, so hour and day boundaries are tested at chosen instants.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// How one citizen's session with a service item ended. Nothing else about it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Completed,
    Abandoned,
    Failed,
}

/// Counts of one item in one period (or one day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub completed: u64,
    pub abandoned: u64,
    pub failed: u64,
    /// Sum of `duration_s` over every outcome.
    pub duration_s_total: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome, duration_s: u64) {
        let n = match outcome {
            Outcome::Completed => &mut self.completed,
            Outcome::Abandoned => &mut self.abandoned,
            Outcome::Failed => &mut self.failed,
        };
        *n = n.saturating_add(1);
        self.duration_s_total = self.duration_s_total.saturating_add(duration_s);
    }
}

/// One item's line in a published period (`items[]` of `kiosk.usage/1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCounts {
    pub id: String,
    pub completed: u64,
    pub abandoned: u64,
    pub failed: u64,
    pub duration_s_total: u64,
}

/// A period that was closed: `[start, end)` and what happened in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub start: Timestamp,
    pub end: Timestamp,
    pub items: Vec<ItemCounts>,
}

/// The start of the local hour holding `t` (with the UTC offset in force at `t`, so zones with
/// half-hour offsets get their own hours).
pub fn hour_start(t: Timestamp, tz: &TimeZone) -> Timestamp {
    let off = i64::from(tz.to_offset(t).seconds());
    let local = t.as_second() + off;
    let floored = local - local.rem_euclid(3600);
    Timestamp::from_second(floored - off).unwrap_or(t)
}

/// Where the period that started at `start` ends: the next local hour boundary.
pub fn period_end(start: Timestamp, tz: &TimeZone) -> Timestamp {
    let h = hour_start(start, tz);
    let next = h
        .checked_add(SignedDuration::from_hours(1))
        .unwrap_or(Timestamp::MAX);
    hour_start(next, tz)
}

/// The local calendar date of `t`, `YYYY-MM-DD`.
pub fn local_date(t: Timestamp, tz: &TimeZone) -> String {
    tz.to_datetime(t).date().to_string()
}

/// The open period and today's totals: what `{state_dir}/usage/current.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Start of the open period; `None` before the first record or tick.
    pub period_start: Option<Timestamp>,
    pub period: BTreeMap<String, Counts>,
    /// The local date `today` counts belong to.
    pub day: String,
    pub today: BTreeMap<String, Counts>,
}

impl Aggregate {
    /// Closes the open period if `now` is past its end, and starts the one holding `now`.
    /// A stretch with the agent stopped produces no periods: the old one ends at its own
    /// boundary, the next starts at the hour of `now`.
    pub fn roll(&mut self, now: Timestamp, tz: &TimeZone) -> Option<Closed> {
        let mut closed = None;
        match self.period_start {
            None => self.period_start = Some(hour_start(now, tz)),
            Some(start) => {
                let end = period_end(start, tz);
                if now >= end {
                    closed = Some(self.take(start, end));
                    self.period_start = Some(hour_start(now, tz));
                }
            }
        }
        let day = local_date(now, tz);
        if self.day != day {
            self.day = day;
            self.today.clear();
        }
        closed
    }

    /// Closes the open period at `now` (the `stats_flush` command); the next starts at `now`.
    pub fn flush(&mut self, now: Timestamp, tz: &TimeZone) -> Closed {
        let _ = self.roll(now, tz);
        let start = self.period_start.unwrap_or(now).min(now);
        let closed = self.take(start, now);
        self.period_start = Some(now);
        closed
    }

    fn take(&mut self, start: Timestamp, end: Timestamp) -> Closed {
        let items = std::mem::take(&mut self.period)
            .into_iter()
            .map(|(id, c)| ItemCounts {
                id,
                completed: c.completed,
                abandoned: c.abandoned,
                failed: c.failed,
                duration_s_total: c.duration_s_total,
            })
            .collect();
        Closed { start, end, items }
    }

    /// Counts one session. The caller rolls first and publishes what that closed.
    pub fn add(&mut self, item: &str, outcome: Outcome, duration_s: u64) {
        self.period
            .entry(item.to_string())
            .or_default()
            .add(outcome, duration_s);
        self.today
            .entry(item.to_string())
            .or_default()
            .add(outcome, duration_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    #[test]
    fn hours_are_local_hours() {
        let tz = shanghai();
        // 15:59:59 and 16:00:00 in Shanghai fall into different hours.
        assert_eq!(
            hour_start(at("2026-12-01T15:59:59+08:00"), &tz),
            at("2026-12-01T15:00:00+08:00")
        );
        assert_eq!(
            hour_start(at("2026-12-01T16:00:00+08:00"), &tz),
            at("2026-12-01T16:00:00+08:00")
        );
        // A half-hour zone has its own hours, not UTC's.
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        assert_eq!(
            hour_start(at("2026-12-01T10:15:00Z"), &kolkata),
            at("2026-12-01T09:30:00Z")
        );
        assert_eq!(
            period_end(at("2026-12-01T10:23:00+08:00"), &tz),
            at("2026-12-01T11:00:00+08:00")
        );
    }

    #[test]
    fn periods_close_at_local_hour_and_day_at_local_midnight() {
        let tz = shanghai();
        let mut a = Aggregate::default();
        assert_eq!(a.roll(at("2026-12-01T23:10:00+08:00"), &tz), None);
        a.add("id-card", Outcome::Completed, 100);
        a.add("id-card", Outcome::Abandoned, 20);
        assert_eq!(a.roll(at("2026-12-01T23:59:59+08:00"), &tz), None);
        a.add("tax", Outcome::Failed, 5);
        assert_eq!(a.today.len(), 2);
        // 16:00 UTC is local midnight: the hour closes and today starts over.
        let closed = a.roll(at("2026-12-01T16:00:00Z"), &tz).unwrap();
        assert_eq!(closed.start, at("2026-12-01T23:00:00+08:00"));
        assert_eq!(closed.end, at("2026-12-02T00:00:00+08:00"));
        assert_eq!(
            closed.items,
            vec![
                ItemCounts {
                    id: "id-card".into(),
                    completed: 1,
                    abandoned: 1,
                    failed: 0,
                    duration_s_total: 120
                },
                ItemCounts {
                    id: "tax".into(),
                    completed: 0,
                    abandoned: 0,
                    failed: 1,
                    duration_s_total: 5
                },
            ]
        );
        assert_eq!(a.day, "2026-12-02");
        assert!(a.today.is_empty() && a.period.is_empty());
        assert_eq!(a.period_start, Some(at("2026-12-02T00:00:00+08:00")));
    }

    #[test]
    fn downtime_makes_no_periods_and_flush_splits_the_hour() {
        let tz = shanghai();
        let mut a = Aggregate::default();
        a.roll(at("2026-12-01T09:05:00+08:00"), &tz);
        a.add("x", Outcome::Completed, 1);
        // The agent was stopped from 09:30 to 13:20: one period 09:00-10:00, then 13:00.
        let c = a.roll(at("2026-12-01T13:20:00+08:00"), &tz).unwrap();
        assert_eq!(
            (c.start, c.end),
            (
                at("2026-12-01T09:00:00+08:00"),
                at("2026-12-01T10:00:00+08:00")
            )
        );
        assert_eq!(a.today["x"].completed, 1, "same local day");
        a.add("x", Outcome::Completed, 2);
        let f = a.flush(at("2026-12-01T13:25:00+08:00"), &tz);
        assert_eq!(
            (f.start, f.end),
            (
                at("2026-12-01T13:00:00+08:00"),
                at("2026-12-01T13:25:00+08:00")
            )
        );
        assert_eq!(f.items[0].completed, 1);
        // The rest of the hour is its own period and still ends at 14:00.
        let c = a.roll(at("2026-12-01T14:00:00+08:00"), &tz).unwrap();
        assert_eq!(
            (c.start, c.end, c.items.len()),
            (
                at("2026-12-01T13:25:00+08:00"),
                at("2026-12-01T14:00:00+08:00"),
                0
            )
        );
        assert_eq!(a.today["x"].completed, 2);
    }
}
