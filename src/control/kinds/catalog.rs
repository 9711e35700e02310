//! `catalog`: the service-item catalog, written where the kiosk UI reads it.

use super::{Applied, ApplyError, At, Capability, Status};
use crate::catalog::{Catalog, CatalogError};
use crate::control::Deps;
use crate::trust::Role;
use serde_json::json;

pub struct Catalogs;

impl Capability for Catalogs {
    type Doc = Catalog;
    const ROLE: Role = Role::Catalog;

    fn parse(&self, _d: &Deps, _at: &At, payload: &[u8]) -> Result<Catalog, String> {
        Catalog::parse(payload).map_err(|e| e.to_string())
    }

    fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        c: &Catalog,
        fresh: bool,
    ) -> Result<Applied, ApplyError> {
        let dir = &d.cfg.paths.state_dir;
        if !fresh && c.is_current(dir) {
            return Ok(Applied::new(
                Status::Applied,
                "catalog in force",
                c.summary().clone(),
            ));
        }
        c.write(dir).map_err(|e| match e {
            CatalogError::Write(_) => ApplyError::Transient(e.to_string()),
            CatalogError::Invalid(_) => ApplyError::Content(e.to_string()),
        })?;
        d.events.notice(
            "catalog.updated",
            format!("service-item catalog version {} in force", at.version),
            json!({"version": at.version, "target": at.target, "summary": c.summary()}),
        );
        Ok(Applied::new(
            Status::Applied,
            format!("catalog version {} written", at.version),
            c.summary().clone(),
        ))
    }
}
