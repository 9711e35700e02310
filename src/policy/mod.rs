//! Security policy: parsing the signed `policy` document, evaluating its rules against the host
//! under `paths.root`, remediating the rules that ask for it, and producing the compliance report.
//!
//! Everything here is synchronous and file-based so a scan can run against a fixture tree in a
//! test exactly as against `/` on a kiosk; the daemon runs a scan on a blocking thread, one at a
//! time. Every change to the host goes through the one [`Remediator`] boundary, which confines
//! paths to the root, writes atomically and keeps modes, so moving the writes into a privileged
//! helper later is a move, not a rewrite. This module never touches the PAM stack, fstab, the
//! boot loader, accounts or packages: those rules are reported, never fixed.

pub mod checks;
pub mod doc;
pub mod engine;
pub mod remediate;
pub mod runner;
pub mod table;
pub mod text;
pub mod worker;

pub use checks::{Check, CheckStatus, Ctx, Outcome};
pub use doc::{Policy, PolicyError, Rule, Severity, parse};
pub use engine::{
    ComplianceReport, Engine, ResultStatus, RuleFixer, RuleResult, Transition, evaluate,
    transitions,
};
pub use remediate::{FsRemediator, RemediateError, Remediator, Validator};
pub use runner::{CommandOutput, CommandRunner, SystemRunner};
pub use table::render_table;
