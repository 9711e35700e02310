//! Power-off inhibitors: "a citizen is mid-transaction, do not switch me off".
//!
//! A hold belongs to one local-socket connection, so a kiosk UI that crashes cannot keep the
//! kiosk on forever: the socket server releases by connection id when the connection closes.
//! The registry only records; the planner decides how long a hold may defer the off action.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::host::rfc3339;

/// Bounded so a misbehaving client cannot grow the status reply without limit.
const MAX_TEXT_CHARS: usize = 200;

#[derive(Debug, Clone)]
struct Hold {
    who: String,
    why: String,
    since: Timestamp,
}

/// One hold as shown in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldInfo {
    pub conn_id: u64,
    pub who: String,
    pub why: String,
    pub since: String,
}

#[derive(Debug, Default, Clone)]
pub struct Holds {
    by_conn: BTreeMap<u64, Hold>,
}

/// Text from a socket client ends up in logs and JSON: no control characters, bounded length.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT_CHARS)
        .collect()
}

impl Holds {
    /// Takes or renews the hold of a connection. A connection holds at most one: asking again
    /// updates who/why but keeps `since`, so a UI that re-asserts every transaction cannot
    /// appear to have just started waiting.
    pub fn inhibit(&mut self, conn_id: u64, who: &str, why: &str, now: Timestamp) {
        let since = self.by_conn.get(&conn_id).map_or(now, |h| h.since);
        self.by_conn.insert(
            conn_id,
            Hold {
                who: clean(who),
                why: clean(why),
                since,
            },
        );
    }

    /// Returns whether the connection held anything.
    pub fn release(&mut self, conn_id: u64) -> bool {
        self.by_conn.remove(&conn_id).is_some()
    }

    pub fn any_held(&self) -> bool {
        !self.by_conn.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_conn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    pub fn list(&self) -> Vec<HoldInfo> {
        self.by_conn
            .iter()
            .map(|(&conn_id, h)| HoldInfo {
                conn_id,
                who: h.who.clone(),
                why: h.why.clone(),
                since: rfc3339(h.since),
            })
            .collect()
    }

    /// Why an off action must wait right now; empty when nothing defers it. Maintenance is
    /// passed in because the planner owns that flag, but it defers exactly like a hold.
    pub fn defer_reasons(&self, maintenance: bool) -> Vec<String> {
        let mut out = Vec::new();
        if maintenance {
            out.push("maintenance mode".to_string());
        }
        out.extend(
            self.by_conn
                .values()
                .map(|h| format!("held by {}: {}", h.who, h.why)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn holds_are_per_connection() {
        let mut h = Holds::default();
        assert!(!h.any_held());
        assert!(h.defer_reasons(false).is_empty());
        assert_eq!(h.defer_reasons(true), vec!["maintenance mode"]);

        h.inhibit(3, "kiosk-ui", "transaction 42", t("2026-10-09T09:59:00Z"));
        h.inhibit(5, "tech", "printer test", t("2026-10-09T09:59:30Z"));
        h.inhibit(3, "kiosk-ui", "transaction 43", t("2026-10-09T10:00:00Z"));
        assert_eq!(h.len(), 2);
        let l = h.list();
        assert_eq!(l[0].conn_id, 3);
        assert_eq!(l[0].why, "transaction 43");
        assert_eq!(
            l[0].since, "2026-10-09T09:59:00Z",
            "renewal keeps the original start"
        );
        assert_eq!(h.defer_reasons(false).len(), 2);

        assert!(!h.release(4));
        assert!(h.release(3));
        assert!(h.any_held());
        assert!(h.release(5));
        assert!(!h.any_held() && h.is_empty());
    }

    #[test]
    fn client_text_is_cleaned() {
        let mut h = Holds::default();
        h.inhibit(
            1,
            "ui\n\u{1b}[31m",
            &"x".repeat(1000),
            t("2026-10-09T10:00:00Z"),
        );
        let l = h.list();
        assert_eq!(l[0].who, "ui[31m");
        assert_eq!(l[0].why.len(), MAX_TEXT_CHARS);
    }
}
