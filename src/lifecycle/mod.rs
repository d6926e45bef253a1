//! The process lifecycle: signals, listeners, binary upgrade, drain, pid file, and the client
//! side of the control protocol. It serves whatever routers it is given and knows nothing of
//! the routes, nor of certificates: an application that wants TLS gives an [`Acceptor`] that
//! sets up each connection of the public listener (the handshake) and gets the same drain
//! (`Connection: close`, GOAWAY, lame duck, probation) on the stream it returns.
//!
//! # Binary upgrade (SIGUSR2)
//! 1. Refuse, with a log line and a recorded outcome, if an upgrade is in flight or this
//!    process is draining (`generation::begin_upgrade`; the supervisor's `upgrade`). A process
//!    whose own predecessor still stands by is not refused: it releases it (step 6) and goes on.
//! 2. Start the executable at the path recorded at start-up, with the same arguments, working
//!    directory and environment, plus the listening sockets as `LISTEN_FDS` (fds from 3) and
//!    `LISTEN_FDNAMES`, no `LISTEN_PID`, the write end of a readiness pipe and the next
//!    generation number (`upgrade::prepare`). No other fd crosses.
//! 3. The child loads and validates its configuration, adopts the sockets (by name, else by
//!    address), binds only what it did not inherit, closes what its configuration no longer
//!    lists, builds its state, runs a self-check, writes the pid file and the state file
//!    (`runfiles::claim`: a process that cannot is not ready), starts accepting, tells systemd
//!    `MAINPID`/`READY`, and only then writes `ready <pid>` on the pipe (`run`), with how long
//!    each step of its start took (`steps`) when the parent asked for them.
//! 4. The parent waits for that line with a deadline (`upgrade.ready_timeout`), watching the
//!    child's process rather than the pipe (a grandchild may hold the pipe open). Its death,
//!    an error line, the deadline, or a shutdown requested meanwhile: the child is stopped and
//!    reaped, the parent keeps serving (or, for the shutdown, drains), the failure is recorded.
//! 5. On `ready` the parent stops accepting and drains (`drain`), but keeps its copies of the
//!    sockets and stands by for `upgrade.probation` (`generation::standby`). If the child exits in
//!    that window, the parent takes the service back at once: it accepts again from the same
//!    queue, leaves draining, reclaims the run files and `MAINPID`, and records the rollback.
//!    While it drains it is listed next to the pid file (`draining`), and ends its drain early
//!    if `upgrade.max_draining` newer generations drain too.
//! 6. The standby ends when the probation passes, when the child writes `release` on the pipe
//!    (it starts an upgrade of its own, or shuts down), or when the parent is asked to shut
//!    down. The parent then closes its sockets, finishes its drain and exits 0. Both processes
//!    hold the same kernel socket throughout, so no connection is ever refused. Its final
//!    batch (`carry`) tells the child what it counted and, as `lineage`, how the upgrade and
//!    its drain went.
//!
//! # Guarantees
//! - A failed upgrade changes nothing: same process, same sockets, same settings.
//! - A new generation that dies within its probation is rolled back: the previous one serves
//!   again, from the same socket, within milliseconds.
//! - No request is lost at a handover: the old process stops accepting only once the new one
//!   accepts from the same queue, and its keep-alive clients are told to reconnect (lame duck,
//!   spread over `lifecycle.close_spread`) before any idle connection is closed.
//! - Long-lived responses (WebSockets, SSE) hold a `LongLived` lease: the drain tells them to
//!   end at its start and waits for them as for connections, up to the hammer, which counts
//!   what it cuts.
//! - At most one upgrade at a time per process; a burst of SIGUSR2 gives at most one. No
//!   upgrade waits for an older generation's drain; at most `upgrade.max_draining` drain at
//!   once (the oldest beyond that is hammered).
//! - Stop means stop: a shutdown stops a half-started successor first, and a process's first
//!   shutdown signal always drains (only a second one exits at once).
//! - The pid file names a process that serves; it is removed only by the process it names.

mod acceptor;
mod carry;
mod control;
mod drain;
mod draining;
mod drive;
mod exchange;
mod fds;
mod generation;
mod handover;
mod limits;
mod lineage;
mod listeners;
mod memory;
mod pidfile;
mod precheck;
mod record;
mod runfiles;
mod serve;
mod signals;
mod spawn;
mod spread;
mod state;
mod steps;
mod supervisor;
mod systemd;
mod trust;
mod upgrade;
mod watch;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

pub use acceptor::{Accepted, Acceptor, Io, Protocol};
pub use carry::{Carry, Inherited, Moment, UPGRADES};
pub use control::{ControlError, Located, Upgraded, locate, reload, stop, upgrade};
pub use draining::{DrainingRecord, draining_generations};
pub use fds::{FdLimit, raise_fd_limit};
pub use handover::{ExecImage, Startup};
pub use limits::{CloseReason, LimitCounters};
pub use lineage::{LINEAGE, Predecessor};
pub use listeners::ListenError;
pub use pidfile::{PidFileError, ProcStat, proc_stat, state_path};
pub use record::{ProcessRef, ReloadResult, ReloadSummary, ServerRecord, SupervisorRecord};
pub use runfiles::RunFileError;
pub use signals::{Command, CommandSender, Commands};
pub use state::{
    DrainRecord, ListenerInfo, LongLived, Phase, ProcessState, RefusalRecord, UpgradeCounts,
    UpgradeRecord, Wire, WrapUp,
};
pub use steps::{Step, Steps};
pub use supervisor::{SupervisorError, run as supervise};
pub use upgrade::UpgradeError;

use crate::settings::{Settings, SettingsStore};
use crate::telemetry::Telemetry;
use handover::ParentLink;
use listeners::Wanted;
pub use serve::{Answers, HttpService};
use serve::{Endpoint, Server};

/// Listener names: what the sockets are called when they cross an upgrade (`LISTEN_FDNAMES`)
/// and in a systemd socket unit (`FileDescriptorName=`).
pub const HTTP_LISTENER: &str = "http";
pub const ADMIN_LISTENER: &str = "admin";

/// The services to put behind the listeners, and what they carry across an upgrade.
#[derive(Debug, Clone)]
pub struct Routers {
    pub http: HttpService,
    /// Served on `admin.listen` when `admin.enabled`.
    pub admin: HttpService,
    /// Handed to the next generation (see [`Carry`]); `None` carries nothing.
    pub carry: Option<Arc<dyn Carry>>,
    /// Sets up each connection of the public listener before HTTP (TLS); `None`: plain HTTP.
    pub http_acceptor: Option<Arc<dyn Acceptor>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    RunFiles(#[from] RunFileError),
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down on request; the sockets are closed.
    Shutdown,
    /// Replaced by the next generation, which now serves (in supervised mode the supervisor
    /// knows which; the worker does not).
    HandedOver { successor: Option<u32> },
}

/// What this serving process is to the others of its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Started by a user or systemd.
    Standalone,
    /// Started by a previous generation's upgrade (direct mode).
    Successor { parent: u32 },
    /// A supervisor's worker: the supervisor owns the pid file and does the upgrades.
    Worker { supervisor: u32 },
}

impl Role {
    fn of(startup: &Startup) -> Role {
        match (startup.supervisor_pid, startup.parent_pid) {
            (Some(supervisor), _) => Role::Worker { supervisor },
            (None, Some(parent)) => Role::Successor { parent },
            (None, None) => Role::Standalone,
        }
    }

    fn is_worker(self) -> bool {
        matches!(self, Role::Worker { .. })
    }

    fn supervisor(self) -> Option<u32> {
        match self {
            Role::Worker { supervisor } => Some(supervisor),
            _ => None,
        }
    }

    fn parent(self) -> Option<u32> {
        match self {
            Role::Successor { parent } => Some(parent),
            _ => None,
        }
    }
}

/// Everything the running lifecycle works with.
struct Context {
    settings: Arc<SettingsStore>,
    telemetry: Telemetry,
    process: ProcessState,
    image: ExecImage,
    role: Role,
    from_systemd: bool,
    /// The previous generation while it may still run (see `ServerRecord::previous`).
    previous: Option<ProcessRef>,
    /// When the previous generation stops standing by.
    probation_until: Option<SystemTime>,
    carry: Option<Arc<dyn Carry>>,
    /// True once the previous generation's final batch is in (see `wait_predecessor_final`).
    predecessor_final: tokio::sync::watch::Receiver<bool>,
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
    // A failure from here to "ready" reaches a waiting parent through the caller, which
    // reports every error of `serve` on the readiness pipe.
    let bound = listeners::adopt_or_bind(sockets, startup.from_systemd, &wanted(&initial))?;
    process.set_listeners(bound.iter().map(|b| b.info.clone()).collect());
    let paired = bound
        .into_iter()
        .map(|b| {
            let endpoint = if b.info.name == ADMIN_LISTENER {
                Endpoint {
                    service: routers.admin.clone(),
                    acceptor: None,
                }
            } else {
                Endpoint {
                    service: routers.http.clone(),
                    acceptor: routers.http_acceptor.clone(),
                }
            };
            (b, endpoint)
        })
        .collect();
    let role = Role::of(startup);
    let (final_in, predecessor_final) = tokio::sync::watch::channel(false);
    let ctx = Context {
        settings,
        telemetry,
        process,
        image: startup.image.clone(),
        role,
        from_systemd: startup.from_systemd,
        previous: runfiles::previous_generation(role.parent()),
        probation_until: startup.probation.map(|p| SystemTime::now() + p),
        carry: routers.carry.clone(),
        predecessor_final,
    };
    // Before "ready" and before the first connection: the parent may be gone a millisecond
    // after "ready", and the run files must name a live server by then. A process that cannot
    // write them is not ready (no client could find it); if the parent rejects us after all,
    // it writes its own back.
    startup.lap(Step::Listen);
    runfiles::claim(&ctx)?;
    startup.lap(Step::RunFiles);
    // Serving before the first accept: a client whose `/healthz` was answered must not then
    // get `/readyz` 503 "starting" because this thread was descheduled between the two.
    ctx.process.set_phase(state::Phase::Serving);
    let server = Server::start(paired, &ctx.process, &ctx.settings);
    tokio::spawn(memory::give_back_after_bursts(ctx.process.clone()));
    // Likewise systemd learns MAINPID before the old main process can exit.
    if !ctx.role.is_worker() {
        systemd::ready(&format!("serving, generation {}", ctx.process.generation()));
    }
    let link = startup.report_ready().unwrap_or_else(|err| {
        // The parent gave up (it stops us) or died (then we are the server): keep serving.
        tracing::warn!(error = %err, "could not tell the previous generation we are ready");
        ParentLink::default()
    });
    let told = startup.final_end_told();
    import_final_state(
        &mut startup.inherited,
        &ctx.process,
        ctx.carry.clone(),
        final_in,
        told,
    );
    let steps = startup.steps();
    tracing::info!(
        pid = ctx.process.pid(),
        generation = ctx.process.generation(),
        version = ctx.process.version(),
        start_ms = steps.total_ms(),
        steps = steps.to_string().as_str(),
        "serving"
    );
    let orders = startup.orders.take().and_then(|fd| {
        generation::Orders::new(fd)
            .inspect_err(|err| tracing::warn!(error = %err, "cannot read the supervisor's orders"))
            .ok()
    });
    Ok(generation::run(&ctx, &mut commands, server, link, orders).await)
}

/// Hands the previous generation's final batch, when it comes, to the application; its
/// lineage entry (see `lineage`) is the lifecycle's own. `final_in` says when it is all in:
/// at end of file, when the previous generation has exited, or at an `end` line, which a
/// supervisor writes as it keeps the pipe open (see `relay_state`). Unless nothing will tell
/// (`told`): then it is not waited for.
fn import_final_state(
    inherited: &mut Inherited,
    process: &ProcessState,
    carry: Option<Arc<dyn Carry>>,
    final_in: tokio::sync::watch::Sender<bool>,
    told: bool,
) {
    if !told {
        final_in.send_replace(true);
    }
    let Some((fd, leftover)) = inherited.rest.take() else {
        final_in.send_replace(true);
        return;
    };
    let process = process.clone();
    let mut lines = match upgrade::LineReader::with_buffer(fd, leftover) {
        Ok(lines) => lines,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the previous generation's final state");
            final_in.send_replace(true);
            return;
        }
    };
    tokio::spawn(async move {
        // Ends at end of file: the previous generation has exited (or its supervisor has).
        while let Ok(line) = lines.line().await {
            if line.is_empty() {
                break;
            }
            if line == carry::END_WORD {
                final_in.send_replace(true);
                continue;
            }
            match carry::parse_state(&line) {
                Some((kind, payload)) if kind == lineage::LINEAGE => {
                    lineage::import(&process, &payload);
                }
                Some((kind, payload)) => {
                    if let Some(carry) = &carry {
                        carry.import(&kind, &payload);
                    }
                }
                None => {}
            }
        }
        final_in.send_replace(true);
    });
}

/// Waits until the previous generation's final batch is in, before this one hands its own
/// on: each report is cumulative and the larger wins, so the counts the previous generation
/// answered while it drained reach the next ones only through ours. It only waits when the
/// previous generation drains longer than this one (a slow request, then two upgrades in a
/// row), and no longer than `lifecycle.shutdown_timeout`, which ends that drain anyway, or
/// until a shutdown signal.
async fn wait_predecessor_final(ctx: &Context, commands: &mut Commands) {
    let mut final_in = ctx.predecessor_final.clone();
    if *final_in.borrow() {
        return;
    }
    tracing::info!(
        "drained; waiting for the previous generation's drain to end, to hand its counts on with ours"
    );
    let deadline = tokio::time::sleep(ctx.settings.current().lifecycle.shutdown_timeout);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            // An error: the reading task ended without saying so; nothing more will come.
            _ = final_in.wait_for(|done| *done) => return,
            () = &mut deadline => {
                tracing::warn!("the previous generation's final counts did not come; handing over without them");
                return;
            }
            command = commands.next() => match command {
                Some(Command::Shutdown) | None => return,
                Some(Command::Upgrade) => generation::refuse_draining(ctx),
                Some(Command::Reload) => tracing::info!("reload ignored: this process is draining"),
            },
        }
    }
}

/// Whether `baton serve` should run the supervisor: when asked (`--supervise`,
/// `lifecycle.supervise`) or when running as PID 1, and never in a worker.
pub fn should_supervise(startup: &Startup, flag: bool, settings: &Settings) -> bool {
    !startup.is_worker() && (flag || settings.lifecycle.supervise || std::process::id() == 1)
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

/// Duplicates of the listening sockets, by name, for the next generation.
fn duplicate_sockets<'a>(
    listeners: impl Iterator<Item = (&'a str, &'a tokio::net::TcpListener)>,
) -> Result<Vec<(String, OwnedFd)>, String> {
    listeners
        .map(|(name, listener)| {
            listener
                .as_fd()
                .try_clone_to_owned()
                .map(|fd| (name.to_owned(), fd))
                .map_err(|err| format!("cannot duplicate the {name} socket: {err}"))
        })
        .collect()
}
