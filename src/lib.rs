//! kiosk-agent: the terminal-side daemon of a fleet of government-service self-service kiosks.
//!
//! One process per terminal. It reports health and faults to the platform over MQTT (keeping
//! events on disk while offline), acts only on downstream messages signed by enough trusted keys,
//! and answers technicians and the kiosk UI on a local Unix socket.
//!
//! The flow of a downstream message: `transport` receives bytes → `trust` verifies the DSSE
//! envelope → `control` applies precedence, anti-rollback and replay rules → a capability
//! (`catalog`, `policy`, `power`, `update`, `identity`) acts → `control` reports back through `transport`.
//! Shared pieces (`host`, `state`, `config`, `trust`) sit below the capabilities; capabilities
//! never call each other and never touch the MQTT client.
//!
//! The kiosk UI's side: `usage` counts service-item sessions per local hour and hands closed
//! hours to a second outbox the transport drains onto `stats`; `ui` watches the screen's
//! heartbeat; a side-loaded document (`apply` on the socket, `sideload` bundles) enters
//! `control` exactly where one from the broker would.

pub mod actions;
pub mod api;
pub mod app;
pub mod catalog;
pub mod config;
pub mod control;
pub mod diagnostics;
pub mod events;
pub mod fleet;
pub mod helper;
pub mod host;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod maintenance;
pub mod patrol;
pub mod policy;
pub mod power;
pub mod process;
pub mod sideload;
pub mod state;
pub mod telemetry;
pub mod transport;
pub mod trust;
pub mod ui;
pub mod update;
pub mod usage;

/// The agent's version as reported in state, health and patrol reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
