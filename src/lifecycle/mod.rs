//! The process lifecycle: signals, listeners, binary upgrade, drain, pid file, and the client
//! side of the control protocol. It serves whatever routers it is given and knows nothing of
//! the routes.
//!
//! # Binary upgrade (SIGUSR2)
//! 1. Refuse, with a log line and a recorded outcome, if an upgrade is in flight, if this
//!    process is draining, or if its parent (the previous generation) is still draining.
//! 2. Start the executable at the path recorded at start-up, with the same arguments, working
//!    directory and environment, plus the listening sockets as `LISTEN_FDS` (fds from 3) and
//!    `LISTEN_FDNAMES`, no `LISTEN_PID`, the write end of a readiness pipe and the next
//!    generation number. No other fd crosses.
//! 3. The child loads and validates its configuration, adopts the sockets (by name, else by
//!    address), binds only what it did not inherit, closes what its configuration no longer
//!    lists, builds its state, runs a self-check, starts accepting, writes the pid file, tells
//!    systemd `MAINPID`/`READY`, and only then writes `ready <pid>` on the pipe (so that the
//!    pid file and systemd name a live server the moment the parent may exit).
//! 4. The parent waits for that line with a deadline (`upgrade.ready_timeout`). End of file,
//!    an error line, or the deadline: the child is stopped and reaped, the parent keeps
//!    serving, the failure is recorded, and the next upgrade can start at once.
//! 5. On `ready` the parent drains (see `drain`) and exits 0. Both processes hold the same
//!    kernel socket, so there is one accept queue and no connection is ever refused.
//!
//! # Guarantees
//! - A failed upgrade changes nothing: same process, same sockets, same settings.
//! - No request is lost at a handover: the old process stops accepting only once the new one
//!   accepts from the same queue, and its keep-alive clients are told to reconnect (lame duck)
//!   before any idle connection is closed.
//! - At most one upgrade at a time; a burst of SIGUSR2 gives at most one.
//! - The pid file names a process that serves; it is removed only by the process it names.

mod control;
mod drain;
mod handover;
mod listeners;
mod pidfile;
mod record;
mod serve;
mod signals;
mod state;
mod supervisor;
mod systemd;
mod upgrade;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use tokio::task::JoinHandle;

pub use control::{ControlError, Located, Upgraded, locate, reload, stop, upgrade};
pub use handover::{ExecImage, Startup};
pub use listeners::ListenError;
pub use pidfile::{PidFileError, ProcStat, proc_stat, state_path};
pub use record::{ReloadSummary, ServerRecord, SupervisorRecord};
pub use signals::{Command, CommandSender, Commands};
pub use state::{ListenerInfo, Phase, ProcessState, RefusalRecord, UpgradeRecord};
pub use supervisor::SupervisorError;
pub use upgrade::UpgradeError;

use crate::settings::{ReloadOutcome, Settings, SettingsStore};
use crate::telemetry::Telemetry;
use listeners::Wanted;
use serve::Server;

/// Listener names: what the sockets are called when they cross an upgrade (`LISTEN_FDNAMES`)
/// and in a systemd socket unit (`FileDescriptorName=`).
pub const HTTP_LISTENER: &str = "http";
pub const ADMIN_LISTENER: &str = "admin";

/// The services to put behind the listeners.
#[derive(Debug, Clone)]
pub struct Routers {
    pub http: Router,
    /// Served on `admin.listen` when `admin.enabled`.
    pub admin: Router,
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down on request; the sockets are closed.
    Shutdown,
    /// Replaced by the next generation, which now serves.
    HandedOver { successor: u32 },
}

/// Everything the running lifecycle works with.
struct Context {
    settings: Arc<SettingsStore>,
    telemetry: Telemetry,
    process: ProcessState,
    image: ExecImage,
    parent_pid: Option<u32>,
    /// Set when a supervisor owns the pid file and does the upgrades.
    supervisor_pid: Option<u32>,
    from_systemd: bool,
}

/// Serves until shutdown or a successful upgrade, then drains. Failures before the process
/// serves are also reported to a waiting parent.
pub async fn run(
    startup: &mut Startup,
    mut commands: Commands,
    settings: Arc<SettingsStore>,
    telemetry: Telemetry,
    process: ProcessState,
    routers: Routers,
) -> Result<Exit, LifecycleError> {
    let initial = settings.current();
    let sockets = std::mem::take(&mut startup.sockets);
    let bound = match listeners::adopt_or_bind(sockets, startup.from_systemd, &wanted(&initial)) {
        Ok(bound) => bound,
        Err(err) => {
            startup.report_failure(&err.to_string());
            return Err(err.into());
        }
    };
    process.set_listeners(bound.iter().map(|b| b.info.clone()).collect());
    let paired = bound
        .into_iter()
        .map(|b| {
            let router = if b.info.name == ADMIN_LISTENER {
                routers.admin.clone()
            } else {
                routers.http.clone()
            };
            (b, router)
        })
        .collect();
    let mut server = Server::start(paired, &process);
    process.set_phase(Phase::Serving);

    let ctx = Context {
        settings,
        telemetry,
        process,
        image: startup.image.clone(),
        parent_pid: startup.parent_pid,
        supervisor_pid: startup.supervisor_pid,
        from_systemd: startup.from_systemd,
    };
    let pid_file = initial.lifecycle.pid_file.clone();
    // Before "ready": the parent may be gone a millisecond later, and the pid file must name
    // a live server by then. If the parent rejects us after all, it writes its own back.
    // Likewise systemd learns MAINPID before the old main process can exit.
    claim_pid_file(&ctx, &pid_file);
    if ctx.supervisor_pid.is_none() {
        systemd::ready(&format!("serving, generation {}", ctx.process.generation()));
    }
    if let Err(err) = startup.report_ready() {
        // The parent gave up (it stops us) or died (then we are the server): keep serving.
        tracing::warn!(error = %err, "could not tell the previous generation we are ready");
    }
    tracing::info!(
        pid = ctx.process.pid(),
        generation = ctx.process.generation(),
        version = ctx.process.version(),
        "serving"
    );

    let exit = serve_until_exit(&ctx, &mut commands, &server).await;
    if exit == Exit::Shutdown {
        systemd::stopping();
    }
    drain_until_done(&ctx, &mut commands, &mut server, &pid_file).await;
    if exit == Exit::Shutdown {
        // Both only if they still name us: a worker never owns the pid file.
        pidfile::remove_if_ours(&pid_file, ctx.process.pid());
        remove_state_if_ours(&pid_file, ctx.process.pid());
    }
    Ok(exit)
}

/// Whether `baton serve` should run the supervisor: when asked (`--supervise`,
/// `lifecycle.supervise`) or when running as PID 1, and never in a worker.
pub fn should_supervise(startup: &Startup, flag: bool, settings: &Settings) -> bool {
    !startup.is_worker() && (flag || settings.lifecycle.supervise || std::process::id() == 1)
}

/// Runs the supervisor (see `supervisor`) until shutdown; returns the exit code.
pub async fn supervise(
    startup: &mut Startup,
    config: crate::settings::ConfigSource,
    settings: Settings,
) -> Result<i32, SupervisorError> {
    let result = supervisor::run(startup, config, settings).await;
    if let Err(err) = &result {
        startup.report_failure(&err.to_string());
    }
    result
}

/// The supervisor's state file that goes with a pid file: `run/baton.supervisor.json`.
pub fn supervisor_path(pid_file: &std::path::Path) -> std::path::PathBuf {
    pid_file.with_extension("supervisor.json")
}

fn wanted(settings: &Settings) -> Vec<Wanted> {
    let mut wanted = vec![Wanted {
        name: HTTP_LISTENER,
        addr: settings.server.listen,
        key: "server.listen",
    }];
    if settings.admin.enabled {
        wanted.push(Wanted {
            name: ADMIN_LISTENER,
            addr: settings.admin.listen,
            key: "admin.listen",
        });
    }
    wanted
}

async fn serve_until_exit(ctx: &Context, commands: &mut Commands, server: &Server) -> Exit {
    let mut in_flight: Option<JoinHandle<Result<u32, UpgradeError>>> = None;
    loop {
        tokio::select! {
            command = commands.next() => match command {
                Some(Command::Reload) => reload_settings(ctx),
                Some(Command::Upgrade) => {
                    if let Some(handle) = begin_upgrade(ctx, server) {
                        in_flight = Some(handle);
                    }
                }
                Some(Command::Shutdown) | None => {
                    tracing::info!("shutdown requested");
                    return Exit::Shutdown;
                }
            },
            joined = async { in_flight.as_mut().expect("guarded by the branch condition").await }, if in_flight.is_some() => {
                in_flight = None;
                let result = joined.unwrap_or_else(|join| Err(UpgradeError::Protocol {
                    pid: 0,
                    detail: format!("the upgrade task failed: {join}"),
                }));
                match result {
                    Ok(successor) => {
                        tracing::info!(successor, "the next generation is ready; handing over");
                        ctx.process.record_upgrade(true, Some(successor), None);
                        return Exit::HandedOver { successor };
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "upgrade failed; still serving, nothing changed");
                        ctx.process.record_upgrade(false, None, Some(err.to_string()));
                        ctx.process.set_phase(Phase::Serving);
                        // The child may have claimed the pid file and MAINPID before it failed.
                        claim_pid_file(ctx, &ctx.settings.current().lifecycle.pid_file);
                        systemd::ready(&format!("serving, generation {}", ctx.process.generation()));
                    }
                }
            }
        }
    }
}

/// Starts an upgrade unless the process is busy with one, or its parent is still draining.
fn begin_upgrade(ctx: &Context, server: &Server) -> Option<JoinHandle<Result<u32, UpgradeError>>> {
    let refuse = |reason: String, in_flight: bool| {
        tracing::warn!(reason = %reason, "upgrade refused");
        ctx.process.record_refusal(reason, in_flight);
        publish(ctx);
        None
    };
    if let Some(supervisor) = ctx.supervisor_pid {
        return refuse(
            format!(
                "this is a supervised worker; send SIGUSR2 to the supervisor (pid {supervisor})"
            ),
            false,
        );
    }
    if let Some(parent) = ctx.parent_pid
        && nix::unistd::getppid().as_raw() == i32::try_from(parent).unwrap_or(-1)
    {
        return refuse(
            format!(
                "the previous generation (pid {parent}) is still draining; try again once it has exited"
            ),
            false,
        );
    }
    if !ctx.process.try_begin_upgrade() {
        return match ctx.process.phase() {
            Phase::Upgrading => refuse("an upgrade is already in progress".into(), true),
            phase => refuse(format!("the process is {phase:?}, not serving"), false),
        };
    }
    let mut sockets = Vec::new();
    for (name, listener) in server.listeners() {
        match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => sockets.push((name.to_owned(), fd)),
            Err(err) => {
                ctx.process.set_phase(Phase::Serving);
                let reason = format!("cannot duplicate the {name} socket: {err}");
                ctx.process
                    .record_upgrade(false, None, Some(reason.clone()));
                tracing::error!(%reason, "upgrade failed; still serving, nothing changed");
                publish(ctx);
                return None;
            }
        }
    }
    let settings = ctx.settings.current();
    let image = ctx.image.clone();
    let generation = ctx.process.generation();
    let from_systemd = ctx.from_systemd;
    tracing::info!(program = %image.program().display(), "upgrade requested");
    Some(tokio::spawn(async move {
        let handover = upgrade::Handover {
            generation: generation + 1,
            parent_pid: Some(std::process::id()),
            supervisor_pid: None,
            from_systemd,
        };
        upgrade::start_successor(
            &image,
            sockets,
            handover,
            settings.upgrade.ready_timeout,
            settings.lifecycle.shutdown_timeout,
        )
        .await
    }))
}

/// Drains while still answering signals: a second shutdown exits at once, an upgrade is
/// refused (this process is on its way out).
async fn drain_until_done(
    ctx: &Context,
    commands: &mut Commands,
    server: &mut Server,
    pid_file: &std::path::Path,
) {
    let settings = ctx.settings.current();
    let drain = drain::drain(
        server,
        &ctx.process,
        settings.lifecycle.lame_duck,
        settings.lifecycle.shutdown_timeout,
    );
    let mut drain = std::pin::pin!(drain);
    loop {
        tokio::select! {
            report = &mut drain => {
                tracing::info!(
                    lame_duck = ?report.lame_duck,
                    total = ?report.total,
                    cut = report.cut,
                    "drained; exiting"
                );
                return;
            }
            command = commands.next() => match command {
                Some(Command::Shutdown) | None => {
                    tracing::warn!(open_connections = ctx.process.open_connections(), "second shutdown signal: exiting now");
                    pidfile::remove_if_ours(pid_file, ctx.process.pid());
                    remove_state_if_ours(pid_file, ctx.process.pid());
                    std::process::exit(1);
                }
                Some(Command::Upgrade) => {
                    let reason = "this process is draining (replaced or shutting down); signal the current pid".to_owned();
                    tracing::warn!(%reason, "upgrade refused");
                    ctx.process.record_refusal(reason, false);
                }
                Some(Command::Reload) => {
                    tracing::info!("reload ignored: this process is draining");
                }
            }
        }
    }
}

/// Re-reads the configuration and applies what a running process can apply.
fn reload_settings(ctx: &Context) {
    systemd::reloading();
    let started = Instant::now();
    let outcome = ctx.settings.reload();
    let took = started.elapsed();
    match &outcome {
        ReloadOutcome::Applied {
            config_generation,
            upgrade_only,
        } => {
            let filter = ctx.settings.current().log.filter.clone();
            if let Err(err) = ctx.telemetry.set_filter(&filter) {
                tracing::error!(error = %err, "could not apply the new log filter");
            }
            tracing::info!(config_generation, ?took, "configuration reloaded");
            warn_upgrade_only(upgrade_only);
        }
        ReloadOutcome::Unchanged { upgrade_only } => {
            tracing::info!(?took, "configuration unchanged");
            warn_upgrade_only(upgrade_only);
        }
        ReloadOutcome::Rejected { error } => {
            tracing::error!(%error, "configuration rejected; the previous one stays in force");
        }
    }
    systemd::reloaded(&format!(
        "serving, generation {}, config generation {}",
        ctx.process.generation(),
        ctx.settings.generation()
    ));
    publish(ctx);
}

fn warn_upgrade_only(keys: &[&'static str]) {
    if !keys.is_empty() {
        tracing::warn!(
            keys = ?keys,
            "changed settings that take effect at the next upgrade (SIGUSR2), not at a reload"
        );
    }
}

/// Makes the pid file and the state file name this process. A supervised worker writes only
/// the state file: the pid file names the supervisor, the stable pid clients signal.
fn claim_pid_file(ctx: &Context, pid_file: &std::path::Path) {
    if ctx.supervisor_pid.is_none()
        && let Err(err) = pidfile::write(pid_file, ctx.process.pid())
    {
        tracing::error!(path = %pid_file.display(), error = %err, "could not write the pid file; `baton reload|upgrade|stop` will not find this process");
    }
    publish(ctx);
}

/// Writes the state file the client commands read. Only the serving generation writes it:
/// once draining, the file belongs to the next one.
fn publish(ctx: &Context) {
    if ctx.process.is_draining() {
        return;
    }
    let settings = ctx.settings.current();
    let pid = ctx.process.pid();
    let Some(stat) = proc_stat(pid) else {
        tracing::warn!("cannot read /proc/self/stat; the state file is not written");
        return;
    };
    let record = ServerRecord {
        pid,
        start_ticks: stat.start_ticks,
        generation: ctx.process.generation(),
        version: ctx.process.version().to_owned(),
        program: ctx.image.program.clone(),
        cwd: ctx.image.cwd.clone(),
        config_dir: ctx.image.cwd.join(&ctx.settings.source().dir),
        listeners: ctx.process.listeners(),
        supervised: ctx.supervisor_pid.is_some(),
        config_generation: ctx.settings.generation(),
        last_reload: ctx
            .settings
            .last_reload()
            .map(|r| summarize(r.seq, r.outcome, ctx.settings.generation())),
        last_upgrade: ctx.process.last_upgrade(),
        last_refusal: ctx.process.last_refusal(),
        ready_timeout_ms: millis(settings.upgrade.ready_timeout),
        shutdown_timeout_ms: millis(settings.lifecycle.shutdown_timeout),
    };
    let path = state_path(&settings.lifecycle.pid_file);
    if let Err(err) = record.write(&path) {
        tracing::warn!(path = %path.display(), error = %err, "could not write the state file");
    }
}

fn summarize(seq: u64, outcome: ReloadOutcome, in_force: u64) -> ReloadSummary {
    let keys = |keys: Vec<&'static str>| keys.into_iter().map(str::to_owned).collect();
    match outcome {
        ReloadOutcome::Applied {
            config_generation,
            upgrade_only,
        } => ReloadSummary {
            seq,
            result: "applied".into(),
            config_generation,
            error: None,
            upgrade_only: keys(upgrade_only),
        },
        ReloadOutcome::Unchanged { upgrade_only } => ReloadSummary {
            seq,
            result: "unchanged".into(),
            config_generation: in_force,
            error: None,
            upgrade_only: keys(upgrade_only),
        },
        ReloadOutcome::Rejected { error } => ReloadSummary {
            seq,
            result: "rejected".into(),
            config_generation: in_force,
            error: Some(error),
            upgrade_only: Vec::new(),
        },
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn remove_state_if_ours(pid_file: &std::path::Path, pid: u32) {
    let path = state_path(pid_file);
    if ServerRecord::read(&path).is_some_and(|r| r.pid == pid) {
        let _ = std::fs::remove_file(path);
    }
}
