//! The supervisor: the one part of baton that an upgrade does not replace.
//!
//! Used when baton is PID 1 (a container stops when PID 1 exits, so the fork-and-exit upgrade
//! of direct mode would stop the container; tini does not help, it exits with its child) or
//! when asked (`lifecycle.supervise`, `baton serve --supervise`). It keeps the stable pid and
//! the listening sockets, and runs the serving code in a worker process:
//! - starts a worker with the sockets through the same `LISTEN_FDS` + readiness protocol as a
//!   direct upgrade, and writes the pid file (its own pid) once the worker is ready;
//! - SIGUSR1/SIGHUP: forwarded to the current worker, which reloads and records the outcome;
//! - SIGUSR2: starts a new worker from the binary path; only once it is ready is the old one
//!   told to drain (SIGTERM). A new worker that fails changes nothing;
//! - reaps every child, orphans included (it may be PID 1), with `waitpid(-1)`;
//! - restarts a worker that dies unexpectedly, with back-off, and gives up loudly (exit 1)
//!   after repeated quick deaths. The sockets stay open meanwhile: connections wait in the
//!   accept queue instead of being refused;
//! - SIGTERM/SIGINT/SIGQUIT: drains the workers and exits with the current worker's status;
//!   a second one kills them and exits at once.
//!
//! It never accepts a connection and never loads application code, so there is little in it
//! that an upgrade would need to change. Changing the listen addresses needs a restart of the
//! supervisor (e.g. of the container).

use std::collections::HashMap;
mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::handover::{ExecImage, Startup};
use super::record::{SupervisorRecord, UpgradeBook};
use super::signals::{Command, Commands};
use super::state::ProcessState;
use super::upgrade::{self, Ready, UpgradeError};
use super::{listeners, pidfile, systemd, wanted};
use crate::settings::{ConfigSource, Settings};

/// A worker that lived at least this long before dying resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Quick deaths in a row before the supervisor gives up.
const MAX_QUICK_DEATHS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Listen(#[from] listeners::ListenError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(
        "cannot write the pid file {}: {source}; the client commands find the supervisor \
         through it: make its directory writable, or set lifecycle.pid_file",
        path.display()
    )]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the first worker did not start: {0}")]
    FirstWorker(#[source] UpgradeError),
    #[error(
        "the worker died {MAX_QUICK_DEATHS} times in a row within {STABLE_AFTER:?} of starting; \
         giving up (see its log lines above)"
    )]
    GaveUp,
}

/// Why a worker is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    First,
    Upgrade,
    Restart,
}

#[derive(Debug, Clone, Copy)]
struct Worker {
    pid: u32,
    generation: u64,
    started: Instant,
}

#[derive(Debug, Clone, Copy)]
struct StandingBy {
    worker: Worker,
    until: Instant,
}

/// A failed worker told to stop (SIGTERM), reaped when it exits.
#[derive(Debug, Clone, Copy)]
struct Dying {
    pid: u32,
    /// When it gets SIGKILL if still there; `None` once it has.
    kill_at: Option<Instant>,
}

type ReadyFuture = Pin<Box<dyn Future<Output = Result<Ready, UpgradeError>> + Send>>;

/// A worker that has not said it is ready yet.
struct Pending {
    worker: Worker,
    purpose: Purpose,
    ready: ReadyFuture,
    /// Set once reaped (how it ended): it must be neither signalled, its pid may be reused,
    /// nor waited for.
    exited: Option<String>,
}

struct Supervisor {
    image: ExecImage,
    config: ConfigSource,
    settings: Settings,
    sockets: Vec<(String, TcpListener)>,
    from_systemd: bool,
    /// Upgrade outcomes and refusals, with the same records as direct mode.
    records: ProcessState,
    pid_file: PathBuf,
    current: Option<Worker>,
    pending: Option<Pending>,
    /// The previous worker through the current one's probation: drained, but ready to serve
    /// again if the current one dies before `until`.
    standby: Option<StandingBy>,
    /// Where each live worker reads its orders (`standby`, `resume`, `release`, `export`).
    orders: HashMap<u32, std::io::PipeWriter>,
    /// Where each live worker reads its predecessor's state, relayed by the supervisor.
    inboxes: HashMap<u32, std::io::PipeWriter>,
    /// The worker that took over from each old one: where the old one's final batch goes.
    successors: HashMap<u32, u32>,
    /// Lines the ready workers write on their readiness pipes (their state), by pid.
    relay: tokio::sync::mpsc::UnboundedSender<(u32, String)>,
    /// Old workers told to drain, still running.
    draining: Vec<u32>,
    /// Failed workers told to stop, until reaped.
    dying: Vec<Dying>,
    next_generation: u64,
    restart_at: Option<Instant>,
    backoff: Duration,
    quick_deaths: u32,
    restarts: u64,
    stopping: bool,
    /// The exit status of the last current worker, which the supervisor exits with.
    last_status: i32,
}

/// Supervises workers until shutdown; returns the exit code.
pub async fn run(
    startup: &mut Startup,
    config: ConfigSource,
    settings: Settings,
) -> Result<i32, SupervisorError> {
    let mut commands = Commands::install().map_err(SupervisorError::Signals)?;
    let mut children = signal(SignalKind::child()).map_err(SupervisorError::Signals)?;
    let bound = listeners::adopt_or_bind(
        std::mem::take(&mut startup.sockets),
        startup.from_systemd,
        &wanted(&settings),
    )?;
    let records = ProcessState::new(0, crate::version());
    let (relay, mut relayed) = tokio::sync::mpsc::unbounded_channel();
    records.set_listeners(bound.iter().map(|b| b.info.clone()).collect());
    let mut sup = Supervisor {
        image: startup.image.clone(),
        config,
        pid_file: settings.lifecycle.pid_file.clone(),
        settings,
        sockets: bound
            .into_iter()
            .map(|b| (b.info.name, b.listener))
            .collect(),
        from_systemd: startup.from_systemd,
        records,
        current: None,
        pending: None,
        standby: None,
        orders: HashMap::new(),
        inboxes: HashMap::new(),
        successors: HashMap::new(),
        relay,
        draining: Vec::new(),
        dying: Vec::new(),
        next_generation: startup.generation(),
        restart_at: None,
        backoff: FIRST_BACKOFF,
        quick_deaths: 0,
        restarts: 0,
        stopping: false,
        last_status: 0,
    };
    tracing::info!(pid = std::process::id(), "supervisor started");
    sup.start_worker(Purpose::First)
        .map_err(SupervisorError::FirstWorker)?;

    loop {
        let next_kill = sup.dying.iter().filter_map(|d| d.kill_at).min();
        tokio::select! {
            command = commands.next() => match command {
                Some(Command::Reload) => sup.forward_reload(),
                Some(Command::Upgrade) => sup.upgrade(),
                Some(Command::Shutdown) | None => {
                    if sup.stopping {
                        tracing::warn!("second shutdown signal: killing the workers and exiting now");
                        sup.kill_all();
                        sup.remove_files();
                        return Ok(1);
                    }
                    sup.shutdown();
                }
            },
            Some((pid, line)) = relayed.recv() => sup.relay_state(pid, &line),
            _ = children.recv() => {
                sup.reap()?;
                // A starting worker that died is a failure now, not when its pipe closes: a
                // grandchild may hold the pipe open until the readiness deadline.
                if let Some(pending) = sup.pending.as_mut().filter(|p| p.exited.is_some()) {
                    // Unless it said why just before (that line is in the pipe already).
                    let said = tokio::time::timeout(upgrade::LAST_WORDS, pending.ready.as_mut()).await;
                    let failed = match said {
                        Ok(Err(reported @ UpgradeError::Reported { .. })) => Err(reported),
                        _ => Err(UpgradeError::Exited {
                            pid: pending.worker.pid,
                            status: pending.exited.clone().unwrap_or_default(),
                        }),
                    };
                    sup.settle(failed, startup)?;
                }
            }
            ready = async { sup.pending.as_mut().map(|p| p.ready.as_mut()).expect("guarded").await }, if sup.pending.is_some() => {
                sup.settle(ready, startup)?;
            }
            () = sleep_until(sup.restart_at), if sup.restart_at.is_some() => sup.restart_due()?,
            () = sleep_until(sup.standby.map(|s| s.until)), if sup.standby.is_some() => {
                sup.end_standby("probation passed");
            }
            () = sleep_until(next_kill), if next_kill.is_some() => sup.kill_the_overdue(),
        }
        if sup.stopping && sup.children_left() == 0 {
            tracing::info!(
                status = sup.last_status,
                "all workers exited; supervisor exiting"
            );
            sup.remove_files();
            return Ok(sup.last_status);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

impl Supervisor {
    /// The back-off after a worker's death is over: start another, unless one is on its way.
    fn restart_due(&mut self) -> Result<(), SupervisorError> {
        self.restart_at = None;
        if self.stopping || self.current.is_some() || self.pending.is_some() {
            return Ok(());
        }
        self.restarts += 1;
        self.publish();
        if let Err(err) = self.start_worker(Purpose::Restart) {
            tracing::error!(error = %err, "could not restart the worker");
            self.worker_died_quickly()?;
        }
        Ok(())
    }

    fn forward_reload(&self) {
        match self.current {
            Some(worker) => upgrade::send(worker.pid, Signal::SIGUSR1),
            None => tracing::warn!(
                "reload requested while no worker runs; it will read the configuration when it starts"
            ),
        }
    }

    fn upgrade(&mut self) {
        let refuse = |sup: &mut Supervisor, reason: &str, in_flight: bool| {
            tracing::warn!(reason, "upgrade refused");
            sup.records.record_refusal(reason.to_owned(), in_flight);
            sup.publish();
        };
        if self.stopping {
            return refuse(self, "the supervisor is shutting down", false);
        }
        if self.pending.is_some() {
            return refuse(self, "a worker is already starting", true);
        }
        tracing::info!(program = %self.image.program().display(), "upgrade requested");
        // The current worker moves on: its predecessor stops standing by.
        self.end_standby("a new upgrade was requested");
        if let Err(err) = self.start_worker(Purpose::Upgrade) {
            tracing::error!(error = %err, "upgrade failed; the current worker keeps serving");
            self.records
                .record_upgrade(false, None, Some(err.to_string()));
            self.publish();
        }
    }

    fn shutdown(&mut self) {
        tracing::info!("shutdown requested: draining the workers");
        self.stopping = true;
        self.restart_at = None;
        systemd::stopping();
        // Failed workers were told already; the rest drain.
        for pid in self.live_workers() {
            upgrade::terminate(pid);
        }
    }

    /// Every worker that may still run and was not told to stop as a failure: the current
    /// one, the one standing by, the one starting, the old ones draining.
    fn live_workers(&self) -> impl Iterator<Item = u32> + '_ {
        self.current
            .iter()
            .chain(self.standby.iter().map(|s| &s.worker))
            .map(|w| w.pid)
            .chain(self.live_pending())
            .chain(self.draining.iter().copied())
    }

    /// SIGKILL to the failed workers past their grace (once each; they stay listed until reaped).
    fn kill_the_overdue(&mut self) {
        let now = Instant::now();
        for dying in self.dying.iter_mut() {
            if dying.kill_at.is_some_and(|at| at <= now) {
                tracing::warn!(
                    pid = dying.pid,
                    "failed worker still running after its grace: SIGKILL"
                );
                upgrade::send(dying.pid, Signal::SIGKILL);
                dying.kill_at = None;
            }
        }
    }

    fn kill_all(&self) {
        for pid in self.live_workers().chain(self.dying.iter().map(|d| d.pid)) {
            upgrade::send(pid, Signal::SIGKILL);
        }
    }

    /// The starting worker's pid, unless it was already reaped (its pid may be reused).
    fn live_pending(&self) -> Option<u32> {
        self.pending
            .as_ref()
            .filter(|p| p.exited.is_none())
            .map(|p| p.worker.pid)
    }

    fn children_left(&self) -> usize {
        usize::from(self.current.is_some())
            + usize::from(self.standby.is_some())
            + usize::from(self.pending.as_ref().is_some_and(|p| p.exited.is_none()))
            + self.draining.len()
            + self.dying.len()
    }

    /// The pid file and the supervisor's state file, if they still name us.
    fn remove_files(&self) {
        let me = std::process::id();
        pidfile::remove_if_ours(&self.pid_file, me);
        let path = super::supervisor_path(&self.pid_file);
        if SupervisorRecord::read(&path).is_some_and(|r| r.pid == me) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn publish(&mut self) {
        self.tell_upgrade_counts();
        let pid = std::process::id();
        let Some(stat) = pidfile::proc_stat(pid) else {
            return;
        };
        let record = SupervisorRecord {
            pid,
            start_ticks: stat.start_ticks,
            worker_pid: self.current.map(|w| w.pid),
            generation: self.current.map_or(0, |w| w.generation),
            restarts: self.restarts,
            upgrades: UpgradeBook::of(&self.records, &self.settings),
        };
        let path = super::supervisor_path(&self.pid_file);
        if let Err(err) = record.write(&path) {
            tracing::warn!(path = %path.display(), error = %err, "could not write the supervisor state file");
        }
    }

    /// The current worker serves `/metrics`, but the upgrades are ours: it learns their counts
    /// on its state pipe (see `carry::UPGRADES`) each time they may have changed.
    fn tell_upgrade_counts(&mut self) {
        let Some(current) = self.current else {
            return;
        };
        let counts = serde_json::to_string(&self.records.upgrade_counts()).unwrap_or_default();
        if let Some(inbox) = self.inboxes.get_mut(&current.pid) {
            let items = vec![(super::carry::UPGRADES.to_owned(), counts)];
            if let Err(err) = super::carry::write_batch(inbox, items, false) {
                tracing::debug!(pid = current.pid, error = %err, "could not tell the worker the upgrade counts");
            }
        }
    }
}
