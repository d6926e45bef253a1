//! Handovers: SIGUSR2 to the baton generation that answers, then the time until a new
//! connection is answered by another pid, and the new generation's own figures from the admin
//! `/-/status`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

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
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handover {
    /// When SIGUSR2 was sent.
    pub(crate) signalled: Instant,
    /// SIGUSR2 until a new connection is answered by the new pid.
    pub(crate) served_ms: f64,
    /// The new generation's own: request to spawn, request to "ready".
    pub(crate) spawned_ms: f64,
    pub(crate) ready_ms: f64,
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
    let json: serde_json::Value = serde_json::from_str(&status.body)
        .map_err(|err| SpeedError::Failed(format!("/-/status: {err}")))?;
    let ms = |key: &str| json["previous"][key].as_f64().unwrap_or(f64::NAN);
    Ok(Handover {
        signalled: start,
        served_ms,
        spawned_ms: ms("spawned_ms"),
        ready_ms: ms("ready_ms"),
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
