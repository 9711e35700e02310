//! The session counter and the subscriptions the broker's session holds.
//!
//! `session` goes up by one on every successful connect and survives restarts, so the platform
//! can tell a late `offline`/`lost` of an old connection from the `online` of the current one.
//! The subscription list is kept beside it: a restarted agent whose broker session is present
//! does not subscribe again unless its configured filters changed.

use serde::{Deserialize, Serialize};

use crate::state::StateStore;

const RECORD: &str = "transport/session.json";

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    session: u64,
    #[serde(default)]
    subscriptions: Vec<String>,
}

#[derive(Debug)]
pub struct SessionState {
    store: Option<StateStore>,
    record: Record,
}

impl SessionState {
    pub fn load(store: Option<StateStore>) -> Self {
        let record = match store.as_ref().map(|s| s.load::<Record>(RECORD)) {
            Some(Ok(Some(r))) => r,
            Some(Err(e)) => {
                tracing::error!(error = %e, "session record unreadable; counting from zero");
                Record::default()
            }
            _ => Record::default(),
        };
        Self { store, record }
    }

    /// The number the next connection will carry (birth and Last Will).
    pub fn next(&self) -> u64 {
        self.record.session.saturating_add(1)
    }

    /// A connect succeeded: the next number is now the current one, persisted atomically.
    pub fn connected(&mut self) -> u64 {
        self.record.session = self.next();
        self.save();
        self.record.session
    }

    pub fn subscriptions_match(&self, subs: &[String]) -> bool {
        self.record.subscriptions == subs
    }

    /// The broker acknowledged these subscriptions; its session now holds them.
    pub fn subscribed(&mut self, subs: &[String]) {
        if self.record.subscriptions != subs {
            self.record.subscriptions = subs.to_vec();
            self.save();
        }
    }

    fn save(&self) {
        if let Some(s) = &self.store
            && let Err(e) = s.save(RECORD, &self.record)
        {
            tracing::error!(error = %e, "cannot persist the session counter");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut s = SessionState::load(Some(store.clone()));
        assert_eq!(s.next(), 1);
        assert_eq!(s.connected(), 1);
        assert_eq!(s.connected(), 2);
        s.subscribed(&["a/#".into()]);
        let s = SessionState::load(Some(store));
        assert_eq!(s.next(), 3);
        assert!(s.subscriptions_match(&["a/#".into()]));
        assert!(!s.subscriptions_match(&["b/#".into()]));
    }
}
