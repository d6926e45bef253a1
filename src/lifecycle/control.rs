//! The client side of the control protocol (`baton reload | upgrade | stop | status`): find the
//! server through its pid file, prove the pid is still that server, signal it, and wait with a
//! deadline for the outcome it records in its state file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pidfile::{self, PidFileError, proc_stat, state_path};
use super::precheck::PRECHECK_TIMEOUT;
use super::record::{ReloadSummary, ServerRecord, SupervisorRecord, UpgradeBook};
use super::supervisor_path;
use super::trust::{self, NotOurs};

/// How often a client looks at the state file while it waits.
const POLL: Duration = Duration::from_millis(20);
/// During a handover the pid file names the new process a moment before its state file does.
const HANDOVER_GRACE: Duration = Duration::from_secs(2);
/// The standby's probation starts when it reads "ready", a little after the new process
/// recorded it; a death in that gap is still rolled back, so the client waits that much more.
const PROBATION_MARGIN: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("baton is not running (no pid file at {})", path.display())]
    NotRunning { path: PathBuf },
    #[error(
        "stale pid file {}: pid {pid} is not the baton that wrote it ({why}); nothing was \
         signalled. Remove the file if baton is not running, then start it",
        path.display()
    )]
    Stale {
        path: PathBuf,
        pid: u32,
        why: &'static str,
    },
    #[error(
        "pid {pid} named by {} is not the baton server of this deployment: {why}; nothing was \
         signalled. If baton is not running, remove {} and {}",
        path.display(), path.display(), state_path(path).display()
    )]
    NotBaton {
        path: PathBuf,
        pid: u32,
        why: NotOurs,
    },
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("cannot signal baton (pid {pid}): {source}")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error(
        "timed out after {after:?} waiting for {what}; the server records outcomes in {}: \
         check that the server's user can write there, and see the server's log",
        state.display()
    )]
    Timeout {
        what: &'static str,
        after: Duration,
        state: PathBuf,
    },
    #[error("baton (pid {pid}) exited while {what}")]
    Exited { pid: u32, what: &'static str },
    #[error(
        "the supervisor (pid {pid}) has no worker serving right now (it is starting or \
         restarting one); try again in a moment, and see its log if this lasts"
    )]
    NoWorker { pid: u32 },
    #[error("reload rejected: {0}")]
    ReloadRejected(String),
    #[error("upgrade failed: {0}")]
    UpgradeFailed(String),
    #[error("upgrade refused: {0}")]
    UpgradeRefused(String),
    /// The new generation died during its probation; the previous one serves again.
    #[error("{0}; the previous generation serves again")]
    RolledBack(String),
    #[error(
        "upgrade refused: the server (pid {pid}) will start {} at an upgrade, but the build \
         checked is {} ({origin}); nothing was signalled. Pass `--binary {}` to check the build \
         that will run, or install the new build at {}",
        will_start.display(), checked.display(), will_start.display(), will_start.display()
    )]
    WrongBinary {
        pid: u32,
        /// As the state file records it.
        will_start: PathBuf,
        /// Canonical.
        checked: PathBuf,
        origin: &'static str,
    },
}

impl ControlError {
    /// LSB-style: 3 means "not running", 1 any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ControlError::NotRunning { .. } => 3,
            _ => 1,
        }
    }
}

/// A running server, verified.
#[derive(Debug, Clone)]
pub struct Located {
    /// The pid the pid file names and signals go to: the server, or its supervisor.
    pub pid: u32,
    /// Its start time (see `ProcStat`), to tell it from a later process with the same pid.
    pub start_ticks: u64,
    /// The serving process's state (in supervised mode, the current worker's; `None` while the
    /// supervisor is starting or restarting one).
    pub record: Option<ServerRecord>,
    /// Set in supervised mode.
    pub supervisor: Option<SupervisorRecord>,
}

/// Finds the server named by `pid_file` and checks the pid is still that server and really
/// is one: the run files are trusted (see `pidfile`), the pid has the start time its state file
/// records and is alive, and `trust::verify` recognises it as a baton server of this
/// deployment. A stale file is refused, so a reused pid never gets our signal; a forged one is
/// refused, so the run files never choose who gets it.
pub fn locate(pid_file: &Path) -> Result<Located, ControlError> {
    let deadline = Instant::now() + HANDOVER_GRACE;
    loop {
        let (pid, owner) =
            pidfile::read_trusted_pid(pid_file)?.ok_or_else(|| ControlError::NotRunning {
                path: pid_file.to_owned(),
            })?;
        let stale = |why| ControlError::Stale {
            path: pid_file.to_owned(),
            pid,
            why,
        };
        let Some(stat) = proc_stat(pid) else {
            return Err(stale("no process has that pid"));
        };
        if stat.zombie {
            return Err(stale("that process has exited"));
        }
        let record = ServerRecord::read_trusted(&state_path(pid_file))?;
        let supervisor =
            SupervisorRecord::read_trusted(&supervisor_path(pid_file))?.filter(|s| s.pid == pid);
        // The sockets the server holds; in supervised mode the supervisor keeps them across
        // workers, so even a previous worker's state file names them.
        let listeners: Option<Vec<_>> = record
            .as_ref()
            .map(|r| r.listeners.iter().map(|l| l.addr).collect());
        let retry = Instant::now() < deadline;
        let found = |record, supervisor| Located {
            pid,
            start_ticks: stat.start_ticks,
            record,
            supervisor,
        };
        let located = match (supervisor, record) {
            (Some(sup), _) if sup.start_ticks != stat.start_ticks => {
                return Err(stale("that pid now belongs to another process"));
            }
            (Some(sup), Some(record)) if sup.worker_pid == Some(record.pid) => {
                found(Some(record), Some(sup))
            }
            // A worker is starting or being replaced: its state file follows shortly.
            (Some(_), _) if retry => {
                std::thread::sleep(POLL);
                continue;
            }
            // A live supervisor that is (re)starting its worker.
            (Some(sup), _) => found(None, Some(sup)),
            (None, Some(record)) if record.pid == pid && record.start_ticks == stat.start_ticks => {
                found(Some(record), None)
            }
            (None, Some(record)) if record.pid == pid => {
                return Err(stale("that pid now belongs to another process"));
            }
            // The file may be mid-handover (pid file first, state file next): look again.
            _ if retry => {
                std::thread::sleep(POLL);
                continue;
            }
            (None, Some(_)) => return Err(stale("the state file names another process")),
            (None, None) => return Err(stale("its state file is missing")),
        };
        trust::verify(pid, owner, listeners.as_deref()).map_err(|why| ControlError::NotBaton {
            path: pid_file.to_owned(),
            pid,
            why,
        })?;
        return Ok(located);
    }
}

fn signal(pid: u32, signal: Signal) -> Result<(), ControlError> {
    let raw = i32::try_from(pid).map_err(|_| ControlError::Signal {
        pid,
        source: nix::Error::EINVAL,
    })?;
    kill(Pid::from_raw(raw), signal).map_err(|source| ControlError::Signal { pid, source })
}

fn alive(pid: u32, start_ticks: u64) -> bool {
    proc_stat(pid).is_some_and(|s| !s.zombie && s.start_ticks == start_ticks)
}

/// Polls `check` until it gives an answer or `timeout` passes. `state` is the file the
/// answer is read from, named in the timeout's message.
pub(super) fn wait_for<T>(
    timeout: Duration,
    what: &'static str,
    state: &Path,
    mut check: impl FnMut() -> Option<Result<T, ControlError>>,
) -> Result<T, ControlError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(answer) = check() {
            return answer;
        }
        if Instant::now() >= deadline {
            return Err(ControlError::Timeout {
                what,
                after: timeout,
                state: state.to_owned(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// SIGUSR1, then the server's verdict on the configuration it re-read.
pub fn reload(pid_file: &Path, timeout: Duration) -> Result<ReloadSummary, ControlError> {
    let Located {
        pid,
        start_ticks,
        record,
        ..
    } = locate(pid_file)?;
    let record = record.ok_or(ControlError::NoWorker { pid })?;
    let before = record.last_reload.as_ref().map_or(0, |r| r.seq);
    // In supervised mode the supervisor forwards the signal to this worker.
    let server = record.pid;
    signal(pid, Signal::SIGUSR1)?;
    let state = state_path(pid_file);
    wait_for(timeout, "the reload outcome", &state, || {
        if !alive(pid, start_ticks) {
            return Some(Err(ControlError::Exited {
                pid,
                what: "reloading",
            }));
        }
        let now = ServerRecord::read(&state).filter(|r| r.pid == server)?;
        let reload = now.last_reload.filter(|r| r.seq > before)?;
        Some(match reload.error {
            Some(error) => Err(ControlError::ReloadRejected(error)),
            None => Ok(reload),
        })
    })
}

/// A finished upgrade.
#[derive(Debug, Clone)]
pub struct Upgraded {
    /// The process replaced (in supervised mode, the old worker).
    pub old_pid: u32,
    pub new_pid: u32,
    pub version: String,
    /// Set in supervised mode: the supervisor, whose pid does not change.
    pub supervisor: Option<u32>,
}

/// Checks the configuration with the binary an upgrade will start (as `nginx -t`), then
/// SIGUSR2, then waits until the next generation serves (and its probation passed) or the
/// server says why not. `binary` is the build the operator says the server will start
/// (default: this command's own executable); see `precheck`. Both modes are one path: only
/// where the outcome is recorded differs (`Outcome`).
pub fn upgrade(
    pid_file: &Path,
    binary: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<Upgraded, ControlError> {
    let located = locate(pid_file)?;
    let record = located
        .record
        .clone()
        .ok_or(ControlError::NoWorker { pid: located.pid })?;
    let precheck_limit = timeout.map_or(PRECHECK_TIMEOUT, |t| t.min(PRECHECK_TIMEOUT));
    super::precheck::precheck(located.pid, &record, binary, precheck_limit)?;
    let outcome = Outcome::new(pid_file, &located, &record);
    let timeout = timeout
        .unwrap_or(Duration::from_millis(outcome.book.ready_timeout_ms) + Duration::from_secs(10));
    signal(located.pid, Signal::SIGUSR2)?;
    let mut gone_since: Option<Instant> = None;
    let new = wait_for(
        timeout,
        "the next generation to be ready",
        &outcome.path,
        || {
            // Read once per poll: in supervised mode success shows in the verdict too.
            let verdict = outcome.verdict();
            if let Some(new) = outcome.next_generation(verdict.as_ref()) {
                return Some(Ok(new));
            }
            if let Some(Err(err)) = verdict {
                return Some(Err(err));
            }
            // Gone, and no other process took over: give a handover in progress its moment.
            let taken_over = matches!(pidfile::read(pid_file), Ok(Some(p)) if p != located.pid);
            if !taken_over && !alive(located.pid, located.start_ticks) {
                let gone = *gone_since.get_or_insert_with(Instant::now);
                if gone.elapsed() > HANDOVER_GRACE {
                    return Some(Err(ControlError::Exited {
                        pid: located.pid,
                        what: "upgrading",
                    }));
                }
            }
            None
        },
    )?;
    wait_probation(pid_file, &new, || outcome.verdict())?;
    Ok(Upgraded {
        old_pid: record.pid,
        new_pid: new.pid,
        version: new.version,
        supervisor: located.supervisor.map(|_| located.pid),
    })
}

/// Where the outcome of one upgrade shows: in the record of whoever runs upgrades (the server
/// in direct mode, the supervisor in supervised mode), as the first upgrade or refusal after
/// those it had when the client signalled.
struct Outcome<'a> {
    pid_file: &'a Path,
    /// The process signalled; its record carries the verdict.
    pid: u32,
    supervised: bool,
    /// That record's file.
    path: PathBuf,
    /// Its bookkeeping when the client signalled.
    book: UpgradeBook,
}

impl<'a> Outcome<'a> {
    fn new(pid_file: &'a Path, located: &Located, record: &ServerRecord) -> Self {
        let (supervised, path, book) = match &located.supervisor {
            Some(sup) => (true, supervisor_path(pid_file), sup.upgrades.clone()),
            None => (false, state_path(pid_file), record.upgrades.clone()),
        };
        Self {
            pid_file,
            pid: located.pid,
            supervised,
            path,
            book,
        }
    }

    /// The signalled process's bookkeeping now (`None` mid-handover, or once it is not the
    /// file's writer any more).
    fn book(&self) -> Option<UpgradeBook> {
        if self.supervised {
            let sup = SupervisorRecord::read(&self.path).filter(|s| s.pid == self.pid)?;
            Some(sup.upgrades)
        } else {
            let server = ServerRecord::read(&self.path).filter(|r| r.pid == self.pid)?;
            Some(server.upgrades)
        }
    }

    /// Its verdict, once it has one: the new pid (supervised mode records success too), a
    /// failure, a refusal or a rollback.
    fn verdict(&self) -> Option<Result<Option<u32>, ControlError>> {
        next_outcome(&self.book()?, self.book.seen())
    }

    /// The next generation's record, once it serves. Direct mode: the pid file names it (it
    /// claims the run files before it says it is ready). Supervised mode: the supervisor
    /// recorded it (`verdict`, as [`verdict`](Self::verdict) just read it), and its state file
    /// names it.
    fn next_generation(
        &self,
        verdict: Option<&Result<Option<u32>, ControlError>>,
    ) -> Option<ServerRecord> {
        if self.supervised {
            let Some(Ok(new_pid)) = verdict else {
                return None;
            };
            ServerRecord::read(&state_path(self.pid_file)).filter(|r| Some(r.pid) == *new_pid)
        } else {
            let named = pidfile::read(self.pid_file).ok()??;
            if named == self.pid {
                return None;
            }
            locate(self.pid_file).ok()?.record
        }
    }
}

/// Waits until the previous generation has stopped standing by (as the new one recorded it),
/// then checks that the new one still serves; a rollback meanwhile is the answer.
fn wait_probation(
    pid_file: &Path,
    new: &ServerRecord,
    verdict: impl Fn() -> Option<Result<Option<u32>, ControlError>>,
) -> Result<(), ControlError> {
    let Some(until_ms) = new.probation_until_ms else {
        return Ok(());
    };
    let until = std::time::UNIX_EPOCH + Duration::from_millis(until_ms) + PROBATION_MARGIN;
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let state = state_path(pid_file);
    let rolled_back = || match verdict() {
        Some(Err(err)) => Some(err),
        _ => None,
    };
    let end = Instant::now() + left;
    let mut dead_since: Option<Instant> = None;
    wait_for(
        left + HANDOVER_GRACE + Duration::from_secs(5),
        "the end of the new process's probation",
        &state,
        || {
            if let Some(err) = rolled_back() {
                return Some(Err(err));
            }
            let serving = alive(new.pid, new.start_ticks);
            if serving && Instant::now() >= end {
                return Some(Ok(()));
            }
            if !serving {
                // Dead: the rollback record follows within moments, unless the probation was
                // already over (then nothing serves any more).
                let dead = *dead_since.get_or_insert_with(Instant::now);
                if dead.elapsed() > HANDOVER_GRACE {
                    return Some(Err(ControlError::Exited {
                        pid: new.pid,
                        what: "on probation after the upgrade",
                    }));
                }
            }
            None
        },
    )
}

/// The outcome of the first upgrade after `seen` (upgrade and refusal sequence numbers), if
/// there is one yet: the new pid, the failure, or a refusal (not one saying another upgrade is
/// in flight: that one's outcome is still to come).
fn next_outcome(
    book: &UpgradeBook,
    (upgrades_before, refusals_before): (u64, u64),
) -> Option<Result<Option<u32>, ControlError>> {
    if let Some(up) = book
        .last_upgrade
        .as_ref()
        .filter(|u| u.seq > upgrades_before)
    {
        return Some(if up.ok {
            Ok(up.new_pid)
        } else if up.rolled_back {
            Err(ControlError::RolledBack(
                up.error
                    .clone()
                    .unwrap_or_else(|| "upgrade rolled back".into()),
            ))
        } else {
            Err(ControlError::UpgradeFailed(
                up.error
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into()),
            ))
        });
    }
    let refusal = book
        .last_refusal
        .as_ref()
        .filter(|r| r.seq > refusals_before && !r.in_flight)?;
    Some(Err(ControlError::UpgradeRefused(refusal.reason.clone())))
}

/// SIGTERM, then waits until no process of the deployment is left: the one signalled, the
/// previous generation it recorded (which may still stand by or drain after an upgrade), and
/// every older generation still draining (`draining`). Returns the pids that were running.
pub fn stop(pid_file: &Path, timeout: Option<Duration>) -> Result<Vec<u32>, ControlError> {
    let Located {
        pid,
        start_ticks,
        record,
        supervisor,
    } = locate(pid_file)?;
    let drain_ms = supervisor
        .map(|s| s.upgrades.shutdown_timeout_ms)
        .or(record.as_ref().map(|r| r.upgrades.shutdown_timeout_ms))
        .unwrap_or(0);
    let timeout = timeout.unwrap_or(Duration::from_millis(drain_ms) + Duration::from_secs(10));
    let mut processes = vec![(pid, start_ticks)];
    processes.extend(
        record
            .and_then(|r| r.previous)
            .filter(|p| alive(p.pid, p.start_ticks))
            .map(|p| (p.pid, p.start_ticks)),
    );
    // Older generations still draining (not only the previous one): stop means none is left.
    for old in super::draining::draining_generations(pid_file) {
        if !processes.iter().any(|(pid, _)| *pid == old.pid) {
            processes.push((old.pid, old.start_ticks));
        }
    }
    signal(pid, Signal::SIGTERM)?;
    wait_for(timeout, "baton to exit", &state_path(pid_file), || {
        processes
            .iter()
            .all(|(pid, ticks)| !alive(*pid, *ticks))
            .then(|| Ok(processes.iter().map(|(pid, _)| *pid).collect()))
    })
}
