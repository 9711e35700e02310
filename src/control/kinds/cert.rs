//! `cert`: a renewed client certificate (docs/protocol.md §9), installed by the identity task,
//! which reconnects with it and reports the outcome itself.

use serde_json::json;

use super::{Applied, ApplyError, At, Capability, Restore, Status};
use crate::control::Deps;
use crate::host::rfc3339;
use crate::identity::cert::{CertDoc, CertInfo};
use crate::trust::Role;

pub struct Certs;

impl Capability for Certs {
    type Doc = (CertDoc, CertInfo);
    const ROLE: Role = Role::Cert;

    fn parse(&self, d: &Deps, at: &At, payload: &[u8]) -> Result<Self::Doc, String> {
        // A certificate belongs to one terminal: group and fleet scopes cannot hold one.
        let own = format!("t/{}", d.cfg.terminal.id);
        if at.target != own {
            return Err(format!("a cert document must target {own}"));
        }
        d.identity
            .check(
                payload,
                &d.cfg.terminal.id,
                d.clock.now(),
                d.cfg.security.clock_skew_s,
            )
            .map_err(|e| e.to_string())
    }

    fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        (c, info): &Self::Doc,
        _fresh: bool,
    ) -> Result<Applied, ApplyError> {
        let details = json!({"request_id": c.request_id,
            "not_after": rfc3339(info.not_after), "phase": "connecting"});
        d.identity
            .install(at.version, at.target, c.clone(), info.clone())
            .map_err(ApplyError::Content)?;
        Ok(Applied::new(
            Status::InProgress,
            "certificate accepted; reconnecting with it",
            details,
        ))
    }

    /// The pair on disk is the one in force; its own journal says so.
    fn restore(&self, _at: &At) -> Restore {
        Restore::Adopt
    }
}
