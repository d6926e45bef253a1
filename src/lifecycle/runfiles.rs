//! The run files of a serving process: the pid file, which clients signal, and the state file,
//! which tells them what became of what they asked for. They are part of readiness: a process
//! that cannot write them is not ready, because no client could find it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::Context;
use super::pidfile::{self, proc_stat, state_path};
use super::record::{ProcessRef, ReloadResult, ReloadSummary, ServerRecord, UpgradeBook};
use crate::settings::ReloadOutcome;

#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    #[error(
        "cannot write {path}: {source}; the client commands find the server through it: make \
         its directory writable by the server's user, or set lifecycle.pid_file"
    )]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read /proc/self/stat, which the state file needs to name this process")]
    OwnStat,
}

/// Makes the pid file and the state file name this process. A supervised worker writes only
/// the state file: the pid file names the supervisor, the stable pid clients signal.
pub(crate) fn claim(ctx: &Context) -> Result<(), RunFileError> {
    let pid_file = ctx.settings.current().lifecycle.pid_file.clone();
    if !ctx.role.is_worker() {
        pidfile::write(&pid_file, ctx.process.pid()).map_err(|source| RunFileError::Write {
            path: pid_file.clone(),
            source,
        })?;
    }
    write_state(ctx)
}

/// Writes the state file the client commands read; a failure is logged. Only the serving
/// generation writes it: once draining, the file belongs to the next one.
pub(crate) fn publish(ctx: &Context) {
    if let Err(err) = write_state(ctx) {
        tracing::error!(error = %err, "could not record the outcome for the client commands");
    }
}

fn write_state(ctx: &Context) -> Result<(), RunFileError> {
    if ctx.process.is_draining() {
        return Ok(());
    }
    let settings = ctx.settings.current();
    let pid = ctx.process.pid();
    let stat = proc_stat(pid).ok_or(RunFileError::OwnStat)?;
    let record = ServerRecord {
        pid,
        start_ticks: stat.start_ticks,
        generation: ctx.process.generation(),
        version: ctx.process.version().to_owned(),
        program: ctx.image.program.clone(),
        cwd: ctx.image.cwd.clone(),
        config_dir: ctx.image.cwd.join(&ctx.settings.source().dir),
        listeners: ctx.process.listeners(),
        supervised: ctx.role.is_worker(),
        config_generation: ctx.settings.generation(),
        last_reload: ctx
            .settings
            .last_reload()
            .map(|r| summarize(r.seq, r.outcome, ctx.settings.generation())),
        upgrades: UpgradeBook::of(&ctx.process, &settings),
        previous: ctx.previous,
        probation_until_ms: ctx.probation_until.map(unix_millis),
    };
    let path = state_path(&settings.lifecycle.pid_file);
    record
        .write(&path)
        .map_err(|source| RunFileError::Write { path, source })
}

/// Removes both files if they still name this process (after an upgrade they name the next).
pub(crate) fn remove_if_ours(pid_file: &Path, pid: u32) {
    pidfile::remove_if_ours(pid_file, pid);
    let path = state_path(pid_file);
    if ServerRecord::read(&path).is_some_and(|r| r.pid == pid) {
        let _ = std::fs::remove_file(path);
    }
}

/// The parent of a direct-mode successor, while it may still run (it stands by, or drains).
pub(crate) fn previous_generation(parent_pid: Option<u32>) -> Option<ProcessRef> {
    let pid = parent_pid?;
    // Only our actual parent: the variable alone names no process.
    if nix::unistd::getppid().as_raw() != i32::try_from(pid).ok()? {
        return None;
    }
    let stat = proc_stat(pid)?;
    Some(ProcessRef {
        pid,
        start_ticks: stat.start_ticks,
    })
}

fn summarize(seq: u64, outcome: ReloadOutcome, in_force: u64) -> ReloadSummary {
    let keys = |keys: Vec<&'static str>| keys.into_iter().map(str::to_owned).collect();
    match outcome {
        ReloadOutcome::Applied {
            config_generation,
            upgrade_only,
        } => ReloadSummary {
            seq,
            result: ReloadResult::Applied,
            config_generation,
            error: None,
            upgrade_only: keys(upgrade_only),
        },
        ReloadOutcome::Unchanged { upgrade_only } => ReloadSummary {
            seq,
            result: ReloadResult::Unchanged,
            config_generation: in_force,
            error: None,
            upgrade_only: keys(upgrade_only),
        },
        ReloadOutcome::Rejected { error } => ReloadSummary {
            seq,
            result: ReloadResult::Rejected,
            config_generation: in_force,
            error: Some(error),
            upgrade_only: Vec::new(),
        },
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, millis)
}
