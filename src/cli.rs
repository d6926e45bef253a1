//! The command line: `baton [serve]`, `check`, `reload`, `upgrade`, `stop`, `status`, `health`.
//! Each subcommand returns the exit code it wants; `main` only parses and dispatches.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::lifecycle::{self, ControlError, Startup};
use crate::settings::{self, ConfigSource, Settings};

#[derive(Debug, Parser)]
#[command(name = "baton", version = crate::version(), about = "An axum service that is never down")]
pub struct Cli {
    /// Directory holding default.toml and <BATON_ENV>.toml.
    #[arg(
        long,
        global = true,
        env = "BATON_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Serve (the default).
    Serve {
        /// Run a supervisor that keeps a stable pid and upgrades worker processes (always on
        /// when baton is PID 1, e.g. in a container).
        #[arg(long)]
        supervise: bool,
    },
    /// Validate the configuration and print the effective settings (secrets redacted).
    Check,
    /// Reload the running server's configuration (SIGUSR1) and report the outcome.
    Reload {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        timeout: Duration,
    },
    /// Replace the running binary with the one at its path (SIGUSR2) and report the outcome.
    Upgrade {
        /// Default: the server's upgrade.ready_timeout plus 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Drain and stop the running server (SIGTERM), waiting until it has exited.
    Stop {
        /// Default: the server's lifecycle.shutdown_timeout plus 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Show whether baton runs: exit 0 running, 3 not running, 1 stale pid file.
    Status,
    /// Exit 0 if the server answers GET /healthz with 200 (for container health checks).
    Health {
        /// Address to probe; default: server.listen from the configuration.
        #[arg(long)]
        addr: Option<SocketAddr>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        timeout: Duration,
    },
}

/// Runs the parsed command. `startup` is only used by `serve`, but must be captured before
/// anything starts a thread, so `main` captures it first.
pub fn run(cli: Cli, startup: Startup) -> ExitCode {
    let source = ConfigSource::from_env(cli.config_dir.clone());
    match cli.command.unwrap_or(Cmd::Serve { supervise: false }) {
        Cmd::Serve { supervise } => match crate::server::serve(startup, source, supervise) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(err) => fail(&format!("baton: {err}"), 1),
        },
        Cmd::Check => check(&source),
        Cmd::Reload { timeout } => {
            // Checked here first so the user sees the reason even if the server's log is
            // elsewhere; the server validates again with its own environment.
            if let Err(err) = Settings::load(&source) {
                return fail(&format!("reload rejected: invalid configuration: {err}"), 1);
            }
            report(lifecycle::reload(&pid_file(&source), timeout).map(|r| {
                let mut line = match r.result.as_str() {
                    "applied" => format!("reloaded (config generation {})", r.config_generation),
                    _ => format!("unchanged (config generation {})", r.config_generation),
                };
                if !r.upgrade_only.is_empty() {
                    let verb = if r.upgrade_only.len() == 1 { "takes" } else { "take" };
                    line.push_str(&format!(
                        "\nnote: {} {verb} effect at the next upgrade, not at a reload",
                        r.upgrade_only.join(", ")
                    ));
                }
                line
            }))
        }
        Cmd::Upgrade { timeout } => report(
            lifecycle::upgrade(&pid_file(&source), timeout)
                .map(|u| match u.supervisor {
                    Some(sup) => format!(
                        "upgraded {} -> {} ({}), supervisor pid {sup}",
                        u.old_pid, u.new_pid, u.version
                    ),
                    None => format!("upgraded {} -> {} ({})", u.old_pid, u.new_pid, u.version),
                }),
        ),
        Cmd::Stop { timeout } => {
            report(lifecycle::stop(&pid_file(&source), timeout).map(|pid| format!("stopped {pid}")))
        }
        Cmd::Status => report(lifecycle::locate(&pid_file(&source)).map(|l| {
            let Some(r) = &l.record else {
                return format!(
                    "running: pid {}, supervised, no worker serving right now (starting or restarting one)",
                    l.pid
                );
            };
            let listeners: Vec<String> = r
                .listeners
                .iter()
                .map(|l| format!("{}={}", l.name, l.addr))
                .collect();
            let mode = match &l.supervisor {
                Some(_) => format!("supervised, worker pid {}, ", r.pid),
                None => String::new(),
            };
            format!(
                "running: pid {}, {mode}generation {}, version {}, config generation {}, listening {}",
                l.pid,
                r.generation,
                r.version,
                r.config_generation,
                listeners.join(" ")
            )
        })),
        Cmd::Health { addr, timeout } => health(&source, addr, timeout),
    }
}

/// The pid file from the configuration; with a broken configuration, the best guess, so that
/// `stop` and `status` still work.
fn pid_file(source: &ConfigSource) -> PathBuf {
    match Settings::load(source) {
        Ok(settings) => settings.lifecycle.pid_file,
        Err(_) => settings::lenient_pid_file(source),
    }
}

fn check(source: &ConfigSource) -> ExitCode {
    match Settings::load(source) {
        Ok(settings) => {
            print!("{}", settings.to_redacted_toml());
            eprintln!("configuration ok ({})", source.dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => fail(&format!("invalid configuration: {err}"), 1),
    }
}

fn report(result: Result<String, ControlError>) -> ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err.to_string(), err.exit_code()),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(code)
}

/// A dependency-free probe: one HTTP/1.1 request on a fresh connection.
fn health(source: &ConfigSource, addr: Option<SocketAddr>, timeout: Duration) -> ExitCode {
    let addr = match addr {
        Some(addr) => addr,
        None => match Settings::load(source) {
            Ok(settings) => settings.server.listen,
            Err(err) => return fail(&format!("invalid configuration: {err}"), 1),
        },
    };
    let probe = || -> std::io::Result<String> {
        use std::io::Write;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = String::new();
        stream.take(4096).read_to_string(&mut head)?;
        Ok(head.lines().next().unwrap_or_default().to_owned())
    };
    match probe() {
        Ok(status) if status.split_whitespace().nth(1) == Some("200") => {
            println!("healthy ({addr})");
            ExitCode::SUCCESS
        }
        Ok(status) => fail(&format!("unhealthy ({addr}): {status}"), 1),
        Err(err) => fail(&format!("unhealthy ({addr}): {err}"), 1),
    }
}
