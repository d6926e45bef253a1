//! The command line: `baton [serve]`, `check`, `migrate`, `reload`, `upgrade`, `stop`, `status`,
//! `health`.
//! Each subcommand returns the exit code it wants; `main` only parses and dispatches.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::database::{self, Migrations};
use crate::lifecycle::{self, ControlError, ReloadResult, Startup};
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
    /// Validate the configuration and print the effective settings (secrets redacted), and
    /// the TLS certificate's summary when TLS is on.
    Check,
    /// Apply the pending database migrations, as each new generation does before it serves;
    /// with --check, only list them.
    Migrate {
        /// List what would be applied, change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Reload the running server's configuration (SIGUSR1) and report the outcome.
    Reload {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        timeout: Duration,
    },
    /// Replace the running binary with the one at its path (SIGUSR2) and report the outcome.
    Upgrade {
        /// The build the server will start: its `check` runs first, and the upgrade is refused
        /// if the server would start another file. Default: this command's own executable.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long to wait for the next generation to be ready (its probation is waited for
        /// after that). It bounds the check of the new build too, which gets 30s at most.
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
    /// Show whether baton runs (and, on a second line `program: PATH`, the binary an upgrade
    /// starts): exit 0 running, 3 not running, 1 stale or untrusted run files.
    Status,
    /// Exit 0 if the server answers GET /healthz with 200 (for container health checks);
    /// over TLS when `tls.cert` is set, trusting exactly that certificate.
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
        Cmd::Migrate { check } => migrate(&source, check),
        Cmd::Reload { timeout } => {
            // Checked here first so the user sees the reason even if the server's log is
            // elsewhere; the server validates again with its own environment.
            if let Err(err) = Settings::load(&source) {
                return fail(&format!("reload rejected: invalid configuration: {err}"), 1);
            }
            report(lifecycle::reload(&pid_file(&source), timeout).map(|r| {
                // A rejection came back as an error; what is left is applied or unchanged.
                let mut line = match r.result {
                    ReloadResult::Applied => {
                        format!("reloaded (config generation {})", r.config_generation)
                    }
                    ReloadResult::Unchanged | ReloadResult::Rejected => {
                        format!("unchanged (config generation {})", r.config_generation)
                    }
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
        Cmd::Upgrade { binary, timeout } => report(
            lifecycle::upgrade(&pid_file(&source), binary.as_deref(), timeout)
                .map(|u| match u.supervisor {
                    Some(sup) => format!(
                        "upgraded {} -> {} ({}), supervisor pid {sup}",
                        u.old_pid, u.new_pid, u.version
                    ),
                    None => format!("upgraded {} -> {} ({})", u.old_pid, u.new_pid, u.version),
                }),
        ),
        Cmd::Stop { timeout } => {
            report(lifecycle::stop(&pid_file(&source), timeout).map(|pids| {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("stopped {}", pids.join(" "))
            }))
        }
        Cmd::Status => report(lifecycle::locate(&pid_file(&source)).map(|l| {
            let draining = draining_summary(&pid_file(&source));
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
            // The second line is for scripts too (restart.sh): `program: <path>`, the file an
            // upgrade starts.
            format!(
                "running: pid {}, {mode}generation {}, version {}, config generation {}, listening {}{draining}\nprogram: {}",
                l.pid,
                r.generation,
                r.version,
                r.config_generation,
                listeners.join(" "),
                r.program_path().display()
            )
        })),
        Cmd::Health { addr, timeout } => health(&source, addr, timeout),
    }
}

/// The old generations still draining, for `baton status`: empty when there are none.
fn draining_summary(pid_file: &std::path::Path) -> String {
    let draining: Vec<String> = lifecycle::draining_generations(pid_file)
        .iter()
        .map(|d| {
            let since = d.since.elapsed().unwrap_or_default().as_secs();
            format!(
                "pid {} (generation {}, {} connections, {} long-lived, for {since}s)",
                d.pid, d.generation, d.open_connections, d.long_lived
            )
        })
        .collect();
    if draining.is_empty() {
        return String::new();
    }
    format!("; draining: {}", draining.join(", "))
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
            match crate::tls::check(&settings) {
                Ok(None) => {}
                Ok(Some(certificate)) => {
                    eprintln!(
                        "tls: {} and {}: {}",
                        certificate.cert.display(),
                        certificate.key.display(),
                        certificate.line()
                    );
                    if certificate.expires_soon() {
                        eprintln!("warning: the TLS certificate expires within 14 days; renew it");
                    }
                }
                Err(err) => return fail(&format!("invalid TLS certificate: {err}"), 1),
            }
            eprintln!("configuration ok ({})", source.dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => fail(&format!("invalid configuration: {err}"), 1),
    }
}

fn migrate(source: &ConfigSource, check_only: bool) -> ExitCode {
    let settings = match Settings::load(source) {
        Ok(settings) => settings,
        Err(err) => return fail(&format!("invalid configuration: {err}"), 1),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}"), 1),
    };
    let url = settings.database.url.redacted();
    let backend = match database::Backend::of(&settings.database.url) {
        Ok(backend) => backend,
        Err(err) => return fail(&format!("migrate: {err}"), 1),
    };
    let outcome = runtime.block_on(async {
        let migrations = Migrations::from_env().await?;
        let done = database::migrate(&settings.database, &migrations, !check_only).await?;
        Ok::<_, database::DbError>((done, migrations))
    });
    let (done, migrations) = match outcome {
        Ok(outcome) => outcome,
        Err(err) => return fail(&format!("migrate: {err}"), 1),
    };
    let verb = if check_only { "would apply" } else { "applied" };
    let count = |n: usize| format!("{n} migration{}", if n == 1 { "" } else { "s" });
    if done.is_empty() {
        println!(
            "{url}: up to date ({}, {})",
            count(migrations.all(backend).len()),
            migrations.source()
        );
    } else {
        println!("{url}: {verb} {}:", count(done.len()));
        for migration in &done {
            println!("  {migration}");
        }
    }
    ExitCode::SUCCESS
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

/// One HTTP/1.1 request on a fresh connection; over TLS when the configuration has TLS on.
fn health(source: &ConfigSource, addr: Option<SocketAddr>, timeout: Duration) -> ExitCode {
    // With an explicit address, a broken configuration only means plain HTTP.
    let settings = Settings::load(source);
    let addr = match (addr, &settings) {
        (Some(addr), _) => addr,
        (None, Ok(settings)) => settings.server.listen,
        (None, Err(err)) => return fail(&format!("invalid configuration: {err}"), 1),
    };
    if let Some(cert) = settings.ok().and_then(|s| s.tls.cert) {
        return match crate::tls::get_status_line(addr, &cert, timeout) {
            Ok(status) if status.split_whitespace().nth(1) == Some("200") => {
                println!("healthy ({addr}, TLS)");
                ExitCode::SUCCESS
            }
            Ok(status) => fail(&format!("unhealthy ({addr}, TLS): {status}"), 1),
            Err(err) => fail(&format!("unhealthy ({addr}, TLS): {err}"), 1),
        };
    }
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
