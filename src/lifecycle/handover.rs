//! What one generation hands the next: listening sockets (systemd's `LISTEN_FDS` protocol, read
//! with `listenfd`), the generation number, and the write end of a readiness pipe. This module
//! holds the names and the readiness line of that protocol and the child's side of it;
//! `upgrade` holds the parent's.
//!
//! The readiness line is `ready <pid>`, followed by `key=value` words only when the reader
//! asked for them (`READY_STEPS`): a build from before them takes anything after the pid for
//! a broken line, while every build since ignores the words it does not know.
#![allow(unsafe_code, reason = "adopts inherited fds by number")]

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};

use super::carry::Inherited;
use super::steps::{StartupClock, Step, Steps};

pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The fd number of the readiness pipe's write end in the child.
pub(crate) const READY_FD: &str = "BATON_UPGRADE_READY_FD";
/// The child's generation (the parent's + 1).
pub(crate) const GENERATION: &str = "BATON_UPGRADE_GENERATION";
/// The parent's pid, so the child can tell whether its parent is still draining.
pub(crate) const PARENT_PID: &str = "BATON_UPGRADE_PARENT_PID";
/// Set in supervised mode: the worker's supervisor, which owns the pid file and upgrades.
pub(crate) const SUPERVISOR_PID: &str = "BATON_UPGRADE_SUPERVISOR_PID";
/// Set when the first generation got its sockets from systemd socket activation: the socket
/// units stay the source of truth for addresses in every later generation too.
pub(crate) const FROM_SYSTEMD: &str = "BATON_UPGRADE_FROM_SYSTEMD";
/// The fd number of the read end of the previous generation's state (see `carry`).
pub(crate) const STATE_FD: &str = "BATON_UPGRADE_STATE_FD";
/// Set for a supervisor's worker: the fd number of the read end of the supervisor's orders
/// (`standby`, `resume`, `release`, one per line).
pub(crate) const ORDERS_FD: &str = "BATON_SUPERVISOR_ORDERS_FD";
/// How long the parent stands by after "ready" (direct mode), in milliseconds: the child
/// records when that ends, for the client that waits for the outcome.
pub(crate) const PROBATION_MS: &str = "BATON_UPGRADE_PROBATION_MS";
/// Set by a process that reads the start-up steps on the `ready` line (see `steps`), to its
/// own pid. A child sends them only to the parent this names: the variable may be left over
/// from a generation before an older build, which would take them for a broken line.
pub(crate) const READY_STEPS: &str = "BATON_UPGRADE_READY_STEPS";
/// Set by a supervisor that writes an `end` line to a worker once its predecessor's final
/// batch is all in (see `relay_state`). A worker of an older supervisor, which never writes
/// it, does not wait for one.
pub(crate) const FINAL_END: &str = "BATON_UPGRADE_FINAL_END";
/// Every variable of the protocol: removed from the environment handed to a child before the
/// fresh values are set, so nothing stale crosses two generations.
pub(crate) const PROTOCOL_VARS: [&str; 13] = [
    FINAL_END,
    STATE_FD,
    READY_STEPS,
    ORDERS_FD,
    PROBATION_MS,
    SUPERVISOR_PID,
    LISTEN_FDS,
    LISTEN_PID,
    LISTEN_FDNAMES,
    READY_FD,
    GENERATION,
    PARENT_PID,
    FROM_SYSTEMD,
];

/// The message a ready child writes; anything else is a failure report.
pub(crate) const READY_MESSAGE: &str = "ready";
/// The word of the `ready` line that carries the start-up steps (`steps=name:micros,...`).
pub(crate) const STEPS_FIELD: &str = "steps";
pub(crate) const ERROR_MESSAGE: &str = "error";
/// Written after "ready" when the child moves on (its own upgrade, or a shutdown): the parent,
/// standing by, stops watching for a death to roll back from and exits.
pub(crate) const RELEASE_MESSAGE: &str = "release";

/// A listening socket received from the previous generation or from systemd.
#[derive(Debug)]
pub(crate) struct InheritedSocket {
    /// From `LISTEN_FDNAMES` (`http`, `admin`), when given.
    pub(crate) name: Option<String>,
    pub(crate) listener: TcpListener,
}

/// How this process was started: what it inherited and how to start it again.
#[derive(Debug)]
pub struct Startup {
    pub(crate) sockets: Vec<InheritedSocket>,
    /// `true` when systemd passed the sockets (socket activation) rather than our own parent.
    pub(crate) from_systemd: bool,
    ready_pipe: Option<ReadyPipe>,
    generation: u64,
    pub(crate) parent_pid: Option<u32>,
    /// Direct mode: how long the parent stands by once this process is ready.
    pub(crate) probation: Option<std::time::Duration>,
    /// Set when this process is a worker of a supervisor.
    pub(crate) supervisor_pid: Option<u32>,
    /// A worker's read end of its supervisor's orders.
    pub(crate) orders: Option<OwnedFd>,
    /// What the previous generation handed over (see `carry`).
    pub(crate) inherited: Inherited,
    pub(crate) image: ExecImage,
    /// Since `main`'s first line, step by step, to "ready".
    clock: StartupClock,
    /// Whether the process reading the readiness pipe wants the steps on the `ready` line.
    send_steps: bool,
}

impl Startup {
    /// Reads the handover from the environment and the inherited fds.
    ///
    /// Call before any thread exists: `listenfd` removes `LISTEN_FDS`/`LISTEN_PID` from the
    /// environment, which is only sound while the process is single-threaded.
    pub fn capture() -> Startup {
        let clock = StartupClock::start();
        let from_systemd = std::env::var(LISTEN_PID)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|pid| pid == std::process::id())
            || std::env::var_os(FROM_SYSTEMD).is_some();
        let names: Vec<String> = std::env::var(LISTEN_FDNAMES)
            .map(|v| v.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for index in 0..fds.len() {
            match fds.take_tcp_listener(index) {
                Ok(Some(listener)) => sockets.push(InheritedSocket {
                    name: names.get(index).filter(|n| !n.is_empty()).cloned(),
                    listener,
                }),
                Ok(None) => {}
                // Logging is not set up yet; the socket is left alone and reported at adoption.
                Err(err) => eprintln!("baton: ignoring inherited fd #{index}: {err}"),
            }
        }
        let generation = env_number(GENERATION).unwrap_or(1).max(1);
        let ready_pipe = inherited_pipe(READY_FD).map(|fd| ReadyPipe(File::from(fd)));
        let orders = inherited_pipe(ORDERS_FD);
        let inherited = inherited_pipe(STATE_FD)
            .map(Inherited::read_batch)
            .unwrap_or_default();
        close_strays_on_exec();
        let mut startup = Startup {
            sockets,
            from_systemd,
            ready_pipe,
            generation,
            parent_pid: env_number(PARENT_PID).and_then(|p| u32::try_from(p).ok()),
            probation: env_number(PROBATION_MS).map(std::time::Duration::from_millis),
            supervisor_pid: env_number(SUPERVISOR_PID).and_then(|p| u32::try_from(p).ok()),
            orders,
            inherited,
            image: ExecImage::current(),
            clock,
            send_steps: env_number(READY_STEPS).is_some_and(|pid| {
                pid == u64::from(nix::unistd::getppid().as_raw().unsigned_abs())
            }),
        };
        startup.lap(Step::Handover);
        startup
    }

    /// Ends a step of the start (see [`Step`]).
    pub fn lap(&mut self, step: Step) {
        self.clock.lap(step);
    }

    /// The steps of the start so far.
    pub fn steps(&self) -> &Steps {
        self.clock.steps()
    }

    /// 1 for a fresh start, the parent's + 1 after an upgrade.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the previous generation handed over at the start (empty for a fresh start).
    pub fn inherited(&self) -> &Inherited {
        &self.inherited
    }

    /// `true` when this process is a worker started by a supervisor.
    pub fn is_worker(&self) -> bool {
        self.supervisor_pid.is_some()
    }

    /// Whether the end of the previous generation's final batch will be told: by the end of
    /// the pipe in direct mode, by an `end` line from a supervisor that writes one.
    pub(crate) fn final_end_told(&self) -> bool {
        !self.is_worker() || std::env::var_os(FINAL_END).is_some()
    }

    /// Tells the waiting parent (if any) that this process is ready to serve. What is returned
    /// tells a parent standing by that it may go (see [`ParentLink::release`]).
    /// The last step, [`Step::Ready`], ends just before the line is written.
    pub(crate) fn report_ready(&mut self) -> std::io::Result<ParentLink> {
        self.lap(Step::Ready);
        match self.ready_pipe.take() {
            Some(mut pipe) => {
                pipe.send(&ready_line(
                    std::process::id(),
                    self.send_steps.then(|| self.steps()),
                ))?;
                Ok(ParentLink(Some(pipe)))
            }
            None => Ok(ParentLink(None)),
        }
    }

    /// Tells the waiting parent (if any) why this process will not become ready.
    pub fn report_failure(&mut self, reason: &str) {
        if let Some(pipe) = self.ready_pipe.take() {
            // One line: the parent reads up to the first newline.
            let reason = reason.replace('\n', "; ");
            // The parent sees end-of-file if this write fails, which it reports too.
            let mut pipe = pipe;
            let _ = pipe.send(&format!("{ERROR_MESSAGE} {reason}"));
        }
    }
}

/// `ready <pid>`, with the steps when the reader wants them.
pub(crate) fn ready_line(pid: u32, steps: Option<&Steps>) -> String {
    match steps {
        Some(steps) => format!("{READY_MESSAGE} {pid} {STEPS_FIELD}={}", steps.to_wire()),
        None => format!("{READY_MESSAGE} {pid}"),
    }
}

/// The first line a child writes on the readiness pipe, as its parent reads it.
#[derive(Debug, PartialEq)]
pub(crate) enum ReadyLine<'a> {
    /// `ready <pid>`: with its steps if it sent them (see [`ready_line`]). Words after the pid
    /// that this build does not know are a newer build's, and ignored; so are steps that do
    /// not read.
    Ready {
        steps: Option<Steps>,
    },
    /// `ready` with another pid than the child's.
    OtherPid(&'a str),
    /// `error <reason>`.
    Error(&'a str),
    /// End of file without a word.
    Closed,
    Unexpected,
}

impl ReadyLine<'_> {
    pub(crate) fn parse(line: &str, pid: u32) -> ReadyLine<'_> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (said, fields) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            READY_MESSAGE if said == pid.to_string() => ReadyLine::Ready {
                steps: fields
                    .split(' ')
                    .filter_map(|field| field.split_once('='))
                    .find(|(key, _)| *key == STEPS_FIELD)
                    .and_then(|(_, steps)| Steps::from_wire(steps)),
            },
            READY_MESSAGE => ReadyLine::OtherPid(rest),
            ERROR_MESSAGE => ReadyLine::Error(rest),
            "" => ReadyLine::Closed,
            _ => ReadyLine::Unexpected,
        }
    }
}

/// Marks every fd above stdio close-on-exec. Whatever our own parent leaked to us (a shell's
/// pipe, a supervisor's log fd) must not cross into the next generation, and from there into
/// every later one: only the sockets and the readiness pipe are handed over, explicitly.
fn close_strays_on_exec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the fd was listed open a moment ago and no other thread exists yet to close
        // it; F_SETFD only changes its close-on-exec flag (on the directory fd of the listing,
        // already closed, it fails harmlessly).
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A pipe end the parent handed us, named by the fd number in `var`, close-on-exec again so
/// that it does not leak into a grandchild.
fn inherited_pipe(var: &str) -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(var).ok()?.parse().ok()?;
    // Only a fd above stdio that is open and is a pipe is taken: a stray variable must
    // not make us write into, read from, or close somebody else's file.
    if fd < 3 {
        return None;
    }
    // SAFETY: `fcntl(F_GETFD)` and `fstat` only query the descriptor; the number came from
    // our parent, and a closed or foreign fd makes them fail, which returns `None`.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).ok()?;
    let stat = fstat(borrowed).ok()?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return None;
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
    // SAFETY: the fd is open, is a pipe our parent handed us for this one purpose, and
    // nothing else in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The write end of the readiness pipe, received from the parent.
#[derive(Debug)]
struct ReadyPipe(File);

impl ReadyPipe {
    fn send(&mut self, message: &str) -> std::io::Result<()> {
        self.0.write_all(format!("{message}\n").as_bytes())
    }
}

/// The readiness pipe after "ready": a previous generation may be standing by on its other end.
#[derive(Debug, Default)]
pub(crate) struct ParentLink(Option<ReadyPipe>);

impl ParentLink {
    /// A worker hands its state to its supervisor, which relays it to the next worker (see
    /// `carry`). A supervisor gone is nothing to report.
    pub(crate) fn send_state(&mut self, items: Vec<(String, String)>, end: bool) {
        if let Some(pipe) = self.0.as_mut()
            && let Err(err) = super::carry::write_batch(&mut pipe.0, items, end)
        {
            tracing::warn!(error = %err, "could not hand the state over to the supervisor");
        }
    }

    /// `true` while the previous generation may still listen.
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_some()
    }

    /// Closes our end without a word: the previous generation is past its probation anyway.
    pub(crate) fn close(&mut self) {
        self.0 = None;
    }

    /// Tells the previous generation (if it still listens) that this one moves on, so that it
    /// stops standing by: no rollback to it from here on. Idempotent.
    pub(crate) fn release(&mut self) {
        if let Some(mut pipe) = self.0.take() {
            // A parent already gone closed the other end: nothing to release.
            let _ = pipe.send(RELEASE_MESSAGE);
        }
    }
}

/// How to start this program again: the path it was started from (not `/proc/self/exe`, which
/// after an install-by-rename points at the deleted old file, and which resolves symlinks a
/// release layout may switch), its arguments and its working directory.
#[derive(Debug, Clone)]
pub struct ExecImage {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
}

impl ExecImage {
    fn current() -> ExecImage {
        let mut argv = std::env::args_os();
        let arg0 = argv.next().map(PathBuf::from);
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let program = arg0
            .and_then(|arg0| resolve_program(&arg0, &cwd))
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        ExecImage {
            program,
            args: argv.collect(),
            cwd,
        }
    }

    /// The executable a binary upgrade will start.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }
}

/// Resolves argv[0] as the shell did: a path with a slash is taken relative to the working
/// directory, a bare name is searched in `PATH`.
fn resolve_program(arg0: &std::path::Path, cwd: &std::path::Path) -> Option<PathBuf> {
    if arg0.as_os_str().is_empty() {
        return None;
    }
    if arg0.components().count() > 1 || arg0.is_absolute() {
        return Some(cwd.join(arg0));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| cwd.join(dir).join(arg0))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_with_a_slash_is_relative_to_the_working_directory() {
        let cwd = std::path::Path::new("/srv/app");
        assert_eq!(
            resolve_program(std::path::Path::new("target/release/baton"), cwd),
            Some(PathBuf::from("/srv/app/target/release/baton"))
        );
        assert_eq!(
            resolve_program(std::path::Path::new("/usr/bin/baton"), cwd),
            Some(PathBuf::from("/usr/bin/baton"))
        );
    }

    #[test]
    fn the_ready_line_carries_the_steps_only_when_asked_and_reads_both_ways() {
        let mut clock = StartupClock::start();
        clock.lap(Step::Config);
        clock.lap(Step::Ready);
        // What a build from before the steps writes, and what it reads: nothing after the pid.
        assert_eq!(ready_line(42, None), "ready 42");
        let line = ready_line(42, Some(clock.steps()));
        assert!(line.starts_with("ready 42 steps=config:"), "{line}");
        let ReadyLine::Ready { steps: Some(steps) } = ReadyLine::parse(&line, 42) else {
            panic!("{line} reads as ready with steps");
        };
        // To the microsecond, as sent.
        assert_eq!(steps.to_string(), clock.steps().to_string());
        let steps = &steps;
        assert_eq!(
            ReadyLine::parse("ready 42", 42),
            ReadyLine::Ready { steps: None }
        );
        // A newer build's words are ignored, and so are steps that do not read.
        let newer = format!("ready 42 colour=blue {} more=1", &line["ready 42 ".len()..]);
        assert_eq!(
            ReadyLine::parse(&newer, 42),
            ReadyLine::Ready {
                steps: Some(steps.clone())
            }
        );
        assert_eq!(
            ReadyLine::parse("ready 42 steps=config:x", 42),
            ReadyLine::Ready { steps: None }
        );
        assert_eq!(
            ReadyLine::parse(&line, 43),
            ReadyLine::OtherPid(&line["ready ".len()..])
        );
        assert_eq!(
            ReadyLine::parse("error no such table: items", 42),
            ReadyLine::Error("no such table: items")
        );
        assert_eq!(ReadyLine::parse("", 42), ReadyLine::Closed);
        assert_eq!(ReadyLine::parse("hello", 42), ReadyLine::Unexpected);
    }

    #[test]
    fn bare_name_is_searched_in_path() {
        let found = resolve_program(std::path::Path::new("sh"), std::path::Path::new("/"));
        assert!(found.is_some_and(|p| p.ends_with("sh")));
    }
}
