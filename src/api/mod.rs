//! The local socket (docs/protocol.md §6) for technicians (`kioskctl`) and the kiosk UI.
//!
//! Owns the socket file, peer authorization (`SO_PEERCRED`, deny by default) and the line
//! protocol. It holds no agent state: every op is answered by a `Handler` the daemon provides,
//! so the same capability code serves MQTT commands and local requests.

pub mod client;
pub mod proto;
pub mod server;
