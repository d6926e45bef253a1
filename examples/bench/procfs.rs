//! What the kernel says about a process (`/proc`), signals by verified pid, reaping, and the
//! machine the figures were taken on.

use std::path::Path;
use std::time::{Duration, Instant};

use baton::lifecycle::proc_stat;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::Serialize;

/// A process for the life of the machine: pids are reused, (pid, start time) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) start_ticks: u64,
}

impl Process {
    /// The process that has `pid` now, if any (and not already exited).
    pub(crate) fn find(pid: u32) -> Option<Process> {
        proc_stat(pid)
            .filter(|stat| !stat.zombie)
            .map(|stat| Process {
                pid,
                start_ticks: stat.start_ticks,
            })
    }

    /// Running: same pid, same start time, not a zombie.
    pub(crate) fn alive(self) -> bool {
        proc_stat(self.pid).is_some_and(|stat| !stat.zombie && stat.start_ticks == self.start_ticks)
    }

    /// Sends `signal` if this is still the same process; a recycled pid is never signalled.
    pub(crate) fn signal(self, signal: Signal) -> Result<(), nix::Error> {
        if !self.alive() {
            return Err(nix::Error::ESRCH);
        }
        let raw = i32::try_from(self.pid).map_err(|_| nix::Error::EINVAL)?;
        kill(Pid::from_raw(raw), signal)
    }

    /// Polls until the process has exited, for at most `limit`.
    pub(crate) fn wait_exit(self, limit: Duration, poll: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(poll);
        }
        true
    }

    /// Collects the exit status if the process is our child (every generation is: the bench is
    /// a child subreaper) and has exited. `None` if it is not ours or still runs.
    pub(crate) fn reap(self) -> Option<String> {
        let raw = i32::try_from(self.pid).ok()?;
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exit {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(format!("killed by {signal}")),
            _ => None,
        }
    }

    /// Resident and peak resident memory (`VmRSS`, `VmHWM` in `/proc/<pid>/status`).
    pub(crate) fn memory(self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub(crate) fn open_fds(self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid))
                .ok()?
                .count(),
        )
    }

    /// Open file descriptors once the count has settled (the same in three reads 50 ms
    /// apart, within 3 s): a connection the client just closed may still be open on the
    /// server's side for a moment.
    pub(crate) fn settled_fds(self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.open_fds()?;
        let mut same = 1;
        while same < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.open_fds()?;
            same = if now == last { same + 1 } else { 1 };
            last = now;
        }
        Some(last)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

/// Makes every orphaned descendant (each generation, once its parent generation exits) our
/// child, so the bench can reap it, read its exit status, and be sure none is left behind.
pub(crate) fn become_subreaper() -> Result<(), nix::Error> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Reaps every child that has exited, at most `limit` of them.
pub(crate) fn reap_exited_children(limit: usize) {
    for _ in 0..limit {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Processes (other than this one) whose working directory is `dir`: what the bench started
/// there, whether or not it knows their pids.
pub(crate) fn processes_in(dir: &Path) -> Vec<(Process, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        // Another user's processes cannot be read and are not ours anyway.
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter_map(|pid| {
            let process = Process::find(pid)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((process, cmdline.trim().to_owned()))
        })
        .collect()
}

/// The machine, for the report: the figures mean little without it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
}

impl Machine {
    pub(crate) fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| "unknown".to_owned(),
            |release| release.trim().to_owned(),
        );
        let rustc = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map_or_else(
                || "unknown".to_owned(),
                |out| String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            );
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu,
            kernel,
            rustc,
        }
    }
}

/// CPU time, to tell how much of the machine the bench's own processes used and how much
/// something else did (a build running next to the benchmark skews every figure).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuClock {
    at: Instant,
    /// Busy time of the whole machine (`/proc/stat`: everything but idle and iowait), in ticks.
    machine: u64,
    /// This process, its reaped children, and the live processes given, in ticks.
    ours: u64,
}

/// Shares of the machine's capacity over an interval, in percent (100 % = every core busy).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct CpuShare {
    pub(crate) ours_percent: f64,
    pub(crate) others_percent: f64,
}

impl CpuClock {
    pub(crate) fn read(live: &[u32]) -> Option<CpuClock> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let machine = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
        let mut ours = process_ticks(std::process::id())?;
        for &pid in live {
            ours += process_ticks(pid).unwrap_or(0);
        }
        Some(CpuClock {
            at: Instant::now(),
            machine,
            ours,
        })
    }

    /// What was used between `self` and `later`.
    pub(crate) fn share_until(&self, later: &CpuClock) -> Option<CpuShare> {
        // /proc counts in USER_HZ, 100 per second in the Linux ABI on every common
        // architecture (sysconf(_SC_CLK_TCK) says the same).
        let ticks_per_second = 100.0;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let capacity = later.at.duration_since(self.at).as_secs_f64() * ticks_per_second * cores;
        if capacity <= 0.0 {
            return None;
        }
        let machine = later.machine.saturating_sub(self.machine) as f64;
        let ours = (later.ours.saturating_sub(self.ours) as f64).min(machine);
        Some(CpuShare {
            ours_percent: 100.0 * ours / capacity,
            others_percent: 100.0 * (machine - ours) / capacity,
        })
    }
}

/// CPU time (user + system) a process has used itself, children not included. Reported in
/// 10 ms ticks, but the kernel derives them from its exact runtime, so over two seconds of a
/// busy server the error is under 1 %.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    // Ticks of USER_HZ (100 per second), see `CpuClock::share_until`.
    Some(Duration::from_millis((field(14)? + field(15)?) * 10))
}

/// utime + stime of a process and of its reaped children, in ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14-17 (utime, stime, cutime, cstime); fields[0] is field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(field(14)? + field(15)? + field(16)? + field(17)?)
}
