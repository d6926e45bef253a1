//! Starts a program with inherited fds at chosen numbers, without copying this process, and
//! waits for it without holding a thread.
//!
//! Why not `std::process::Command`: it places extra fds only through a `pre_exec` hook
//! (command-fds), and a hook makes it `fork`. A `fork` of a process that serves thousands of
//! connections copies its page tables and marks every page copy-on-write, holding the lock the
//! workers need to fault a page in. The workers then fault once more on each page they write,
//! and the child tears its copy down before its `exec` completes. Under 5,000 connections the
//! spawn alone took 17 to 45 ms of an upgrade, depending on the machine (BENCHMARKS.md,
//! "The successor started by `posix_spawn`"). glibc and musl implement
//! `posix_spawn` as `clone(CLONE_VM | CLONE_VFORK)`: the child runs in our memory until its
//! `exec`, so there is nothing to copy, and both report a failed `exec` (a missing binary) as
//! the call's error, as `Command` does.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How often a wait without a SIGCHLD stream (which only fails to register in a broken
/// runtime) looks again.
const POLL: Duration = Duration::from_millis(20);

/// A program to start: its arguments, environment, directory and the fds it inherits.
#[derive(Debug)]
pub(crate) struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    env: BTreeMap<OsString, OsString>,
    /// Ours, each to appear in the child at its number.
    fds: Vec<(OwnedFd, RawFd)>,
    process_group: bool,
}

impl Launch {
    /// `program` with `args`, in `cwd`, with this process's environment; stdin is /dev/null,
    /// stdout and stderr are ours.
    pub(crate) fn new(program: &Path, args: &[OsString], cwd: &Path) -> Launch {
        Launch {
            program: program.to_path_buf(),
            args: args.to_vec(),
            cwd: cwd.to_path_buf(),
            env: std::env::vars_os().collect(),
            fds: Vec::new(),
            process_group: false,
        }
    }

    pub(crate) fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.env.insert(key.into(), value.into());
    }

    pub(crate) fn env_remove(&mut self, key: impl AsRef<OsStr>) {
        self.env.remove(key.as_ref());
    }

    /// The child gets `fd` as its fd number `target` (close-on-exec cleared there only).
    pub(crate) fn fd(&mut self, fd: OwnedFd, target: RawFd) {
        self.fds.push((fd, target));
    }

    /// The child leads a process group of its own.
    pub(crate) fn process_group(&mut self) {
        self.process_group = true;
    }

    /// Starts it; our copies of its fds are closed on return, whatever the outcome.
    pub(crate) fn spawn(self) -> std::io::Result<u32> {
        let program = c_string(self.program.as_os_str())?;
        let mut argv = Vec::with_capacity(self.args.len() + 1);
        argv.push(program.clone());
        for arg in &self.args {
            argv.push(c_string(arg)?);
        }
        let envp = self
            .env
            .iter()
            .map(|(key, value)| {
                let mut pair = key.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                c_string(OsStr::from_bytes(&pair))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let cwd = c_string(self.cwd.as_os_str())?;
        let stdin = OwnedFd::from(std::fs::File::open("/dev/null")?);

        // Every source above every target: the dup2s run in order in the child, and one must
        // not overwrite the source of a later one.
        let above = self
            .fds
            .iter()
            .map(|(_, target)| *target)
            .max()
            .unwrap_or(0)
            + 1;
        let mut sources = Vec::with_capacity(self.fds.len() + 1);
        for (fd, target) in self.fds.into_iter().chain([(stdin, 0)]) {
            let fd = if fd.as_raw_fd() < above {
                dup_at_least(&fd, above)?
            } else {
                fd
            };
            sources.push((fd, target));
        }

        let mut actions = PosixSpawnFileActions::init()?;
        add_chdir(&mut actions, &cwd)?;
        for (fd, target) in &sources {
            actions.add_dup2(fd.as_raw_fd(), *target)?;
        }
        let mut attr = PosixSpawnAttr::init()?;
        let mut flags =
            PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF;
        if self.process_group {
            flags |= PosixSpawnFlags::POSIX_SPAWN_SETPGROUP;
            attr.set_pgroup(Pid::from_raw(0))?;
        }
        attr.set_sigmask(&SigSet::empty())?;
        // Rust ignores SIGPIPE, and an ignored signal stays ignored across exec; the child
        // starts as `Command` would start it.
        let mut defaults = SigSet::empty();
        defaults.add(Signal::SIGPIPE);
        attr.set_sigdefault(&defaults)?;
        attr.set_flags(flags)?;
        let pid = posix_spawn(program.as_c_str(), &actions, &attr, &argv, &envp)?;
        drop(sources);
        u32::try_from(pid.as_raw())
            .map_err(|_| std::io::Error::other("posix_spawn gave a negative pid"))
    }
}

fn c_string(text: &OsStr) -> std::io::Result<CString> {
    CString::new(text.as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", text.to_string_lossy()),
        )
    })
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
#[allow(unsafe_code, reason = "nix returns the new fd as a raw number")]
fn dup_at_least(fd: &OwnedFd, min: RawFd) -> std::io::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC succeeded, so `raw` is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// nix has no binding for `posix_spawn_file_actions_addchdir_np` (glibc 2.29, musl 1.1.24).
#[allow(unsafe_code, reason = "a libc call nix does not wrap")]
fn add_chdir(actions: &mut PosixSpawnFileActions, dir: &CString) -> std::io::Result<()> {
    // SAFETY: PosixSpawnFileActions is `repr(transparent)` over an initialised
    // `posix_spawn_file_actions_t`, and the path is a NUL-terminated string the call copies.
    let status = unsafe {
        nix::libc::posix_spawn_file_actions_addchdir_np(
            std::ptr::from_mut(actions).cast::<nix::libc::posix_spawn_file_actions_t>(),
            dir.as_ptr(),
        )
    };
    match status {
        0 => Ok(()),
        errno => Err(Errno::from_raw(errno).into()),
    }
}

/// A child of ours, until reaped. Dropped unreaped, it is reaped in the background when it
/// exits, so that it never lingers as a zombie that still answers `kill(pid, 0)`.
#[derive(Debug)]
pub(crate) struct Process {
    status: Option<ExitStatus>,
    reaper: Reaper,
}

impl Process {
    /// Watches `pid`, a child of ours not waited for yet. Needs a tokio runtime.
    pub(crate) fn new(pid: u32) -> Process {
        Process {
            status: None,
            reaper: Reaper::new(pid),
        }
    }

    /// Its exit status, once it has exited (reaping it); at once if it already was.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.reaper.wait().await?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGKILL, unless it was reaped (its pid may be another process's by then).
    pub(crate) fn kill(&self) {
        if self.status.is_none() {
            super::upgrade::send(self.reaper.pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_some() || !matches!(self.reaper.try_wait(), Ok(None)) {
            return;
        }
        // A runtime shutting down drops the task at once, and the reaper with it: nothing is
        // left to do then, since this process is exiting and its children go to their new
        // parent.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut reaper = Reaper {
                pid: self.reaper.pid,
                sigchld: self.reaper.sigchld.take(),
            };
            runtime.spawn(async move {
                let _ = reaper.wait().await;
            });
        }
    }
}

/// Reaps one child: `waitpid(pid, WNOHANG)` at each SIGCHLD. No `Drop` of its own, so a
/// background reap never starts another.
#[derive(Debug)]
struct Reaper {
    pid: u32,
    sigchld: Option<tokio::signal::unix::Signal>,
}

impl Reaper {
    fn new(pid: u32) -> Reaper {
        let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        Reaper { pid, sigchld }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            // The stream was registered before the check above, so no SIGCHLD is missed.
            match self.sigchld.as_mut() {
                Some(sigchld) => {
                    sigchld.recv().await;
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        let pid = Pid::from_raw(i32::try_from(self.pid).map_err(std::io::Error::other)?);
        Ok(match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
            WaitStatus::Signaled(_, signal, core) => Some(ExitStatus::from_raw(
                signal as i32 | if core { 0x80 } else { 0 },
            )),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kills its child when the test ends, passed or failed, unless it was reaped.
    struct Killed(Process);

    impl Drop for Killed {
        fn drop(&mut self) {
            self.0.kill();
        }
    }

    #[tokio::test]
    async fn fds_arrive_at_their_numbers_and_the_status_is_reported() {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (reader2, writer2) = std::io::pipe().expect("pipe");
        // Swapped on purpose: the first source's target is the second's number.
        let mut launch = Launch::new(
            Path::new("/bin/sh"),
            &["-c".into(), "echo a >&4; echo b >&3; exit 7".into()],
            Path::new("/"),
        );
        launch.fd(OwnedFd::from(writer), 3);
        launch.fd(OwnedFd::from(writer2), 4);
        let mut process = Killed(Process::new(launch.spawn().expect("spawn")));
        let status = process.0.wait().await.expect("wait");
        assert_eq!(status.code(), Some(7));
        assert_eq!(std::io::read_to_string(reader).expect("read"), "b\n");
        assert_eq!(std::io::read_to_string(reader2).expect("read"), "a\n");
        // Reaped: waiting again gives the same status, and kill() signals nothing.
        assert_eq!(process.0.wait().await.expect("again").code(), Some(7));
        process.0.kill();
    }

    #[tokio::test]
    async fn environment_directory_and_signals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut launch = Launch::new(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo \"$BATON_X-${HOME:-none}-$(pwd)\" >&3; exec sleep 30".into(),
            ],
            dir.path(),
        );
        launch.env("BATON_X", "x");
        launch.env_remove("HOME");
        launch.fd(OwnedFd::from(writer), 3);
        let mut process = Killed(Process::new(launch.spawn().expect("spawn")));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(reader), &mut line).expect("read");
        let cwd = dir.path().canonicalize().expect("canonical");
        assert_eq!(line.trim(), format!("x-none-{}", cwd.display()));
        process.0.kill();
        let status = process.0.wait().await.expect("wait");
        assert_eq!(status.signal(), Some(nix::libc::SIGKILL));
    }

    #[test]
    fn a_missing_program_is_an_error_of_the_call() {
        let launch = Launch::new(Path::new("/nonexistent/baton"), &[], Path::new("/"));
        let err = launch.spawn().expect_err("no such program");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
