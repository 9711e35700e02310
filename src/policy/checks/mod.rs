//! One file per check type. Each turns its JSON `check` object into a compiled [`Check`] at parse
//! time (so a bad regex or mode refuses the policy before anything runs) and evaluates it against
//! the host under `paths.root`. A check that can fix what it finds says so with `can_remediate`
//! and performs the fix only through the [`Remediator`] it is handed.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::host::HostPaths;

use super::remediate::{RemediateError, Remediator};
use super::runner::CommandRunner;

pub mod accounts;
pub mod config_value;
pub mod exec;
pub mod file_absent;
pub mod file_contains;
pub mod file_hash;
pub mod file_mode;
pub mod json_value;
pub mod kernel_module;
pub mod listening_ports;
pub mod mount_options;
pub mod process_allowlist;
pub mod service;
pub mod sysctl;
pub mod usb_devices;

/// What a check may use: where the host's files are, and how to run a command.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub host: &'a HostPaths,
    pub runner: &'a dyn CommandRunner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Pass,
    Fail,
    /// The check could not decide (unreadable file, command failed): neither pass nor fail.
    Error,
}

/// The result of one evaluation. `observed` is what an auditor reads to see why.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: CheckStatus,
    pub observed: Value,
    pub message: String,
}

impl Outcome {
    pub fn pass(observed: impl Into<Value>, message: impl Into<String>) -> Self {
        Self {
            status: CheckStatus::Pass,
            observed: observed.into(),
            message: message.into(),
        }
    }
    pub fn fail(observed: impl Into<Value>, message: impl Into<String>) -> Self {
        Self {
            status: CheckStatus::Fail,
            observed: observed.into(),
            message: message.into(),
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            status: CheckStatus::Error,
            observed: Value::Null,
            message: message.into(),
        }
    }
    /// Pass or fail on a condition, same observed value either way.
    pub fn verdict(ok: bool, observed: impl Into<Value>, message: impl Into<String>) -> Self {
        if ok {
            Self::pass(observed, message)
        } else {
            Self::fail(observed, message)
        }
    }
}

pub trait Check: std::fmt::Debug + Send + Sync {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome;

    /// Whether this check, as configured, has a fix the agent may apply.
    fn can_remediate(&self) -> bool {
        false
    }

    /// Applies the fix; returns a short description of the action for the evidence.
    fn remediate(&self, _ctx: &Ctx<'_>, _rem: &dyn Remediator) -> Result<String, RemediateError> {
        Err(RemediateError::Unsupported)
    }
}

/// Deserialises a check's fields (the `type` key removed; unknown keys refused).
pub(crate) fn spec<T: DeserializeOwned>(mut v: Value) -> Result<T, String> {
    if let Value::Object(m) = &mut v {
        m.remove("type");
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Host paths in a policy are absolute; anything else is a policy error.
pub(crate) fn abs_path(field: &str, p: &str) -> Result<(), String> {
    if p.starts_with('/') && !p.contains('\0') {
        Ok(())
    } else {
        Err(format!("{field} must be an absolute path, got {p:?}"))
    }
}

/// Builds the check named by `type`; unknown types are an error so the policy is refused whole.
pub fn build(check_type: &str, v: Value) -> Result<Box<dyn Check>, String> {
    Ok(match check_type {
        "config_value" => Box::new(config_value::ConfigValue::build(v)?),
        "file_contains" => Box::new(file_contains::FileContains::build(v)?),
        "sysctl" => Box::new(sysctl::Sysctl::build(v)?),
        "kernel_module" => Box::new(kernel_module::KernelModule::build(v)?),
        "file_mode" => Box::new(file_mode::FileMode::build(v)?),
        "file_hash" => Box::new(file_hash::FileHash::build(v)?),
        "accounts" => Box::new(accounts::Accounts::build(v)?),
        "listening_ports" => Box::new(listening_ports::ListeningPorts::build(v)?),
        "process_allowlist" => Box::new(process_allowlist::ProcessAllowlist::build(v)?),
        "exec" => Box::new(exec::Exec::build(v)?),
        "file_absent" => Box::new(file_absent::FileAbsent::build(v)?),
        "mount_options" => Box::new(mount_options::MountOptions::build(v)?),
        "usb_devices" => Box::new(usb_devices::UsbDevices::build(v)?),
        "service" => Box::new(service::Service::build(v)?),
        "json_value" => Box::new(json_value::JsonValue::build(v)?),
        other => return Err(format!("unknown check type {other:?}")),
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::fs;
    use std::sync::Mutex;
    use std::time::Duration;

    use crate::host::HostPaths;
    use crate::policy::runner::{CommandOutput, CommandRunner};

    /// A fixture root in a temp dir.
    pub struct Fx {
        /// Kept so the tree lives as long as the fixture.
        pub _dir: tempfile::TempDir,
        pub host: HostPaths,
    }

    impl Fx {
        pub fn new(files: &[(&str, &str)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let host = HostPaths::new(dir.path());
            let fx = Fx { _dir: dir, host };
            for (p, c) in files {
                fx.write(p, c);
            }
            fx
        }
        pub fn write(&self, p: &str, c: &str) {
            let full = self.host.resolve(p);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, c).unwrap();
        }
        pub fn read(&self, p: &str) -> String {
            fs::read_to_string(self.host.resolve(p)).unwrap()
        }
    }

    /// Answers commands from a table; records what was asked.
    #[derive(Debug, Default)]
    pub struct FakeRunner {
        pub answers: Vec<(Vec<String>, CommandOutput)>,
        pub calls: Mutex<Vec<Vec<String>>>,
    }

    impl FakeRunner {
        pub fn answer(mut self, argv: &[&str], code: i32, stdout: &str) -> Self {
            self.answers.push((
                argv.iter().map(|s| s.to_string()).collect(),
                CommandOutput {
                    code: Some(code),
                    stdout: stdout.into(),
                    stderr: String::new(),
                },
            ));
            self
        }
    }

    impl CommandRunner for FakeRunner {
        fn run(&self, argv: &[String], _t: Duration) -> Result<CommandOutput, String> {
            if let Ok(mut c) = self.calls.lock() {
                c.push(argv.to_vec());
            }
            self.answers
                .iter()
                .find(|(a, _)| a.as_slice() == argv)
                .map(|(_, o)| o.clone())
                .ok_or_else(|| format!("no such command: {}", argv.join(" ")))
        }
    }
}
