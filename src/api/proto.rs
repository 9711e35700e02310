//! The local socket's wire format (docs/protocol.md §6), shared by the server and `kioskctl`.

use serde_json::{Value, json};

pub use crate::actions::{Local, Name};

/// Who is on the other end of a connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Reader,
    Nobody,
}

impl Principal {
    /// Whether this peer may use `op` (its group in the one table of names).
    pub fn may(self, op: Name) -> bool {
        match (self, op.local()) {
            (_, Local::No) | (Principal::Nobody, _) => false,
            (Principal::Admin, _) => true,
            (Principal::Reader, l) => l == Local::Read,
        }
    }
}

pub fn ok(data: Value) -> Value {
    json!({"ok": true, "data": data})
}

pub fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message.into()}})
}
