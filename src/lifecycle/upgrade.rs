//! The parent's side of a binary upgrade: start the next generation with our listening sockets
//! and a readiness pipe, wait for "ready" with a deadline, and on any failure stop and reap the
//! child so that nothing has changed.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::handover::{
    ExecImage, FINAL_END, FROM_SYSTEMD, GENERATION, LISTEN_FDNAMES, LISTEN_FDS, ORDERS_FD,
    PARENT_PID, PROBATION_MS, PROTOCOL_VARS, READY_FD, READY_STEPS, RELEASE_MESSAGE, ReadyLine,
    STATE_FD, SUPERVISOR_PID,
};
use super::lineage::HandoverTimes;
use super::spawn::{Launch, Process};
use super::steps::Steps;

/// Inherited fds start at 3, as in systemd's protocol.
const FIRST_FD: i32 = 3;
/// A readiness message is one short line; more is a protocol error, not a reason to wait.
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "the binary {path} does not exist: install the new build there \
         (`scripts/restart.sh PATH` does it atomically)"
    )]
    Missing { path: PathBuf },
    #[error("the binary {path} is not executable: `chmod +x` it, or install it again")]
    NotExecutable { path: PathBuf },
    #[error("could not start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not pass the listening sockets to the new process: {0}")]
    Sockets(String),
    #[error("the new process (pid {pid}) failed before it was ready: {reason}")]
    Reported { pid: u32, reason: String },
    #[error(
        "the new process (pid {pid}) exited before it was ready ({status}); the server's log \
         says why"
    )]
    Exited { pid: u32, status: String },
    #[error(
        "the new process (pid {pid}) was not ready within {timeout:?} (upgrade.ready_timeout); \
         it was stopped"
    )]
    Timeout { pid: u32, timeout: Duration },
    #[error("the new process (pid {pid}) broke the readiness protocol: {detail}")]
    Protocol { pid: u32, detail: String },
    #[error("stopped the new process (pid {pid}): a shutdown was requested during the upgrade")]
    Stopped { pid: u32 },
}

/// What the next process is told besides its sockets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handover {
    /// The new process's generation.
    pub(crate) generation: u64,
    /// Set in direct mode: the new process refuses upgrades while this parent still drains.
    pub(crate) parent_pid: Option<u32>,
    /// Set in supervised mode: the new process is a worker of this supervisor.
    pub(crate) supervisor_pid: Option<u32>,
    pub(crate) from_systemd: bool,
    /// Direct mode: how long the parent stands by after "ready", for the child's records.
    pub(crate) probation: Option<Duration>,
}

/// A started process that has not yet said it is ready. The supervisor's side: it keeps no
/// handle on the child and reaps every child with `waitpid(-1)`.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) ready: std::io::PipeReader,
    /// Where the supervisor writes its orders to this worker (see `ORDERS_FD`).
    pub(crate) orders: std::io::PipeWriter,
    /// Where the supervisor relays the previous worker's state (see `carry`).
    pub(crate) state: std::io::PipeWriter,
}

/// Starts `image` with `listeners` (duplicates of ours, by name) and a readiness pipe, for a
/// supervisor that reaps its children itself.
pub(crate) fn spawn_process(
    image: &ExecImage,
    listeners: Vec<(String, OwnedFd)>,
    handover: Handover,
) -> Result<Spawned, UpgradeError> {
    let (orders_reader, orders) = std::io::pipe().map_err(|source| UpgradeError::Spawn {
        path: image.program.clone(),
        source,
    })?;
    let Prepared {
        mut launch,
        ready,
        state,
    } = prepare(image, listeners, handover, Some(orders_reader))?;
    // Its own process group: a Ctrl-C in a terminal reaches the supervisor only, which then
    // drains its workers once, rather than every worker seeing a second, fatal, signal.
    launch.process_group();
    let pid = launch.spawn().map_err(|source| UpgradeError::Spawn {
        path: image.program.clone(),
        source,
    })?;
    log_started(pid, handover, image);
    Ok(Spawned {
        pid,
        ready,
        orders,
        state,
    })
}

/// A next generation that said it is ready, watched through its probation: by its process
/// (not the pipe, which a grandchild may hold open) and by the rest of the readiness pipe, on
/// which it says when it moves on.
#[derive(Debug)]
pub(crate) struct Successor {
    pub(crate) pid: u32,
    child: Process,
    link: Option<LineReader>,
    /// Where this generation's final state goes (see `carry`).
    state: Option<std::io::PipeWriter>,
    /// How long it took to start and to be ready (see `lineage`).
    pub(crate) times: HandoverTimes,
}

/// What ends a standby.
#[derive(Debug)]
pub(crate) enum SuccessorEvent {
    /// The successor exited; how, in words.
    Exited(String),
    /// The successor moved on (an upgrade of its own, or a shutdown): no rollback any more.
    Released,
}

impl Successor {
    /// The pipe for the final batch of state, kept after the standby ends.
    pub(crate) fn take_state(&mut self) -> Option<std::io::PipeWriter> {
        self.state.take()
    }

    /// Stops it (SIGTERM: it drains) and reaps it; SIGKILL after `grace`.
    pub(crate) async fn stop(self, grace: Duration) {
        stop_and_reap(self.child, self.pid, grace).await;
    }

    pub(crate) async fn next_event(&mut self) -> SuccessorEvent {
        loop {
            let Some(link) = self.link.as_mut() else {
                return SuccessorEvent::Exited(exit_description(self.child.wait().await));
            };
            // The line first: a successor that said it moved on (a shutdown during its
            // probation) and exited a moment later is no rollback, whichever the wake-up saw
            // first.
            tokio::select! {
                biased;
                line = link.line() => match line.as_deref() {
                    Ok(RELEASE_MESSAGE) => return SuccessorEvent::Released,
                    // Closed or garbled: only the process itself is watched from here.
                    _ => self.link = None,
                },
                status = self.child.wait() => return SuccessorEvent::Exited(exit_description(status)),
            }
        }
    }
}

fn exit_description(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => describe(status),
        Err(err) => format!("could not be waited for: {err}"),
    }
}

/// Direct mode: starts the next generation and waits for it to be ready, or for `stop` (a
/// shutdown requested meanwhile). On failure, or on `stop`, the child is stopped (SIGTERM,
/// then SIGKILL after `stop_grace`) and reaped: in the background on failure, so that the
/// next upgrade can start at once; before returning on `stop`, so that nothing is left.
pub(crate) async fn start_successor(
    image: &ExecImage,
    listeners: Vec<(String, OwnedFd)>,
    handover: Handover,
    timeouts: (Duration, Duration),
    start_batch: Vec<(String, String)>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Successor, UpgradeError> {
    let (ready_timeout, stop_grace) = timeouts;
    let requested = Instant::now();
    let Prepared {
        launch,
        ready,
        mut state,
    } = prepare(image, listeners, handover, None)?;
    let spawned = launch.spawn();
    let spawned_after = requested.elapsed();
    let pid = spawned.map_err(|source| UpgradeError::Spawn {
        path: image.program.clone(),
        source,
    })?;
    let mut child = Process::new(pid);
    log_started(pid, handover, image);
    // Small, and the child reads it first thing: the pipe's buffer takes it at once.
    if let Err(err) = super::carry::write_batch(&mut state, start_batch, true) {
        tracing::warn!(pid, error = %err, "could not hand the state over to the next generation");
    }
    let mut link = LineReader::new(OwnedFd::from(ready)).map_err(|e| protocol_error(pid, e))?;
    let outcome = tokio::select! {
        // The process first: a child that said ready and died at once is no successor.
        biased;
        status = child.wait() => Err(last_word(pid, &mut link, exit_description(status)).await),
        () = stop.cancelled() => Err(UpgradeError::Stopped { pid }),
        ready = tokio::time::timeout(ready_timeout, link.line()) => match ready {
            Err(_) => Err(UpgradeError::Timeout { pid, timeout: ready_timeout }),
            Ok(Ok(line)) if line.is_empty() => Err(closed_or_exited(pid, &mut child).await),
            Ok(line) => parse_ready(pid, line),
        },
    };
    match outcome {
        Ok(steps) => Ok(Successor {
            pid,
            child,
            link: Some(link),
            state: Some(state),
            times: HandoverTimes {
                spawned: spawned_after,
                ready: requested.elapsed(),
                steps,
            },
        }),
        Err(err @ UpgradeError::Stopped { .. }) => {
            stop_and_reap(child, pid, stop_grace).await;
            Err(err)
        }
        Err(err) => {
            tokio::spawn(stop_and_reap(child, pid, stop_grace));
            Err(err)
        }
    }
}

/// How long a child that exited is given to have said why: its line is already in the pipe,
/// and a grandchild may hold the pipe open, so this never waits for more.
pub(crate) const LAST_WORDS: Duration = Duration::from_millis(100);

/// Why a child that exited before it was ready did: the error it wrote on the pipe before it
/// exited, if any (already in the pipe, so a short wait suffices even when a grandchild holds
/// the pipe open), else how it exited.
async fn last_word(pid: u32, link: &mut LineReader, status: String) -> UpgradeError {
    match tokio::time::timeout(LAST_WORDS, link.line()).await {
        Ok(line @ Ok(_)) => match parse_ready(pid, line) {
            Err(reported @ UpgradeError::Reported { .. }) => reported,
            Ok(_) => UpgradeError::Exited {
                pid,
                status: format!("{status}, right after it said ready"),
            },
            Err(_) => UpgradeError::Exited { pid, status },
        },
        _ => UpgradeError::Exited { pid, status },
    }
}

/// The pipe closed without a word before "ready": usually the child died (its pipe closes as it
/// exits, before its parent can see the exit), and its exit, a moment later, says how, e.g.
/// killed by SIGSEGV. A child that closed the pipe and lives on is not waited for long.
async fn closed_or_exited(pid: u32, child: &mut Process) -> UpgradeError {
    // Longer than `last_word`'s wait: the exit is seen through SIGCHLD, which the runtime's
    // signal driver delivers, and a loaded machine delays that more than bytes already in a pipe.
    let status = match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
        Ok(status) => exit_description(status),
        Err(_) => "it closed the readiness pipe".to_owned(),
    };
    UpgradeError::Exited { pid, status }
}

fn log_started(pid: u32, handover: Handover, image: &ExecImage) {
    tracing::info!(
        pid,
        generation = handover.generation,
        program = %image.program.display(),
        "started the next generation; waiting for it to be ready"
    );
}

fn check_executable(path: &std::path::Path) -> Result<(), UpgradeError> {
    let path_buf = || path.to_path_buf();
    match std::fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(UpgradeError::Missing { path: path_buf() })
        }
        Err(source) => Err(UpgradeError::Spawn {
            path: path_buf(),
            source,
        }),
        Ok(meta) if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 => {
            Err(UpgradeError::NotExecutable { path: path_buf() })
        }
        Ok(_) => Ok(()),
    }
}

/// The launch that starts the next generation, and our ends of its pipes.
fn prepare(
    image: &ExecImage,
    listeners: Vec<(String, OwnedFd)>,
    handover: Handover,
    orders: Option<std::io::PipeReader>,
) -> Result<Prepared, UpgradeError> {
    check_executable(&image.program)?;
    let pipe = || {
        std::io::pipe().map_err(|source| UpgradeError::Spawn {
            path: image.program.clone(),
            source,
        })
    };
    let (reader, ready_writer) = pipe()?;
    let (state_reader, state_writer) = pipe()?;
    let mut launch = Launch::new(&image.program, &image.args, &image.cwd);
    // The protocol variables this process was started with are not the child's: removed
    // first, then set to the child's own below.
    for var in PROTOCOL_VARS {
        launch.env_remove(var);
    }
    let count = listeners.len();
    let names: Vec<String> = listeners.iter().map(|(name, _)| name.clone()).collect();
    for (child_fd, (_, parent_fd)) in (FIRST_FD..).zip(listeners) {
        launch.fd(parent_fd, child_fd);
    }
    let ready_fd = FIRST_FD + i32::try_from(count).unwrap_or(i32::MAX - FIRST_FD);
    launch.fd(OwnedFd::from(ready_writer), ready_fd);
    let state_fd = ready_fd + 1;
    launch.fd(OwnedFd::from(state_reader), state_fd);
    if let Some(orders) = orders {
        let orders_fd = state_fd + 1;
        launch.fd(OwnedFd::from(orders), orders_fd);
        launch.env(ORDERS_FD, orders_fd.to_string());
    }
    // No LISTEN_PID: the child's pid is not known before the spawn, and listenfd accepts an
    // absent one (a wrong one would make it silently ignore the sockets).
    launch.env(LISTEN_FDS, count.to_string());
    launch.env(LISTEN_FDNAMES, names.join(":"));
    launch.env(READY_FD, ready_fd.to_string());
    launch.env(STATE_FD, state_fd.to_string());
    launch.env(GENERATION, handover.generation.to_string());
    if let Some(parent) = handover.parent_pid {
        launch.env(PARENT_PID, parent.to_string());
    }
    if let Some(supervisor) = handover.supervisor_pid {
        launch.env(SUPERVISOR_PID, supervisor.to_string());
        launch.env(FINAL_END, "1");
        // The supervisor is systemd's main process; a worker announcing MAINPID would be
        // taken for the service and left orphaned at the next upgrade.
        launch.env_remove("NOTIFY_SOCKET");
    }
    if handover.from_systemd {
        launch.env(FROM_SYSTEMD, "1");
    }
    if let Some(probation) = handover.probation {
        launch.env(PROBATION_MS, probation.as_millis().to_string());
    }
    // This process reads the steps on the `ready` line (see `handover`).
    launch.env(READY_STEPS, std::process::id().to_string());
    Ok(Prepared {
        launch,
        ready: reader,
        state: state_writer,
    })
}

/// A launch ready to start the next generation, with our ends of its pipes. The launch holds
/// our copies of the child's fds, the pipes' other ends among them, until it spawns: then they
/// close, or end-of-file would never come when the child dies.
struct Prepared {
    launch: Launch,
    ready: std::io::PipeReader,
    /// The write end of its state pipe (see `carry`).
    state: std::io::PipeWriter,
}

/// A worker that said it is ready (the supervisor's side).
#[derive(Debug)]
pub(crate) struct Ready {
    /// The rest of its readiness pipe, on which it goes on to hand over its state (see `carry`).
    pub(crate) lines: LineReader,
    /// Its start, step by step, when it said.
    pub(crate) steps: Option<Steps>,
}

/// Waits for the readiness line (the supervisor's side; it learns of a death by reaping).
pub(crate) async fn wait_ready(
    pid: u32,
    reader: std::io::PipeReader,
    ready_timeout: Duration,
) -> Result<Ready, UpgradeError> {
    let mut reader = LineReader::new(OwnedFd::from(reader)).map_err(|e| protocol_error(pid, e))?;
    match tokio::time::timeout(ready_timeout, reader.line()).await {
        Err(_) => Err(UpgradeError::Timeout {
            pid,
            timeout: ready_timeout,
        }),
        Ok(line) => parse_ready(pid, line).map(|steps| Ready {
            lines: reader,
            steps,
        }),
    }
}

/// The child's first line: ready (with its steps, if it sent them), or why not.
fn parse_ready(pid: u32, line: std::io::Result<String>) -> Result<Option<Steps>, UpgradeError> {
    let protocol = |detail: String| UpgradeError::Protocol { pid, detail };
    let line = line.map_err(|e| protocol(format!("reading the readiness pipe: {e}")))?;
    match ReadyLine::parse(&line, pid) {
        ReadyLine::Ready { steps } => Ok(steps),
        ReadyLine::OtherPid(said) => Err(protocol(format!("it said ready as pid {said:?}"))),
        ReadyLine::Error(reason) => Err(UpgradeError::Reported {
            pid,
            reason: reason.to_owned(),
        }),
        // End of file without a word: the child died, or closed the pipe.
        ReadyLine::Closed => Err(UpgradeError::Exited {
            pid,
            status: "it closed the readiness pipe".to_owned(),
        }),
        ReadyLine::Unexpected => Err(protocol(format!("unexpected message {line:?}"))),
    }
}

fn protocol_error(pid: u32, err: std::io::Error) -> UpgradeError {
    UpgradeError::Protocol {
        pid,
        detail: format!("cannot read the readiness pipe: {err}"),
    }
}

/// The read end of a pipe of the handover protocol, one line at a time (a line read together
/// with the next one keeps the rest for later).
#[derive(Debug)]
pub(crate) struct LineReader {
    pipe: tokio::net::unix::pipe::Receiver,
    buf: Vec<u8>,
}

impl LineReader {
    pub(crate) fn new(fd: OwnedFd) -> std::io::Result<LineReader> {
        LineReader::with_buffer(fd, Vec::with_capacity(64))
    }

    /// Like `new`, for a pipe of which `buf` was already read.
    pub(crate) fn with_buffer(fd: OwnedFd, buf: Vec<u8>) -> std::io::Result<LineReader> {
        Ok(LineReader {
            pipe: tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?,
            buf,
        })
    }

    /// The next line, trimmed; empty at end of file.
    pub(crate) async fn line(&mut self) -> std::io::Result<String> {
        let mut chunk = [0u8; 256];
        while !self.buf.contains(&b'\n') && self.buf.len() < MAX_MESSAGE {
            let n = self.pipe.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let end = self
            .buf
            .iter()
            .position(|b| *b == b'\n')
            .map_or(self.buf.len(), |i| i + 1);
        let line: Vec<u8> = self.buf.drain(..end).collect();
        Ok(String::from_utf8_lossy(&line).trim().to_owned())
    }
}

pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => status.to_string(),
    }
}

/// SIGTERM first: a child that began accepting just as the deadline passed drains its
/// connections rather than resetting them. SIGKILL if it is still there after `grace`.
async fn stop_and_reap(mut child: Process, pid: u32, grace: Duration) {
    terminate(pid);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(pid, ?grace, "the next generation ignored SIGTERM: SIGKILL");
            // SIGKILL cannot be ignored: the wait is short.
            child.kill();
            child.wait().await
        }
    };
    match status {
        Ok(status) => {
            tracing::info!(pid, status = %describe(status), "stopped next generation reaped")
        }
        Err(err) => tracing::warn!(pid, error = %err, "could not reap the next generation"),
    }
}

/// Sends SIGTERM to `pid`; a process already gone is not an error.
pub(crate) fn terminate(pid: u32) {
    send(pid, Signal::SIGTERM);
}

pub(crate) fn send(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}
