//! The local socket's wire format (docs/protocol.md §6), shared by the server and `kioskctl`.

use serde_json::{Value, json};

/// Ops a member of `local.read_group` may use (technicians, the kiosk UI).
pub const READ_OPS: &[&str] = &[
    "status",
    "health",
    "inspect",
    "inspect_publish",
    "compliance",
    "schedule",
    "updates",
    "events",
    "catalog",
    "patrol",
    "subscribe",
    "inhibit",
    "release",
    "usage",
    "usage_today",
    "heartbeat",
];
/// Ops only root or `local.admin_group` may use.
pub const ADMIN_OPS: &[&str] = &["maintenance", "compliance_scan", "apply"];

/// Who is on the other end of a connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Reader,
    Nobody,
}

impl Principal {
    pub fn may(self, op: &str) -> bool {
        match self {
            Principal::Admin => READ_OPS.contains(&op) || ADMIN_OPS.contains(&op),
            Principal::Reader => READ_OPS.contains(&op),
            Principal::Nobody => false,
        }
    }
}

pub fn ok(data: Value) -> Value {
    json!({"ok": true, "data": data})
}

pub fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message.into()}})
}
