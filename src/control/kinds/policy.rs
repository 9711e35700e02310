//! `policy`: the endpoint-security policy, evaluated by the policy worker. The envelope is kept:
//! the privileged helper re-verifies it before it remediates.

use serde_json::json;

use super::{Applied, ApplyError, At, Capability, Status};
use crate::control::Deps;
use crate::policy::Policy;
use crate::trust::Role;

pub struct Policies;

impl Capability for Policies {
    type Doc = Policy;
    const ROLE: Role = Role::Policy;
    const KEEPS_ENVELOPE: bool = true;

    fn parse(&self, _d: &Deps, _at: &At, payload: &[u8]) -> Result<Policy, String> {
        crate::policy::parse(payload).map_err(|e| e.to_string())
    }

    fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        p: &Policy,
        _fresh: bool,
    ) -> Result<Applied, ApplyError> {
        let rules = p.rules.len();
        d.policy.set_signed_policy(p.clone(), at.envelope.to_vec());
        Ok(Applied::new(
            Status::Applied,
            format!(
                "policy version {} in force ({rules} rules); evaluating",
                at.version
            ),
            json!({"rules": rules}),
        ))
    }
}
