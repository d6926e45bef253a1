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

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::handover::{ExecImage, Startup};
use super::record::SupervisorRecord;
use super::signals::{Command, Commands};
use super::state::ProcessState;
use super::upgrade::{self, Handover, UpgradeError};
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

type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), UpgradeError>> + Send>>;

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
    /// Old workers told to drain, still running.
    draining: Vec<u32>,
    /// Failed workers told to stop, with the moment they get SIGKILL.
    dying: Vec<(u32, Instant)>,
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
pub(crate) async fn run(
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
        let next_kill = sup.dying.iter().map(|(_, at)| *at).min();
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
            _ = children.recv() => {
                sup.reap()?;
            }
            ready = async { sup.pending.as_mut().map(|p| p.ready.as_mut()).expect("guarded").await }, if sup.pending.is_some() => {
                sup.settle(ready, startup)?;
            }
            () = sleep_until(sup.restart_at), if sup.restart_at.is_some() => {
                sup.restart_at = None;
                if !sup.stopping && sup.current.is_none() && sup.pending.is_none() {
                    sup.restarts += 1;
                    sup.publish();
                    if let Err(err) = sup.start_worker(Purpose::Restart) {
                        tracing::error!(error = %err, "could not restart the worker");
                        sup.worker_died_quickly()?;
                    }
                }
            }
            () = sleep_until(next_kill), if next_kill.is_some() => {
                let now = Instant::now();
                for (pid, _) in sup.dying.iter().filter(|(_, at)| *at <= now) {
                    tracing::warn!(pid, "failed worker still running after its grace: SIGKILL");
                    upgrade::send(*pid, Signal::SIGKILL);
                }
                // Keep them listed until reaped, but do not kill twice.
                for entry in sup.dying.iter_mut().filter(|(_, at)| *at <= now) {
                    entry.1 = now + Duration::from_secs(3600);
                }
            }
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
    fn start_worker(&mut self, purpose: Purpose) -> Result<(), UpgradeError> {
        // Timeouts come from the configuration as it is now, like the worker's own.
        if let Ok(settings) = Settings::load(&self.config) {
            self.settings = settings;
        }
        let mut fds: Vec<(String, OwnedFd)> = Vec::with_capacity(self.sockets.len());
        for (name, listener) in &self.sockets {
            let fd = listener
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| UpgradeError::Sockets(e.to_string()))?;
            fds.push((name.clone(), fd));
        }
        let generation = self.next_generation;
        let handover = Handover {
            generation,
            parent_pid: None,
            supervisor_pid: Some(std::process::id()),
            from_systemd: self.from_systemd,
        };
        let spawned = upgrade::spawn_process(&self.image, fds, handover)?;
        self.next_generation += 1;
        let pid = spawned.pid;
        let timeout = self.settings.upgrade.ready_timeout;
        // The Child handle is not kept: every child is reaped by `reap` with waitpid(-1).
        drop(spawned.child);
        self.pending = Some(Pending {
            worker: Worker {
                pid,
                generation,
                started: Instant::now(),
            },
            purpose,
            ready: Box::pin(upgrade::wait_ready(pid, spawned.ready, timeout)),
            exited: None,
        });
        Ok(())
    }

    /// A pending worker answered: make it current, or count the failure.
    fn settle(
        &mut self,
        ready: Result<(), UpgradeError>,
        startup: &mut Startup,
    ) -> Result<(), SupervisorError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        // Reaped before its ready line was read: it said ready, then died. Not a worker.
        let ready = match (ready, &pending.exited) {
            (Ok(()), Some(how)) => Err(UpgradeError::Exited {
                pid: pending.worker.pid,
                status: format!("{how}, right after it said ready"),
            }),
            (ready, _) => ready,
        };
        match ready {
            Ok(()) => {
                tracing::info!(
                    pid = pending.worker.pid,
                    generation = pending.worker.generation,
                    "worker ready"
                );
                if let Some(old) = self.current.replace(pending.worker) {
                    // Only now, with the new worker accepting, is the old one told to drain.
                    upgrade::terminate(old.pid);
                    self.draining.push(old.pid);
                }
                if pending.purpose == Purpose::Upgrade {
                    self.records
                        .record_upgrade(true, Some(pending.worker.pid), None);
                }
                if pending.purpose == Purpose::First {
                    if let Err(err) = pidfile::write(&self.pid_file, std::process::id()) {
                        tracing::error!(path = %self.pid_file.display(), error = %err, "could not write the pid file");
                    }
                    systemd::ready("supervising");
                    let _ = startup.report_ready();
                }
                self.publish();
                Ok(())
            }
            Err(mut err) => {
                let pid = pending.worker.pid;
                // A worker that never served does not use up a generation number.
                self.next_generation = pending.worker.generation;
                match pending.exited {
                    Some(how) => {
                        if let UpgradeError::Exited { status, .. } = &mut err {
                            *status = how;
                        }
                    }
                    None => {
                        upgrade::terminate(pid);
                        self.dying.push((
                            pid,
                            Instant::now() + self.settings.lifecycle.shutdown_timeout,
                        ));
                    }
                }
                match pending.purpose {
                    Purpose::First => {
                        self.kill_all();
                        Err(SupervisorError::FirstWorker(err))
                    }
                    Purpose::Upgrade => {
                        tracing::error!(error = %err, "upgrade failed; the current worker keeps serving");
                        self.records
                            .record_upgrade(false, None, Some(err.to_string()));
                        self.publish();
                        // The old worker may have died meanwhile.
                        if self.current.is_none() {
                            self.schedule_restart();
                        }
                        Ok(())
                    }
                    Purpose::Restart => {
                        tracing::error!(error = %err, "restarted worker failed");
                        self.worker_died_quickly()
                    }
                }
            }
        }
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
        let pids = self
            .current
            .iter()
            .map(|w| w.pid)
            .chain(self.live_pending())
            .chain(self.draining.iter().copied());
        for pid in pids {
            upgrade::terminate(pid);
        }
    }

    fn kill_all(&self) {
        let pids = self
            .current
            .iter()
            .map(|w| w.pid)
            .chain(self.live_pending())
            .chain(self.draining.iter().copied())
            .chain(self.dying.iter().map(|(pid, _)| *pid));
        for pid in pids {
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
            + usize::from(self.pending.as_ref().is_some_and(|p| p.exited.is_none()))
            + self.draining.len()
            + self.dying.len()
    }

    /// Reaps every exited child, ours or orphaned onto us.
    fn reap(&mut self) -> Result<(), SupervisorError> {
        loop {
            let (pid, status, how) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, format!("exit status {code}")),
                // The shell's convention for the supervisor's own exit code.
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, 128 + signal as i32, format!("killed by {signal}"))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(_) => continue,
            };
            let pid = u32::try_from(pid.as_raw()).unwrap_or(0);
            if self.current.is_some_and(|w| w.pid == pid) {
                let worker = self.current.take().expect("checked");
                self.last_status = status;
                if !self.stopping {
                    tracing::error!(pid, status = %how, "worker died unexpectedly");
                    if worker.started.elapsed() >= STABLE_AFTER {
                        self.quick_deaths = 0;
                        self.backoff = FIRST_BACKOFF;
                    }
                    if self.pending.is_none() {
                        self.worker_died_quickly()?;
                    }
                    self.publish();
                }
            } else if let Some(i) = self.draining.iter().position(|p| *p == pid) {
                self.draining.swap_remove(i);
                tracing::info!(pid, status, "old worker drained and exited");
            } else if let Some(i) = self.dying.iter().position(|(p, _)| *p == pid) {
                self.dying.swap_remove(i);
                tracing::info!(pid, status, "failed worker reaped");
            } else if let Some(pending) = self.pending.as_mut().filter(|p| p.worker.pid == pid) {
                // Its readiness pipe reports the end; `settle` sees it was reaped.
                tracing::warn!(pid, status = %how, "starting worker exited");
                pending.exited = Some(how);
            } else {
                tracing::debug!(pid, status, "reaped an orphan");
            }
        }
    }

    /// Counts a worker that did not last, and schedules its restart or gives up.
    fn worker_died_quickly(&mut self) -> Result<(), SupervisorError> {
        self.quick_deaths += 1;
        if self.quick_deaths >= MAX_QUICK_DEATHS {
            tracing::error!(
                deaths = self.quick_deaths,
                "the worker keeps dying; giving up"
            );
            self.kill_all();
            self.remove_files();
            return Err(SupervisorError::GaveUp);
        }
        self.schedule_restart();
        Ok(())
    }

    fn schedule_restart(&mut self) {
        tracing::warn!(in_ = ?self.backoff, "restarting the worker");
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
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

    fn publish(&self) {
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
            last_upgrade: self.records.last_upgrade(),
            last_refusal: self.records.last_refusal(),
            ready_timeout_ms: super::millis(self.settings.upgrade.ready_timeout),
            shutdown_timeout_ms: super::millis(self.settings.lifecycle.shutdown_timeout),
        };
        let path = super::supervisor_path(&self.pid_file);
        if let Err(err) = record.write(&path) {
            tracing::warn!(path = %path.display(), error = %err, "could not write the supervisor state file");
        }
    }
}
