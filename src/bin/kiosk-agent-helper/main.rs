//! `kiosk-agent-helper`: the small root process that does what the unprivileged daemon may
//! not (see `kiosk_agent::helper`). Socket-activated by `kiosk-agent-helper.socket`, or binds
//! `helper.socket` itself when started by hand. `call` sends one request line from stdin.

use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use kiosk_agent::config::Config;
use kiosk_agent::helper::{Client, Helper};
use kiosk_agent::host::SystemClock;

mod log;

const USAGE: &str = "\
Privileged helper of kiosk-agent

Usage: kiosk-agent-helper [--config <FILE>] [serve | call [--socket <SOCKET>]]

Commands:
  serve  Serve the daemon (the default)
  call   Send one request line read from stdin and print the reply; exit 0 only when it is `ok`

Options:
  --config <FILE>    Configuration file (TOML), shared with the daemon; root-owned
                     [default: /etc/kiosk-agent/agent.toml]
  --socket <SOCKET>  (call) Socket to use instead of `helper.socket`
  -h, --help         Print help
  -V, --version      Print version
";

enum Cmd {
    Serve,
    Call { socket: Option<PathBuf> },
}

/// What the command line asks for; `Err` is the exit to take at once (help, version, misuse).
/// Parsed by hand: the resident root process should not map an argument-parsing library for
/// four options.
fn parse_args(
    mut args: impl Iterator<Item = std::ffi::OsString>,
) -> Result<(PathBuf, Cmd), ExitCode> {
    let usage_error = |msg: String| {
        eprintln!(
            "error: {msg}\n\nUsage: kiosk-agent-helper [--config <FILE>] [serve | call [--socket <SOCKET>]]\n\nFor more information, try '--help'."
        );
        ExitCode::from(2)
    };
    let mut config = PathBuf::from("/etc/kiosk-agent/agent.toml");
    let mut cmd: Option<Cmd> = None;
    while let Some(arg) = args.next() {
        let Some(a) = arg.to_str() else {
            return Err(usage_error(format!("unexpected argument {arg:?}")));
        };
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(PathBuf::from(v))),
            _ => (a, None),
        };
        let mut value = |name: &str| match inline.clone().or_else(|| args.next().map(PathBuf::from))
        {
            Some(v) => Ok(v),
            None => Err(usage_error(format!(
                "a value is required for '--{name} <{}>'",
                name.to_uppercase()
            ))),
        };
        match (flag, &mut cmd) {
            ("-h" | "--help", _) => {
                print!("{USAGE}");
                return Err(ExitCode::SUCCESS);
            }
            ("-V" | "--version", _) => {
                println!("kiosk-agent-helper {}", kiosk_agent::VERSION);
                return Err(ExitCode::SUCCESS);
            }
            ("--config", _) => config = value("config")?,
            ("--socket", Some(Cmd::Call { socket })) => *socket = Some(value("socket")?),
            ("serve", None) => cmd = Some(Cmd::Serve),
            ("call", None) => cmd = Some(Cmd::Call { socket: None }),
            _ => return Err(usage_error(format!("unexpected argument '{a}' found"))),
        }
    }
    Ok((config, cmd.unwrap_or(Cmd::Serve)))
}

fn main() -> ExitCode {
    let (config, cmd) = match parse_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiosk-agent-helper: {e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Cmd::Call { socket } => call(&cfg, socket),
        Cmd::Serve => serve(cfg),
    }
}

fn call(cfg: &Config, socket: Option<PathBuf>) -> ExitCode {
    let Some(socket) = socket.or_else(|| cfg.helper.socket.clone()) else {
        eprintln!("kiosk-agent-helper: helper.socket is not set; pass --socket");
        return ExitCode::from(2);
    };
    let mut line = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut line) {
        eprintln!("kiosk-agent-helper: reading stdin: {e}");
        return ExitCode::from(2);
    }
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    let reply = Client::new(socket).call_raw(&line);
    println!("{}", serde_json::to_string(&reply).unwrap_or_default());
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn serve(cfg: Config) -> ExitCode {
    log::init(cfg.log.level, "kiosk-agent-helper");
    let daemon = match nix::unistd::User::from_name(&cfg.helper.daemon_user) {
        Ok(Some(u)) => u,
        Ok(None) => {
            eprintln!(
                "kiosk-agent-helper: helper.daemon_user {:?} does not exist",
                cfg.helper.daemon_user
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("kiosk-agent-helper: looking up helper.daemon_user: {e}");
            return ExitCode::from(2);
        }
    };
    let (listener, activated) = match listener(&cfg, daemon.gid.as_raw()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kiosk-agent-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only systemd can start the helper again, so only a socket-activated helper leaves.
    let idle_exit = (activated && cfg.helper.idle_exit_s > 0)
        .then(|| std::time::Duration::from_secs(cfg.helper.idle_exit_s));
    let clock = Arc::new(SystemClock::from_env());
    let helper = Arc::new(Helper::new(cfg.into(), daemon.uid.as_raw(), clock));
    tracing::info!(daemon_uid = daemon.uid.as_raw(), "kiosk-agent-helper ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    match helper.serve(&listener, idle_exit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiosk-agent-helper: accept: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The socket systemd passed (LISTEN_FDS), else `helper.socket` bound here: root-owned,
/// group of the daemon's account, 0660. SO_PEERCRED is checked on every connection anyway.
fn listener(cfg: &Config, daemon_gid: u32) -> Result<(UnixListener, bool), String> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if ours && std::env::var("LISTEN_FDS").ok().as_deref() == Some("1") {
        // SAFETY: systemd passes the listening socket as fd 3 (sd_listen_fds(3)); nothing
        // else in this process owns it.
        return Ok((unsafe { UnixListener::from_raw_fd(3) }, true));
    }
    let Some(path) = cfg.helper.socket.as_deref() else {
        return Err("helper.socket is not set and no socket was passed by systemd".into());
    };
    bind(path, daemon_gid)
        .map(|l| (l, false))
        .map_err(|e| format!("binding {}: {e}", path.display()))
}

fn bind(path: &Path, gid: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}
