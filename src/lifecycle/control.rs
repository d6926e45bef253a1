//! The client side of the control protocol (`baton reload | upgrade | stop | status`): find the
//! server through its pid file, prove the pid is still that server, signal it, and wait with a
//! deadline for the outcome it records in its state file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pidfile::{self, PidFileError, proc_stat, state_path};
use super::record::{ReloadSummary, ServerRecord, SupervisorRecord};
use super::supervisor_path;

/// How often a client looks at the state file while it waits.
const POLL: Duration = Duration::from_millis(20);
/// During a handover the pid file names the new process a moment before its state file does.
const HANDOVER_GRACE: Duration = Duration::from_secs(2);
/// `baton check` reads a few small files; far longer means the new build is broken.
const PRECHECK_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("cannot signal baton (pid {pid}): {source}")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("timed out after {after:?} waiting for {what}; see the server's log")]
    Timeout { what: &'static str, after: Duration },
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

/// Finds the server named by `pid_file` and checks the pid is still that server: same pid and
/// start time as its state file, alive and not a zombie. A stale file is refused, so a reused
/// pid never gets our signal.
pub fn locate(pid_file: &Path) -> Result<Located, ControlError> {
    let deadline = Instant::now() + HANDOVER_GRACE;
    loop {
        let pid = pidfile::read(pid_file)?.ok_or_else(|| ControlError::NotRunning {
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
        let record = ServerRecord::read(&state_path(pid_file));
        let supervisor =
            SupervisorRecord::read(&supervisor_path(pid_file)).filter(|s| s.pid == pid);
        let retry = Instant::now() < deadline;
        match (supervisor, record) {
            (Some(sup), _) if sup.start_ticks != stat.start_ticks => {
                return Err(stale("that pid now belongs to another process"));
            }
            (Some(sup), Some(record)) if sup.worker_pid == Some(record.pid) => {
                return Ok(Located {
                    pid,
                    start_ticks: stat.start_ticks,
                    record: Some(record),
                    supervisor: Some(sup),
                });
            }
            // A worker is starting or being replaced: its state file follows shortly.
            (Some(_), _) if retry => std::thread::sleep(POLL),
            // A live, verified supervisor that is (re)starting its worker: still baton.
            (Some(sup), _) => {
                return Ok(Located {
                    pid,
                    start_ticks: stat.start_ticks,
                    record: None,
                    supervisor: Some(sup),
                });
            }
            (None, Some(record)) if record.pid == pid && record.start_ticks == stat.start_ticks => {
                return Ok(Located {
                    pid,
                    start_ticks: stat.start_ticks,
                    record: Some(record),
                    supervisor: None,
                });
            }
            (None, Some(record)) if record.pid == pid => {
                return Err(stale("that pid now belongs to another process"));
            }
            // The file may be mid-handover (pid file first, state file next): look again.
            _ if retry => std::thread::sleep(POLL),
            (None, Some(_)) => return Err(stale("the state file names another process")),
            (None, None) => return Err(stale("its state file is missing")),
        }
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

/// Polls `check` until it gives an answer or `timeout` passes.
fn wait_for<T>(
    timeout: Duration,
    what: &'static str,
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
    wait_for(timeout, "the reload outcome", || {
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
/// SIGUSR2, then waits until the next generation serves or the server says why not.
pub fn upgrade(pid_file: &Path, timeout: Option<Duration>) -> Result<Upgraded, ControlError> {
    let located = locate(pid_file)?;
    let record = located
        .record
        .clone()
        .ok_or(ControlError::NoWorker { pid: located.pid })?;
    precheck(&record)?;
    match located.supervisor.clone() {
        Some(sup) => upgrade_supervised(
            pid_file,
            located.pid,
            located.start_ticks,
            record,
            sup,
            timeout,
        ),
        None => upgrade_direct(pid_file, located.pid, located.start_ticks, record, timeout),
    }
}

fn upgrade_direct(
    pid_file: &Path,
    pid: u32,
    start_ticks: u64,
    record: ServerRecord,
    timeout: Option<Duration>,
) -> Result<Upgraded, ControlError> {
    let upgrades_before = record.last_upgrade.as_ref().map_or(0, |r| r.seq);
    let refusals_before = record.last_refusal.as_ref().map_or(0, |r| r.seq);
    let timeout =
        timeout.unwrap_or(Duration::from_millis(record.ready_timeout_ms) + Duration::from_secs(10));
    signal(pid, Signal::SIGUSR2)?;
    let state = state_path(pid_file);
    let mut gone_since: Option<Instant> = None;
    wait_for(timeout, "the new process to be ready", || {
        if let Ok(Some(new_pid)) = pidfile::read(pid_file)
            && new_pid != pid
            && let Ok(new) = locate(pid_file)
        {
            return Some(Ok(Upgraded {
                old_pid: pid,
                new_pid: new.pid,
                version: new.record.map(|r| r.version).unwrap_or_default(),
                supervisor: None,
            }));
        }
        if let Some(now) = ServerRecord::read(&state).filter(|r| r.pid == pid)
            && let Some(Err(err)) = outcome(
                now.last_upgrade.as_ref(),
                now.last_refusal.as_ref(),
                upgrades_before,
                refusals_before,
            )
        {
            // Success shows as the pid file naming the new process, above.
            return Some(Err(err));
        }
        // Gone while the pid file still names it: give a handover in progress its moment.
        if !alive(pid, start_ticks) && pidfile::read(pid_file).ok()? == Some(pid) {
            let gone = *gone_since.get_or_insert_with(Instant::now);
            if gone.elapsed() > HANDOVER_GRACE {
                return Some(Err(ControlError::Exited {
                    pid,
                    what: "upgrading",
                }));
            }
        }
        None
    })
}

fn upgrade_supervised(
    pid_file: &Path,
    pid: u32,
    start_ticks: u64,
    record: ServerRecord,
    sup: SupervisorRecord,
    timeout: Option<Duration>,
) -> Result<Upgraded, ControlError> {
    let upgrades_before = sup.last_upgrade.as_ref().map_or(0, |r| r.seq);
    let refusals_before = sup.last_refusal.as_ref().map_or(0, |r| r.seq);
    let timeout =
        timeout.unwrap_or(Duration::from_millis(sup.ready_timeout_ms) + Duration::from_secs(10));
    signal(pid, Signal::SIGUSR2)?;
    let sup_path = supervisor_path(pid_file);
    let state = state_path(pid_file);
    wait_for(timeout, "the new worker to be ready", || {
        if !alive(pid, start_ticks) {
            return Some(Err(ControlError::Exited {
                pid,
                what: "upgrading",
            }));
        }
        let now = SupervisorRecord::read(&sup_path).filter(|s| s.pid == pid)?;
        let new_pid = match outcome(
            now.last_upgrade.as_ref(),
            now.last_refusal.as_ref(),
            upgrades_before,
            refusals_before,
        )? {
            Ok(new_pid) => new_pid,
            Err(err) => return Some(Err(err)),
        };
        // Ready was reported; its state file names it a moment later.
        let new = ServerRecord::read(&state).filter(|r| Some(r.pid) == new_pid)?;
        Some(Ok(Upgraded {
            old_pid: record.pid,
            new_pid: new.pid,
            version: new.version,
            supervisor: Some(pid),
        }))
    })
}

/// The outcome of the next upgrade after `upgrades_before`/`refusals_before`, if there is one
/// yet: the new pid, the failure, or a refusal (not one saying another upgrade is in flight:
/// that one's outcome is still to come).
fn outcome(
    upgrade: Option<&super::state::UpgradeRecord>,
    refusal: Option<&super::state::RefusalRecord>,
    upgrades_before: u64,
    refusals_before: u64,
) -> Option<Result<Option<u32>, ControlError>> {
    if let Some(up) = upgrade.filter(|u| u.seq > upgrades_before) {
        return Some(if up.ok {
            Ok(up.new_pid)
        } else {
            Err(ControlError::UpgradeFailed(
                up.error
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into()),
            ))
        });
    }
    let refusal = refusal.filter(|r| r.seq > refusals_before && !r.in_flight)?;
    Some(Err(ControlError::UpgradeRefused(refusal.reason.clone())))
}

/// Runs `<program> --config-dir <dir> check` as the server would start it. Bounded: a new
/// build that hangs is a failed check, not a hung client.
fn precheck(record: &ServerRecord) -> Result<(), ControlError> {
    let program = record.program.display();
    let mut child = Command::new(&record.program)
        .arg("--config-dir")
        .arg(&record.config_dir)
        .arg("check")
        .current_dir(&record.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => "it does not exist; install the new build there",
                std::io::ErrorKind::PermissionDenied => "it is not executable; `chmod +x` it",
                _ => "it could not be started",
            };
            ControlError::UpgradeFailed(format!(
                "cannot run {program}: {what} ({e}); nothing was changed"
            ))
        })?;
    let status = wait_for(
        PRECHECK_TIMEOUT,
        "`check` of the new binary",
        || match child.try_wait() {
            Ok(Some(status)) => Some(Ok(status)),
            Ok(None) => None,
            Err(e) => Some(Err(ControlError::UpgradeFailed(format!(
                "cannot wait for `{program} check`: {e}"
            )))),
        },
    );
    let status = match status {
        Ok(status) => status,
        Err(ControlError::Timeout { .. }) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ControlError::UpgradeFailed(format!(
                "`{program} check` did not finish within {PRECHECK_TIMEOUT:?}; the new build \
                 looks broken, nothing was changed"
            )));
        }
        Err(err) => return Err(err),
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    Err(ControlError::UpgradeFailed(if stderr.is_empty() {
        format!(
            "`{program} check` failed ({}) without a message; the new build looks broken, \
             nothing was changed",
            super::upgrade::describe(status)
        )
    } else {
        format!("{program} rejects the configuration, nothing was changed: {stderr}")
    }))
}

/// SIGTERM, then waits until the process has exited.
pub fn stop(pid_file: &Path, timeout: Option<Duration>) -> Result<u32, ControlError> {
    let Located {
        pid,
        start_ticks,
        record,
        supervisor,
    } = locate(pid_file)?;
    let drain_ms = supervisor
        .map(|s| s.shutdown_timeout_ms)
        .or(record.map(|r| r.shutdown_timeout_ms))
        .unwrap_or(0);
    let timeout = timeout.unwrap_or(Duration::from_millis(drain_ms) + Duration::from_secs(10));
    signal(pid, Signal::SIGTERM)?;
    wait_for(timeout, "baton to exit", || {
        (!alive(pid, start_ticks)).then_some(Ok(pid))
    })
}
