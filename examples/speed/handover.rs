//! Handovers: SIGUSR2 to the baton generation that answers, then the time until a new
//! connection is answered by another pid, and the new generation's own figures from the admin
//! `/-/status`, its start step by step included.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use baton::lifecycle::{Predecessor, Steps};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{LIMIT, SpeedError, median};

/// `pid` and generation from baton's greeting, on a new connection.
pub(crate) fn who_answers(addr: SocketAddr) -> Option<u32> {
    let response = loadgen::get_blocking(addr, "/", Duration::from_secs(2)).ok()?;
    let at = response.body.rfind("pid ")?;
    response.body[at + 4..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` runs in `dir`, where this bench started baton: a pid read from a response is
/// checked before it is signalled.
pub(crate) fn is_ours(pid: u32, dir: &Path) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    cwd.is_ok_and(|cwd| std::fs::canonicalize(dir).is_ok_and(|dir| dir == cwd))
}

pub(crate) fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// One handover's figures.
#[derive(Debug, Clone)]
pub(crate) struct Handover {
    /// When SIGUSR2 was sent.
    pub(crate) signalled: Instant,
    /// SIGUSR2 until a new connection is answered by the new pid.
    pub(crate) served_ms: f64,
    /// The new generation's own: request to spawn, request to "ready".
    pub(crate) spawned_ms: f64,
    pub(crate) ready_ms: f64,
    /// The new process's start, `main` to "ready", step by step.
    pub(crate) steps: Option<Steps>,
}

/// What is read of `/-/status`: in order (a `serde_json::Value` would sort the steps by name).
#[derive(Debug, serde::Deserialize)]
struct Status {
    previous: Option<Predecessor>,
}

/// SIGUSR2 to the pid that answers (once `/proc` shows it runs in our baton's directory),
/// then the time until another pid answers.
pub(crate) fn upgrade_once(
    addr: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
) -> Result<Handover, SpeedError> {
    let old = who_answers(addr).ok_or_else(|| SpeedError::Failed("GET / failed".into()))?;
    if !is_ours(old, dir) {
        return Err(SpeedError::Failed(format!(
            "pid {old} does not run in {}",
            dir.display()
        )));
    }
    let raw = i32::try_from(old).map_err(|_| SpeedError::Failed(format!("pid {old}")))?;
    let start = Instant::now();
    kill(Pid::from_raw(raw), Signal::SIGUSR2)
        .map_err(|err| SpeedError::Failed(format!("SIGUSR2 to {old}: {err}")))?;
    let served_ms = loop {
        if who_answers(addr).is_some_and(|pid| pid != old) {
            break start.elapsed().as_secs_f64() * 1000.0;
        }
        if start.elapsed() > LIMIT {
            return Err(SpeedError::Failed(format!(
                "no new generation within {LIMIT:?}"
            )));
        }
    };
    // The old generation hands over its lineage once it has drained; then it leaves.
    while !gone(old) {
        if start.elapsed() > LIMIT {
            return Err(SpeedError::Failed(format!(
                "pid {old} did not exit within {LIMIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = loadgen::get_blocking(admin, "/-/status", Duration::from_secs(2))
        .map_err(|err| SpeedError::Failed(format!("/-/status: {err}")))?;
    let status: Status = serde_json::from_str(&status.body)
        .map_err(|err| SpeedError::Failed(format!("/-/status: {err}")))?;
    let previous = status.previous;
    let ms = |value: Option<f64>| value.unwrap_or(f64::NAN);
    Ok(Handover {
        signalled: start,
        served_ms,
        spawned_ms: ms(previous.as_ref().and_then(|p| p.spawned_ms)),
        ready_ms: ms(previous.as_ref().and_then(|p| p.ready_ms)),
        steps: previous.and_then(|p| p.steps_ms),
    })
}

pub(crate) fn handovers(
    addr: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    count: usize,
) -> Result<Vec<Handover>, SpeedError> {
    (0..count).map(|_| upgrade_once(addr, admin, dir)).collect()
}

/// The head of the table [`print_handovers`] adds rows to.
pub(crate) fn print_handovers_header() {
    println!(
        "| handover | upgrades | SIGUSR2 to new pid serving, median ms | max ms | request to spawn, median ms | request to ready, median ms | spawn to ready, median ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
}

pub(crate) fn print_handovers(label: &str, all: &[Handover]) {
    let col = |f: fn(&Handover) -> f64| median(all.iter().map(f).collect());
    let max = all.iter().map(|h| h.served_ms).fold(0.0, f64::max);
    println!(
        "| {label} | {} | {:.1} | {max:.1} | {:.1} | {:.1} | {:.1} |",
        all.len(),
        col(|h| h.served_ms),
        col(|h| h.spawned_ms),
        col(|h| h.ready_ms),
        col(|h| h.ready_ms - h.spawned_ms),
    );
}

/// The median of each step of the new process's start, in the order they ran, then their sum
/// and what the steps do not cover: the spawn's return to `main` (exec, the loader) and the
/// parent's read of the `ready` line.
pub(crate) fn print_steps(label: &str, all: &[Handover]) {
    let Some(first) = all.iter().find_map(|h| h.steps.as_ref()) else {
        println!("\n(no steps in `/-/status`: a build from before them)");
        return;
    };
    let names: Vec<&str> = first.iter().map(|(name, _)| name).collect();
    let took = |name: &str| -> Vec<f64> {
        all.iter()
            .filter_map(|h| h.steps.as_ref())
            .filter_map(|s| s.iter().find(|(n, _)| *n == name))
            .map(|(_, took)| took.as_secs_f64() * 1e3)
            .collect()
    };
    println!("\n| start of the new process, {label} | median ms | max ms |");
    println!("| --- | ---: | ---: |");
    for name in &names {
        let values = took(name);
        let max = values.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {:.2} | {max:.2} |", median(values));
    }
    let sums: Vec<f64> = all
        .iter()
        .filter_map(|h| h.steps.as_ref())
        .map(|s| s.total().as_secs_f64() * 1e3)
        .collect();
    let max = sums.iter().copied().fold(0.0, f64::max);
    println!(
        "| **main to ready (sum)** | {:.2} | {max:.2} |",
        median(sums)
    );
    let rest: Vec<f64> = all
        .iter()
        .filter_map(|h| {
            let steps = h.steps.as_ref()?.total().as_secs_f64() * 1e3;
            Some(h.ready_ms - h.spawned_ms - steps)
        })
        .collect();
    let max = rest.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "| spawn to ready, not in the steps (exec, loader, pipe) | {:.2} | {max:.2} |",
        median(rest)
    );
}
