//! Processes as `/proc` shows them, and the one way the harness kills: by pid *and* start time,
//! so that a recycled pid is never hit, then reaped.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::POLL;

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    /// With the pid, names one process (pids are reused: `pid_max` may be 32768).
    pub start_ticks: u64,
}

impl ProcInfo {
    pub fn zombie(&self) -> bool {
        self.state == 'Z'
    }
}

pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    parse_stat(pid, &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(pid: u32, stat: &str) -> Option<ProcInfo> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcInfo {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub fn parent_of(pid: u32) -> Option<u32> {
    proc_info(pid).map(|p| p.ppid)
}

/// Still running: there, the same process, and not a zombie.
pub fn alive(pid: u32, start_ticks: u64) -> bool {
    proc_info(pid).is_some_and(|p| p.start_ticks == start_ticks && !p.zombie())
}

/// Whether `pid` has exited altogether: reaped, or a zombie none of whose threads still runs.
/// A thread-group leader shows `Z` as soon as its own thread exits, while the process's other
/// threads may still be exiting (for milliseconds on a loaded machine): until the last one has,
/// its children still have it as their parent and it cannot be reaped.
pub fn has_exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Gone from /proc (ENOENT), or between the open and the read (ESRCH).
        Err(err) => {
            err.kind() == std::io::ErrorKind::NotFound
                || err.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
        }
        Ok(stat) => parse_stat(pid, &stat)
            .is_none_or(|info| info.zombie() && threads(pid).is_none_or(|n| n <= 1)),
    }
}

/// `Threads:` of `/proc/<pid>/status`: the threads not yet released, the leader included.
fn threads(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Gone from /proc altogether, so also reaped by its parent.
pub fn reaped(pid: u32, start_ticks: u64) -> bool {
    proc_info(pid).is_none_or(|p| p.start_ticks != start_ticks)
}

/// Every process on the machine.
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(proc_info)
        .collect()
}

/// The children of `pid` (zombies included).
pub fn children_of(pid: u32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .collect()
}

/// The children of `pid` that exited and were not reaped by it.
pub fn zombie_children(pid: u32) -> Vec<ProcInfo> {
    children_of(pid)
        .into_iter()
        .filter(ProcInfo::zombie)
        .collect()
}

/// A port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a port-0 listener")
        .port()
}

/// Kills and reaps a helper process (a stand-in stranger) when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a process that exited with `code` shows in `Server::exit_status`.
pub fn exited(pid: u32, code: i32) -> WaitStatus {
    WaitStatus::Exited(Pid::from_raw(raw(pid)), code)
}

/// A std exit status as waitpid would have given it.
pub(super) fn wait_status(pid: u32, status: ExitStatus) -> WaitStatus {
    let pid = Pid::from_raw(raw(pid));
    match (status.code(), status.signal().map(Signal::try_from)) {
        (Some(code), _) => WaitStatus::Exited(pid, code),
        (None, Some(Ok(signal))) => WaitStatus::Signaled(pid, signal, status.core_dumped()),
        _ => WaitStatus::StillAlive,
    }
}

pub(super) fn raw(pid: u32) -> i32 {
    i32::try_from(pid).expect("pids fit in i32")
}

/// Sends `signal` to `pid` if it is still the process that started at `start_ticks`.
pub(super) fn signal_if_same(pid: u32, start_ticks: u64, signal: Signal) -> bool {
    alive(pid, start_ticks) && kill(Pid::from_raw(raw(pid)), signal).is_ok()
}

/// Reaps `pid` if it is a zombie child of this process started at `start_ticks`.
pub(super) fn try_reap(pid: u32, start_ticks: u64) -> Option<WaitStatus> {
    let info = proc_info(pid)?;
    if info.start_ticks != start_ticks || !info.zombie() || info.ppid != std::process::id() {
        return None;
    }
    waitpid(Pid::from_raw(raw(pid)), Some(WaitPidFlag::WNOHANG))
        .ok()
        .filter(|status| *status != WaitStatus::StillAlive)
}

/// SIGKILLs every process of `victims`, `child` (the one the harness spawned) and all their
/// descendants (each checked by start time), then reaps them as they become our children, for
/// 10 s at most. `child` is killed and waited for through its handle, so that std never signals
/// its pid after we reaped it (it could be someone else's by then).
pub(super) fn kill_and_reap(victims: impl IntoIterator<Item = u32>, child: Option<Child>) {
    let me = std::process::id();
    let processes = all_processes();
    let child_pid = child.as_ref().map(Child::id);
    let mut victims: Vec<u32> = victims.into_iter().chain(child_pid).collect();
    // Descendants too (a killed parent's children would be orphaned, not killed).
    loop {
        let more: Vec<u32> = processes
            .iter()
            .filter(|p| victims.contains(&p.ppid) && !victims.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        if more.is_empty() {
            break;
        }
        victims.extend(more);
    }
    victims.retain(|&pid| pid != me && Some(pid) != child_pid);
    let ticks_of: HashMap<u32, u64> = processes.iter().map(|p| (p.pid, p.start_ticks)).collect();
    let mut left: Vec<(u32, u64)> = victims
        .into_iter()
        .filter_map(|pid| Some((pid, *ticks_of.get(&pid)?)))
        .collect();
    for &(pid, ticks) in &left {
        // Only the very process seen above: its start time must not have changed.
        signal_if_same(pid, ticks, Signal::SIGKILL);
    }
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The others are our children now (we are their subreaper) or soon will be.
    let end = Instant::now() + Duration::from_secs(10);
    while !left.is_empty() && Instant::now() < end {
        left.retain(|&(pid, ticks)| {
            let Some(info) = proc_info(pid).filter(|p| p.start_ticks == ticks) else {
                return false;
            };
            if info.zombie() && info.ppid == me {
                let _ = try_reap(pid, ticks);
                return proc_info(pid).is_some();
            }
            // Another process's zombie is not ours to wait for; a live one is still dying.
            !info.zombie()
        });
        std::thread::sleep(POLL);
    }
}

/// Sets the test process up once: it becomes the reaper of its orphaned descendants (see the
/// module docs of `support`), and the fds it inherited without close-on-exec (from whatever
/// started the test runner: a shell's pipe, a job server) get it, so that a server starts with
/// exactly stdin/stdout/stderr and every other fd it has is its own.
#[allow(
    unsafe_code,
    reason = "the inherited fds are known only by number; borrowing one needs unsafe"
)]
pub(super) fn prepare_test_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        for fd in inherited_fds() {
            // SAFETY: `fd` was listed as open in /proc/self/fd just now, and nothing in the test
            // process closes fds it did not open itself; only its flags are changed.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
    });
}

/// The fds above stderr of this process that lack close-on-exec (Rust opens everything with
/// it, so these came from outside).
fn inherited_fds() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| fd > 2)
        .filter(|fd| {
            // `flags:` is octal; O_CLOEXEC is 0o2000000.
            fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).is_ok_and(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                    .is_some_and(|flags| flags & 0o2_000_000 == 0)
            })
        })
        .collect()
}
