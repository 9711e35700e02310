//! One capability per kind of signed desired-state document, behind one interface.
//!
//! The control layer decides *whether* a document may take effect (signature, target, expiry,
//! anti-rollback, scope precedence); a capability decides *what it means*: it turns the verified
//! payload into its typed document once, refuses what cannot be applied, and puts the typed
//! document in force. The typed document is what travels on from verification: control keeps it
//! beside the stored bytes and hands the same value back to `apply`. A new kind is one module
//! implementing [`Capability`] and one line in [`Registry::standard`].
//!
//! `trust` is not a capability: it is what verifies all the others (see `Control::on_desired`).

pub mod app;
mod catalog;
mod cert;
mod policy;
mod schedule;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::Deps;
use crate::trust::Role;

/// Where a document was accepted: what every step after verification needs to know of it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The full kind, `app/kiosk-ui` for an application.
    pub kind: &'a str,
    /// The part after `app/`; empty for kinds without a name.
    pub name: &'a str,
    /// The scope (`t/{id}`, `g/{group}`, `all`) it was accepted on.
    pub target: &'a str,
    pub version: u64,
    /// The DSSE envelope as received, kept only for capabilities that ask for it.
    pub envelope: &'a [u8],
}

/// What putting a document in force led to, for `reported/{kind}`.
#[derive(Debug, Clone)]
pub struct Applied {
    pub status: Status,
    pub message: String,
    pub details: Value,
}

impl Applied {
    pub fn new(status: Status, message: impl Into<String>, details: Value) -> Self {
        Self {
            status,
            message: message.into(),
            details,
        }
    }
}

/// The non-failure outcomes of an apply (docs/protocol.md §4 `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In force now.
    Applied,
    /// Handed to a worker that reports the final state later (an install, a reconnect).
    InProgress,
    /// Accepted, but held until this terminal's rollout wave opens.
    WaitingWave,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::InProgress => "in_progress",
            Status::WaitingWave => "waiting_wave",
        }
    }
}

/// Why an accepted document is not in force.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The document itself cannot be applied; sending it again changes nothing.
    #[error("{0}")]
    Content(String),
    /// The host failed (I/O, resources): the same document is tried again after a backoff.
    #[error("{0}")]
    Transient(String),
}

/// How a document found in force at start is put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Apply it again (schedule, policy, catalog: cheap and idempotent).
    Apply,
    /// Take it as in force without acting: the capability's own journal decides (an installed
    /// release, a certificate pair).
    Adopt,
}

/// One kind of document. `Doc` is its typed form, produced once from the verified payload.
pub trait Capability: Send + 'static {
    type Doc: Send + Sync + 'static;
    /// Keys holding this role sign the kind.
    const ROLE: Role;
    /// Whether the DSSE envelope is stored with the document (and given to `apply` in `At`).
    const KEEPS_ENVELOPE: bool = false;

    /// Content checks beyond the signature: a document that cannot be applied is refused whole
    /// here and never becomes the newest version. The message is the refusal's text.
    fn parse(&self, d: &Deps, at: &At, payload: &[u8]) -> Result<Self::Doc, String>;

    /// Puts the document in force. `fresh` is false when it is put back at start.
    fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        doc: &Self::Doc,
        fresh: bool,
    ) -> Result<Applied, ApplyError>;

    /// How a document in force at start is put back.
    fn restore(&self, _at: &At) -> Restore {
        Restore::Apply
    }

    /// Time-driven work: how long until `due` has something (at most a short step).
    fn next_due(&self, _d: &Deps) -> Option<std::time::Duration> {
        None
    }

    /// Full kinds whose effective document should be applied again now.
    fn due(&mut self, _d: &Deps) -> Vec<String> {
        Vec::new()
    }

    /// A kind no scope holds any more: forget what was waiting for it.
    fn forget(&mut self, _d: &Deps, _kind: &str) {}
}

/// A typed document as control holds it, opaque outside its capability.
pub type Doc = Arc<dyn Any + Send + Sync>;

/// [`Capability`] with its document type erased, so kinds sit in one table.
trait Kind: Send {
    fn role(&self) -> Role;
    fn keeps_envelope(&self) -> bool;
    fn parse(&self, d: &Deps, at: &At, payload: &[u8]) -> Result<Doc, String>;
    fn apply(&mut self, d: &Deps, at: &At, doc: &Doc, fresh: bool) -> Result<Applied, ApplyError>;
    fn restore(&self, at: &At) -> Restore;
    fn next_due(&self, d: &Deps) -> Option<std::time::Duration>;
    fn due(&mut self, d: &Deps) -> Vec<String>;
    fn forget(&mut self, d: &Deps, kind: &str);
}

impl<C: Capability> Kind for C {
    fn role(&self) -> Role {
        C::ROLE
    }
    fn keeps_envelope(&self) -> bool {
        C::KEEPS_ENVELOPE
    }
    fn parse(&self, d: &Deps, at: &At, payload: &[u8]) -> Result<Doc, String> {
        Capability::parse(self, d, at, payload).map(|doc| Arc::new(doc) as Doc)
    }
    fn apply(&mut self, d: &Deps, at: &At, doc: &Doc, fresh: bool) -> Result<Applied, ApplyError> {
        // Control only hands back what this capability's own `parse` produced.
        let doc = doc
            .downcast_ref::<C::Doc>()
            .ok_or_else(|| ApplyError::Content(format!("{}: document of another kind", at.kind)))?;
        Capability::apply(self, d, at, doc, fresh)
    }
    fn restore(&self, at: &At) -> Restore {
        Capability::restore(self, at)
    }
    fn next_due(&self, d: &Deps) -> Option<std::time::Duration> {
        Capability::next_due(self, d)
    }
    fn due(&mut self, d: &Deps) -> Vec<String> {
        Capability::due(self, d)
    }
    fn forget(&mut self, d: &Deps, kind: &str) {
        Capability::forget(self, d, kind)
    }
}

/// The kinds this agent accepts, by name. A family (`app`) takes `app/NAME` for any valid NAME.
pub struct Registry {
    single: BTreeMap<&'static str, Box<dyn Kind>>,
    families: BTreeMap<&'static str, Box<dyn Kind>>,
}

/// A kind name split into the capability that owns it and the instance name.
pub struct Found<'r> {
    kind: &'r mut dyn Kind,
    pub name: String,
}

impl Registry {
    fn empty() -> Self {
        Self {
            single: BTreeMap::new(),
            families: BTreeMap::new(),
        }
    }

    /// Every kind of docs/protocol.md §4 except `trust`.
    pub fn standard(d: &Deps) -> Self {
        Self::empty()
            .with("schedule", schedule::Schedules)
            .with("policy", policy::Policies)
            .with("catalog", catalog::Catalogs)
            .with("cert", cert::Certs)
            .family("app", app::Apps::load(d))
    }

    fn with<C: Capability>(mut self, name: &'static str, c: C) -> Self {
        self.single.insert(name, Box::new(c));
        self
    }

    fn family<C: Capability>(mut self, name: &'static str, c: C) -> Self {
        self.families.insert(name, Box::new(c));
        self
    }

    /// The exact kinds (for subscriptions and messages), without families.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.single.keys().copied()
    }

    /// The families (`app`), whose kinds are `{family}/{name}`.
    pub fn families(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.keys().copied()
    }

    /// The capability for `kind`, if it is one this agent accepts.
    pub fn find(&mut self, kind: &str) -> Option<Found<'_>> {
        if let Some(k) = self.single.get_mut(kind) {
            return Some(Found {
                kind: k.as_mut(),
                name: String::new(),
            });
        }
        let (family, name) = kind.split_once('/')?;
        if !crate::config::valid_id(name) {
            return None;
        }
        let k = self.families.get_mut(family)?;
        Some(Found {
            kind: k.as_mut(),
            name: name.to_string(),
        })
    }

    /// Time-driven work of every capability: the shortest wait.
    pub fn next_due(&self, d: &Deps) -> Option<std::time::Duration> {
        self.single
            .values()
            .chain(self.families.values())
            .filter_map(|k| k.next_due(d))
            .min()
    }

    /// Kinds that asked to be applied again now.
    pub fn due(&mut self, d: &Deps) -> Vec<String> {
        self.single
            .values_mut()
            .chain(self.families.values_mut())
            .flat_map(|k| k.due(d))
            .collect()
    }

    /// Lets the capability of `kind` drop what it was holding for it.
    pub fn forget(&mut self, d: &Deps, kind: &str) {
        if let Some(f) = self.find(kind) {
            f.kind.forget(d, kind);
        }
    }

    /// A description of what is accepted, for a refusal's message.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = std::iter::once("trust".to_string())
            .chain(self.names().map(str::to_string))
            .collect();
        names.extend(self.families().map(|f| format!("{f}/NAME")));
        let last = names.pop().unwrap_or_default();
        format!("{} or {last}", names.join(", "))
    }
}

impl Found<'_> {
    pub fn role(&self) -> Role {
        self.kind.role()
    }
    pub fn keeps_envelope(&self) -> bool {
        self.kind.keeps_envelope()
    }
    pub fn parse(&self, d: &Deps, at: &At, payload: &[u8]) -> Result<Doc, String> {
        self.kind.parse(d, at, payload)
    }
    pub fn apply(
        &mut self,
        d: &Deps,
        at: &At,
        doc: &Doc,
        fresh: bool,
    ) -> Result<Applied, ApplyError> {
        self.kind.apply(d, at, doc, fresh)
    }
    pub fn restore(&self, at: &At) -> Restore {
        self.kind.restore(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind made for the test: a family whose documents are their own text.
    struct Notes;

    impl Capability for Notes {
        type Doc = String;
        const ROLE: Role = Role::Catalog;
        fn parse(&self, _d: &Deps, _at: &At, payload: &[u8]) -> Result<String, String> {
            String::from_utf8(payload.to_vec()).map_err(|e| e.to_string())
        }
        fn apply(
            &mut self,
            _d: &Deps,
            _at: &At,
            doc: &String,
            _fresh: bool,
        ) -> Result<Applied, ApplyError> {
            Ok(Applied::new(Status::Applied, doc.clone(), Value::Null))
        }
    }

    #[test]
    fn kinds_are_found_by_name_and_families_by_a_valid_instance_name() {
        let mut r = Registry::empty()
            .with("schedule", schedule::Schedules)
            .family("note", Notes);
        assert_eq!(r.find("schedule").map(|f| f.role()), Some(Role::Schedule));
        let f = r.find("note/lobby-1").expect("family instance");
        assert_eq!((f.role(), f.name.as_str()), (Role::Catalog, "lobby-1"));
        assert!(r.find("note/../etc").is_none());
        assert!(r.find("note/").is_none());
        assert!(r.find("note").is_none(), "a family is not a kind by itself");
        assert!(r.find("firmware").is_none());
        assert!(
            r.find("trust").is_none(),
            "trust is verification, not a capability"
        );
        assert_eq!(r.describe(), "trust, schedule or note/NAME");
    }
}
