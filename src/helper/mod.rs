//! The privileged helper and the daemon's way of asking it.
//!
//! The daemon parses everything that comes from the network and runs as the unprivileged
//! `kiosk-agent` account; what needs root (power, the RTC, restarting allowed units,
//! remediation, the root-only half of the accounts rule, persisting a rotated trust root) is
//! asked of `kiosk-agent-helper` over a root-owned Unix socket. The helper serves only the
//! daemon's uid (SO_PEERCRED), accepts only the closed [`Request`] set, and decides from its own
//! root-owned inputs: the configuration file (power commands, allowed units, `paths.root`) and
//! the trust root. A remediation is performed only for a rule of a policy envelope the helper
//! verified itself, so a compromised daemon can make it do only what a signed document asks.
//!
//! Without `helper.socket` the daemon performs these actions in-process, as a process started
//! by hand (root for a full run, an ordinary user for read-only work) or a test does.
//! This module never touches the network and never runs a shell.

pub mod client;
pub mod proto;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub use client::{Client, restart_unit};
pub use proto::{PowerAction, Reply, Request, codes};
pub use server::Helper;

use crate::policy::{CommandOutput, CommandRunner, Rule, RuleFixer, SystemRunner};

/// Remediation through the helper: the rule's id and the signed policy it belongs to go over,
/// the helper re-verifies and performs the fix.
#[derive(Debug, Clone)]
pub struct HelperFixer {
    client: Client,
    envelope: Arc<Vec<u8>>,
}

impl HelperFixer {
    pub fn new(client: Client, envelope: Arc<Vec<u8>>) -> Self {
        Self { client, envelope }
    }
}

impl RuleFixer for HelperFixer {
    fn fix(&self, rule: &Rule) -> Result<String, String> {
        if self.envelope.is_empty() {
            return Err(
                "the policy in force has no signed envelope on record; it is remediated once re-delivered"
                    .into(),
            );
        }
        let r = self.client.call(&Request::Remediate {
            policy: STANDARD.encode(self.envelope.as_slice()),
            rule: rule.id.clone(),
        });
        if r.ok {
            Ok(r.message)
        } else {
            Err(format!("helper refused ({}): {}", r.code, r.message))
        }
    }
}

/// Commands as usual, plus the accounts rule's `/etc/shadow` verdict from the helper.
#[derive(Debug, Clone)]
pub struct HelperRunner {
    client: Client,
}

impl HelperRunner {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl CommandRunner for HelperRunner {
    fn run(&self, argv: &[String], timeout: Duration) -> Result<CommandOutput, String> {
        SystemRunner.run(argv, timeout)
    }

    fn empty_password_accounts(&self) -> Option<Result<Vec<String>, String>> {
        let r = self.client.call(&Request::EmptyPasswords {});
        Some(if r.ok {
            Ok(r.details
                .get("empty_password")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default())
        } else {
            Err(format!("helper ({}): {}", r.code, r.message))
        })
    }
}
