//! The names of every action, typed once: the daemon's dispatch, the socket's authorization,
//! `kioskctl`'s requests and the tests of docs/protocol.md all read this one table.

use serde::{Serialize, Serializer};

/// Who may ask for an action on the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Not a socket op (a remote command only).
    No,
    /// Members of `local.read_group` (technicians, the kiosk UI) and admins.
    Read,
    /// Root and members of `local.admin_group` only.
    Admin,
}

macro_rules! names {
    ($($v:ident = $s:literal, remote: $r:literal, local: $l:ident;)*) => {
        /// An action's name, as a remote command's `name` (§5) or a socket request's `op` (§6).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Name { $($v),* }

        impl Name {
            pub const ALL: &'static [Name] = &[$(Name::$v),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Name::$v => $s),* }
            }

            /// Whether a signed remote command may name it.
            pub fn remote(self) -> bool {
                match self { $(Name::$v => $r),* }
            }

            /// Who may ask for it on the local socket.
            pub fn local(self) -> Local {
                match self { $(Name::$v => Local::$l),* }
            }
        }
    };
}

names! {
    Ping = "ping", remote: true, local: No;
    ReportNow = "report_now", remote: true, local: No;
    Inspect = "inspect", remote: true, local: Read;
    InspectPublish = "inspect_publish", remote: false, local: Read;
    ComplianceScan = "compliance_scan", remote: true, local: Admin;
    Compliance = "compliance", remote: false, local: Read;
    Reboot = "reboot", remote: true, local: No;
    Poweroff = "poweroff", remote: true, local: No;
    RestartUnit = "restart_unit", remote: true, local: No;
    Maintenance = "maintenance", remote: true, local: Admin;
    StatsFlush = "stats_flush", remote: true, local: No;
    SetLogLevel = "set_log_level", remote: true, local: No;
    CertRenew = "cert_renew", remote: true, local: No;
    LogsUpload = "logs_upload", remote: true, local: No;
    SecurityReset = "security_reset", remote: true, local: No;
    Status = "status", remote: false, local: Read;
    Health = "health", remote: false, local: Read;
    Patrol = "patrol", remote: false, local: Read;
    Events = "events", remote: false, local: Read;
    Catalog = "catalog", remote: false, local: Read;
    Schedule = "schedule", remote: false, local: Read;
    Updates = "updates", remote: false, local: Read;
    Subscribe = "subscribe", remote: false, local: Read;
    Inhibit = "inhibit", remote: false, local: Read;
    Release = "release", remote: false, local: Read;
    Usage = "usage", remote: false, local: Read;
    UsageToday = "usage_today", remote: false, local: Read;
    Heartbeat = "heartbeat", remote: false, local: Read;
    Apply = "apply", remote: false, local: Admin;
}

impl Name {
    pub fn parse(s: &str) -> Option<Name> {
        Name::ALL.iter().copied().find(|n| n.as_str() == s)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for n in Name::ALL {
            assert_eq!(Name::parse(n.as_str()), Some(*n));
            assert!(n.remote() || n.local() != Local::No, "{n} is reachable");
        }
        assert_eq!(Name::parse("Ping"), None);
        assert_eq!(Name::parse("rm"), None);
    }

    /// The protocol document lists every command and op with the access it has here, so a
    /// name added to the table and not to the document fails.
    #[test]
    fn the_protocol_document_names_every_action() {
        let doc = include_str!("../../docs/protocol.md");
        for n in Name::ALL {
            assert!(
                doc.contains(&format!("`{}`", n.as_str())),
                "docs/protocol.md does not mention `{n}`"
            );
        }
    }
}
