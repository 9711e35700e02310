//! `kiosk-agent`: the daemon (foreground; `Type=notify` under systemd) and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kiosk_agent::config::Config;
use kiosk_agent::host::SystemClock;

#[derive(Parser)]
#[command(
    name = "kiosk-agent",
    version,
    about = "Terminal-side agent for government-service self-service kiosks"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/kiosk-agent/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the configuration and the trust root it names; exit non-zero naming the key
    /// at fault.
    CheckConfig {
        /// Check the configuration file only, not the trust root (before provisioning).
        #[arg(long)]
        config_only: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiosk-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::CheckConfig { config_only }) = cli.cmd {
        // Every file the daemon reads at start-up, opened and parsed as the daemon will.
        let mut problems = kiosk_agent::config::check_files(&cfg);
        if problems.is_empty()
            && cfg.mqtt.url.starts_with("mqtts://")
            && let Err(e) = kiosk_agent::transport::tls::client_config(
                cfg.mqtt.ca_file.as_deref(),
                cfg.mqtt.cert_file.as_deref(),
                cfg.mqtt.key_file.as_deref(),
            )
        {
            problems.push(e.to_string());
        }
        if !problems.is_empty() {
            eprintln!(
                "kiosk-agent: {}: invalid configuration:\n  {}",
                cli.config.display(),
                problems.join("\n  ")
            );
            return ExitCode::from(2);
        }
        if !config_only && let Err(e) = kiosk_agent::trust::TrustStore::load(&cfg.paths.trust_file)
        {
            eprintln!(
                "kiosk-agent: paths.trust_file: {e} (the terminal is not provisioned yet: install the platform's trust root with {})",
                kiosk_agent::app::PROVISION
            );
            return ExitCode::from(2);
        }
        println!(
            "{}: ok (terminal {}, {} probe(s))",
            cli.config.display(),
            cfg.terminal.id,
            cfg.probes.len()
        );
        return ExitCode::SUCCESS;
    }
    kiosk_agent::app::limit_arenas();
    kiosk_agent::logging::init(cfg.log.level);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiosk-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let clock = Arc::new(SystemClock::from_env());
    let result = runtime.block_on(kiosk_agent::app::run(cfg, clock));
    // A download blocked in a read stops at its next byte or its idle timeout; the journal
    // resumes it on the next start, so exit now rather than wait inside systemd's stop timeout.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages already carry their causes. Logged once: to the journal under
            // systemd, else as a plain line on stderr (where the log would say it again).
            if kiosk_agent::logging::under_journald() {
                tracing::error!("{e}");
            } else {
                eprintln!("kiosk-agent: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
