//! Maintenance mode: a technician (or the platform) says "I am working on this terminal".
//!
//! One persisted flag, owned here, read by telemetry (probe alarms are muted), power (scheduled
//! off is deferred) and shown in health and `kioskctl status`. Set by the `maintenance`
//! command and the `maintenance` socket op through the same call.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::{StateError, StateStore};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceState {
    pub on: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub since: Option<String>,
    /// Who set it: `platform` or `local:<uid>`.
    #[serde(default)]
    pub by: String,
}

#[derive(Debug, Clone)]
pub struct Maintenance {
    store: StateStore,
    tx: Arc<watch::Sender<MaintenanceState>>,
}

const FILE: &str = "maintenance.json";

impl Maintenance {
    /// Loads the persisted flag; a corrupt record is reported and read as "off".
    pub fn load(store: StateStore) -> Self {
        let state = match store.load::<MaintenanceState>(FILE) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "maintenance flag unreadable; treating as off");
                MaintenanceState::default()
            }
        };
        let (tx, _) = watch::channel(state);
        Self {
            store,
            tx: Arc::new(tx),
        }
    }

    pub fn get(&self) -> MaintenanceState {
        self.tx.borrow().clone()
    }

    pub fn is_on(&self) -> bool {
        self.tx.borrow().on
    }

    pub fn watch(&self) -> watch::Receiver<MaintenanceState> {
        self.tx.subscribe()
    }

    /// The one way maintenance mode is switched (platform command or technician): persisted,
    /// then announced to the platform as a `maintenance.changed` event.
    pub fn switch(
        &self,
        on: bool,
        reason: &str,
        by: &str,
        now: jiff::Timestamp,
        events: &crate::events::EventSink,
    ) -> Result<MaintenanceState, StateError> {
        let state = self.set(on, reason, by, &crate::host::rfc3339(now))?;
        let message = if on {
            format!("maintenance mode on: {reason}")
        } else {
            "maintenance mode off".to_string()
        };
        events.emit(
            crate::events::Severity::Info,
            "maintenance.changed",
            message,
            serde_json::json!(state),
        );
        Ok(state)
    }

    /// Persists first, then publishes the change, so a restart never forgets what was shown.
    pub fn set(
        &self,
        on: bool,
        reason: &str,
        by: &str,
        now: &str,
    ) -> Result<MaintenanceState, StateError> {
        let state = MaintenanceState {
            on,
            reason: if on {
                reason.to_string()
            } else {
                String::new()
            },
            since: on.then(|| now.to_string()),
            by: by.to_string(),
        };
        self.store.save(FILE, &state)?;
        self.tx.send_replace(state.clone());
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_survives_reload() {
        let d = tempfile::tempdir().unwrap();
        let store = StateStore::open(d.path()).unwrap();
        let m = Maintenance::load(store.clone());
        assert!(!m.is_on());
        m.set(true, "replacing printer", "local:0", "2026-11-29T08:00:00Z")
            .unwrap();
        let again = Maintenance::load(store);
        assert!(again.is_on());
        assert_eq!(again.get().reason, "replacing printer");
    }
}
