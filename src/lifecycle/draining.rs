//! The generations of a deployment that are draining at once, and their limit
//! (`upgrade.max_draining`).
//!
//! An upgrade never waits for an older generation's drain, and a long drain (a client that
//! never answers a WebSocket close, a slow download) keeps its process up to
//! `lifecycle.shutdown_timeout`: a burst of upgrades could pile processes up. So each process
//! records itself while its drain runs, next to the pid file (`run/baton.draining.<pid>.json`:
//! pid, generation, since when, what it still holds), and reads the records of the others.
//! Once `upgrade.max_draining` newer generations drain too, it is one too many: it hammers its
//! own drain (cuts what is left and counts it in the log), so the oldest always goes first.
//! The limit is the newest draining generation's, whose configuration is the most recent.
//! The serving process lists the records in `/-/status`.
//!
//! Why records rather than a message from the newest generation: in direct mode no process
//! knows every generation (each knows its parent only, and a parent that drained and exited
//! leaves its own parent unreachable), and one mechanism serves both modes. Why each decides
//! for itself: a record never makes a process signal another (a run file must not choose who
//! gets a signal); the worst a forged record can do is end a drain early. A record counts only
//! while a live process has its pid and start time; whoever finds the record of a process
//! that is gone (killed before it could remove it) removes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::pidfile::proc_stat;
use super::record::{read_json, write_json};
use super::state::ProcessState;

/// How often a draining process refreshes its record and looks at the others': how long a
/// burst of upgrades may exceed the limit, at the cost of a few small file reads.
const PERIOD: Duration = Duration::from_millis(200);

/// One draining generation, as its record (and `/-/status`) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingRecord {
    pub pid: u32,
    /// With `pid`, names the process for the life of the machine (see `ProcStat`).
    pub start_ticks: u64,
    pub generation: u64,
    /// When its drain began.
    #[serde(with = "humantime_serde")]
    pub since: SystemTime,
    pub open_connections: usize,
    /// Long-lived responses (WebSockets, event streams) it still serves.
    pub long_lived: usize,
    /// Still standing by through its successor's probation: it may serve again.
    pub standing_by: bool,
    /// The `upgrade.max_draining` in force when its drain began.
    pub max_draining: usize,
}

impl DrainingRecord {
    /// Oldest first: by generation, then by the start of the drain.
    fn age_key(&self) -> (u64, SystemTime, u32) {
        (self.generation, self.since, self.pid)
    }

    fn is_alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| !s.zombie && s.start_ticks == self.start_ticks)
    }
}

/// The draining generations of the deployment whose pid file is `pid_file`, oldest first.
pub fn draining_generations(pid_file: &Path) -> Vec<DrainingRecord> {
    let (dir, prefix) = location(pid_file);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // Temporary files of an atomic write start with a dot, so they never match.
        if !(name.starts_with(&prefix) && name.ends_with(".json")) {
            continue;
        }
        let path = entry.path();
        match read_json::<DrainingRecord>(&path) {
            Some(record) if record.is_alive() => live.push(record),
            // Its process is gone without removing it (killed).
            Some(_) => {
                let _ = std::fs::remove_file(&path);
            }
            // Unreadable: not ours to remove.
            None => {}
        }
    }
    live.sort_by_key(DrainingRecord::age_key);
    live
}

/// The directory of the records and the prefix of their names: `run/baton.pid` gives
/// `run/` and `baton.draining.`.
fn location(pid_file: &Path) -> (PathBuf, String) {
    let dir = match pid_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let stem = pid_file
        .file_stem()
        .map_or_else(|| "baton".into(), |s| s.to_string_lossy());
    (dir, format!("{stem}.draining."))
}

fn record_path(pid_file: &Path, pid: u32) -> PathBuf {
    let (dir, prefix) = location(pid_file);
    dir.join(format!("{prefix}{pid}.json"))
}

/// Removes this process's record, for an exit that skips destructors.
pub(crate) fn remove_own(pid_file: &Path) {
    let _ = std::fs::remove_file(record_path(pid_file, std::process::id()));
}

/// Why the generation `me` must end its drain now, if it must: `upgrade.max_draining` (the
/// newest one's) newer generations drain too.
fn overtaken(me: &DrainingRecord, all: &[DrainingRecord]) -> Option<String> {
    let newer: Vec<&DrainingRecord> = all
        .iter()
        .filter(|r| r.pid != me.pid && r.age_key() > me.age_key())
        .collect();
    let limit = newer
        .iter()
        .max_by_key(|r| r.age_key())
        .map_or(me.max_draining, |newest| newest.max_draining);
    (newer.len() >= limit).then(|| {
        format!(
            "{} newer generations are draining and upgrade.max_draining is {limit}: the oldest \
             ends its drain",
            newer.len()
        )
    })
}

/// This process's record while its drain runs; removed when dropped (the drain ended, or was
/// called off by a rollback).
#[derive(Debug)]
pub(crate) struct Registration {
    path: PathBuf,
    pid_file: PathBuf,
    record: DrainingRecord,
    process: ProcessState,
    /// The last write failed: said once in the log, not at every period.
    failing: bool,
}

impl Registration {
    /// `None` when this process cannot name itself (no `/proc/self/stat`): it then drains
    /// unlisted, and is never told to end early.
    pub(crate) fn new(
        pid_file: &Path,
        process: &ProcessState,
        max_draining: usize,
    ) -> Option<Registration> {
        let pid = process.pid();
        let stat = proc_stat(pid)?;
        Some(Registration {
            path: record_path(pid_file, pid),
            pid_file: pid_file.to_owned(),
            record: DrainingRecord {
                pid,
                start_ticks: stat.start_ticks,
                generation: process.generation(),
                since: SystemTime::now(),
                open_connections: 0,
                long_lived: 0,
                standing_by: false,
                max_draining,
            },
            process: process.clone(),
            failing: false,
        })
    }

    /// Keeps the record up to date; resolves, with the reason, once newer generations fill
    /// the limit. Never resolves for an unlisted process.
    pub(crate) async fn overtaken(registration: Option<Registration>) -> String {
        let Some(mut this) = registration else {
            return std::future::pending().await;
        };
        let mut period = tokio::time::interval(PERIOD);
        loop {
            // The first tick is at once: the older generations learn of this one right away.
            period.tick().await;
            this.refresh();
            if let Some(reason) = overtaken(&this.record, &draining_generations(&this.pid_file)) {
                return reason;
            }
        }
    }

    fn refresh(&mut self) {
        let now = DrainingRecord {
            open_connections: self.process.open_connections(),
            long_lived: self.process.open_long_lived(),
            standing_by: !self.process.is_retired(),
            ..self.record.clone()
        };
        if now == self.record && !self.failing && self.path.exists() {
            return;
        }
        self.record = now;
        match write_json(&self.record, &self.path) {
            Ok(()) => self.failing = false,
            Err(err) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    path = %self.path.display(),
                    error = %err,
                    "cannot record this draining generation; upgrade.max_draining cannot count it"
                );
            }
            Err(_) => {}
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, generation: u64, max_draining: usize) -> DrainingRecord {
        DrainingRecord {
            pid,
            start_ticks: 0,
            generation,
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(generation),
            open_connections: 0,
            long_lived: 0,
            standing_by: false,
            max_draining,
        }
    }

    #[test]
    fn the_oldest_beyond_the_limit_is_overtaken() {
        let all = [record(11, 1, 2), record(12, 2, 2), record(13, 3, 2)];
        assert!(overtaken(&all[0], &all).is_some_and(|r| r.contains("2 newer")));
        assert_eq!(overtaken(&all[1], &all), None);
        assert_eq!(overtaken(&all[2], &all), None);
        // Within the limit, nobody.
        assert_eq!(overtaken(&all[0], &all[..2]), None);
    }

    #[test]
    fn the_newest_generation_sets_the_limit() {
        // The newest drains under a limit of 1 (reloaded before its upgrade): one newer is
        // already too many for every older one.
        let all = [record(11, 1, 3), record(12, 2, 3), record(13, 3, 1)];
        assert!(overtaken(&all[0], &all).is_some());
        assert!(overtaken(&all[1], &all).is_some());
        assert_eq!(overtaken(&all[2], &all), None);
    }

    #[test]
    fn records_of_live_processes_are_listed_and_those_of_dead_ones_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("run/baton.pid");
        let me = std::process::id();
        let live = DrainingRecord {
            start_ticks: proc_stat(me).expect("own stat").start_ticks,
            ..record(me, 4, 2)
        };
        write_json(&live, &record_path(&pid_file, me)).expect("write");
        // A pid that is ours, with a start time that is not: a process long gone.
        let dead_path = record_path(&pid_file, me.wrapping_add(1));
        let dead = DrainingRecord {
            start_ticks: u64::MAX,
            ..record(me.wrapping_add(1), 3, 2)
        };
        write_json(&dead, &dead_path).expect("write");
        assert_eq!(draining_generations(&pid_file), vec![live]);
        assert!(!dead_path.exists(), "the dead process's record is removed");
        remove_own(&pid_file);
        assert_eq!(draining_generations(&pid_file), Vec::new());
        assert_eq!(
            record_path(Path::new("run/baton.pid"), 42),
            Path::new("run/baton.draining.42.json")
        );
    }
}
