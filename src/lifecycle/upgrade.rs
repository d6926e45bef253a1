//! The parent's side of a binary upgrade: start the next generation with our listening sockets
//! and a readiness pipe, wait for "ready" with a deadline, and on any failure stop and reap the
//! child so that nothing has changed.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::Command;
use tokio::io::AsyncReadExt;

use super::handover::{
    ERROR_MESSAGE, ExecImage, FROM_SYSTEMD, GENERATION, LISTEN_FDNAMES, LISTEN_FDS, PARENT_PID,
    PROTOCOL_VARS, READY_FD, READY_MESSAGE, SUPERVISOR_PID,
};

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
}

/// A started process that has not yet said it is ready.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    /// Held only so the process can be waited for in direct mode; the supervisor reaps with
    /// `waitpid(-1)` instead and never waits on it.
    pub(crate) child: std::process::Child,
    pub(crate) ready: std::io::PipeReader,
}

/// Starts `image` with `listeners` (duplicates of ours, by name) and a readiness pipe.
pub(crate) fn spawn_process(
    image: &ExecImage,
    listeners: Vec<(String, OwnedFd)>,
    handover: Handover,
) -> Result<Spawned, UpgradeError> {
    check_executable(&image.program)?;
    let (reader, writer) = std::io::pipe().map_err(|source| UpgradeError::Spawn {
        path: image.program.clone(),
        source,
    })?;
    let child = spawn(image, listeners, writer, handover)?;
    let pid = child.id();
    tracing::info!(
        pid,
        generation = handover.generation,
        program = %image.program.display(),
        "started the next generation; waiting for it to be ready"
    );
    Ok(Spawned {
        pid,
        child,
        ready: reader,
    })
}

/// Direct mode: starts the next generation and waits for it to be ready. On failure the child
/// is stopped (SIGTERM, then SIGKILL after `stop_grace`) and reaped in the background, so the
/// next upgrade can start at once. On success it is not ours to stop any more: it runs on
/// (and is reparented) when we exit.
pub(crate) async fn start_successor(
    image: &ExecImage,
    listeners: Vec<(String, OwnedFd)>,
    handover: Handover,
    ready_timeout: Duration,
    stop_grace: Duration,
) -> Result<u32, UpgradeError> {
    let Spawned {
        pid,
        mut child,
        ready,
    } = spawn_process(image, listeners, handover)?;
    match wait_ready(pid, ready, ready_timeout).await {
        Ok(()) => Ok(pid),
        Err(mut err) => {
            if let UpgradeError::Exited { status, .. } = &mut err
                && let Some(exit) = exit_status_soon(&mut child).await
            {
                *status = describe(exit);
            }
            tokio::spawn(stop_and_reap(child, pid, stop_grace));
            Err(err)
        }
    }
}

/// The exit status of a child that is dying, if it comes within a second.
async fn exit_status_soon(child: &mut std::process::Child) -> Option<ExitStatus> {
    for _ in 0..50 {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
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

fn spawn(
    image: &ExecImage,
    listeners: Vec<(String, OwnedFd)>,
    ready_writer: std::io::PipeWriter,
    handover: Handover,
) -> Result<std::process::Child, UpgradeError> {
    let count = listeners.len();
    let names: Vec<String> = listeners.iter().map(|(name, _)| name.clone()).collect();
    let mut mappings = Vec::with_capacity(count + 1);
    for (child_fd, (_, parent_fd)) in (FIRST_FD..).zip(listeners) {
        mappings.push(FdMapping {
            parent_fd,
            child_fd,
        });
    }
    let ready_fd = FIRST_FD + i32::try_from(count).unwrap_or(i32::MAX - FIRST_FD);
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(ready_writer),
        child_fd: ready_fd,
    });

    let mut command = Command::new(&image.program);
    command
        .args(&image.args)
        .current_dir(&image.cwd)
        .stdin(Stdio::null());
    for var in PROTOCOL_VARS {
        command.env_remove(var);
    }
    // No LISTEN_PID: the child's pid is not known before the spawn, and listenfd accepts an
    // absent one (a wrong one would make it silently ignore the sockets).
    command
        .env(LISTEN_FDS, count.to_string())
        .env(LISTEN_FDNAMES, names.join(":"))
        .env(READY_FD, ready_fd.to_string())
        .env(GENERATION, handover.generation.to_string());
    if let Some(parent) = handover.parent_pid {
        command.env(PARENT_PID, parent.to_string());
    }
    if let Some(supervisor) = handover.supervisor_pid {
        command.env(SUPERVISOR_PID, supervisor.to_string());
        // The supervisor is systemd's main process; a worker announcing MAINPID would be
        // taken for the service and left orphaned at the next upgrade.
        command.env_remove("NOTIFY_SOCKET");
    }
    if handover.from_systemd {
        command.env(FROM_SYSTEMD, "1");
    }
    // command-fds dup2()s each fd to its number in the child and clears close-on-exec only
    // there, so nothing else of ours crosses (it also handles an fd already at its target).
    command
        .fd_mappings(mappings)
        .map_err(|e| UpgradeError::Sockets(e.to_string()))?;
    let child = command.spawn().map_err(|source| UpgradeError::Spawn {
        path: image.program.clone(),
        source,
    });
    // The Command holds our copies of the mapped fds, the pipe's write end among them: drop it
    // now or end-of-file never comes when the child dies.
    drop(command);
    child
}

/// Waits for the readiness line. End of file is reported as `Exited` with a placeholder
/// status the caller may refine (only it knows how its children are reaped).
pub(crate) async fn wait_ready(
    pid: u32,
    reader: std::io::PipeReader,
    ready_timeout: Duration,
) -> Result<(), UpgradeError> {
    let protocol = |detail: String| UpgradeError::Protocol { pid, detail };
    let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .map_err(|e| protocol(format!("cannot read the readiness pipe: {e}")))?;
    let line = match tokio::time::timeout(ready_timeout, read_line(&mut reader)).await {
        Err(_) => {
            return Err(UpgradeError::Timeout {
                pid,
                timeout: ready_timeout,
            });
        }
        Ok(Err(e)) => return Err(protocol(format!("reading the readiness pipe: {e}"))),
        Ok(Ok(line)) => line,
    };
    let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    match word {
        READY_MESSAGE if rest == pid.to_string() => Ok(()),
        READY_MESSAGE => Err(protocol(format!("it said ready as pid {rest:?}"))),
        ERROR_MESSAGE => Err(UpgradeError::Reported {
            pid,
            reason: rest.to_owned(),
        }),
        // End of file without a word: the child died, or closed the pipe.
        "" => Err(UpgradeError::Exited {
            pid,
            status: "it closed the readiness pipe".to_owned(),
        }),
        _ => Err(protocol(format!("unexpected message {line:?}"))),
    }
}

async fn read_line(reader: &mut tokio::net::unix::pipe::Receiver) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_MESSAGE {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).trim().to_owned())
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
async fn stop_and_reap(mut child: std::process::Child, pid: u32, grace: Duration) {
    terminate(pid);
    let deadline = tokio::time::Instant::now() + grace;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(None) => {
                let _ = child.kill();
                // SIGKILL cannot be ignored: the wait is short.
                break tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            }
            Err(err) => break Err(err),
        }
    };
    match status {
        Ok(status) => {
            tracing::info!(pid, status = %describe(status), "failed next generation reaped")
        }
        Err(err) => tracing::warn!(pid, error = %err, "could not reap the failed next generation"),
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
