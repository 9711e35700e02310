//! `schedule`: the power schedule, put in force by the power task.

use serde_json::json;

use super::{Applied, ApplyError, At, Capability, Status};
use crate::control::Deps;
use crate::host::rfc3339;
use crate::power::schedule::Schedule;
use crate::trust::Role;

pub struct Schedules;

impl Capability for Schedules {
    type Doc = Schedule;
    const ROLE: Role = Role::Schedule;

    fn parse(&self, _d: &Deps, _at: &At, payload: &[u8]) -> Result<Schedule, String> {
        Schedule::parse(payload).map_err(|e| e.to_string())
    }

    fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        s: &Schedule,
        _fresh: bool,
    ) -> Result<Applied, ApplyError> {
        let now = d.clock.now();
        let details = json!({
            "next_on": s.next_on(now).map(rfc3339),
            "next_off": s.next_off(now).map(rfc3339),
            "timezone": s.timezone(),
        });
        d.power.set_schedule(Some(s.clone()));
        Ok(Applied::new(
            Status::Applied,
            format!("schedule version {} in force", at.version),
            details,
        ))
    }
}
