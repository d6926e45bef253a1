//! The state file: what the serving process tells its client commands (`baton reload`,
//! `upgrade`, `stop`, `status`) about itself and the outcome of what they asked for. Written
//! atomically by the current generation only; read without any network, so it works with the
//! admin listener switched off. A client reads it with `read_trusted` (who may write it: see
//! `pidfile`) and acts on the process it names only once `trust` has checked that process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pidfile::{PidFileError, read_text, read_trusted};
use super::runfiles::millis;
use super::state::{ListenerInfo, ProcessState, RefusalRecord, UpgradeRecord};
use crate::settings::Settings;

/// One line of the reload story, owned (the server's `ReloadOutcome` borrows static keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub seq: u64,
    pub result: ReloadResult,
    pub config_generation: u64,
    /// Why, when rejected.
    pub error: Option<String>,
    /// Changed keys that take effect at the next upgrade.
    pub upgrade_only: Vec<String>,
}

/// What became of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Rejected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    pub pid: u32,
    /// With `pid`, names this process for the life of the machine (see `pidfile::ProcStat`).
    pub start_ticks: u64,
    pub generation: u64,
    pub version: String,
    /// The executable an upgrade starts. Clients compare it with the build they were told to
    /// check, and never run it: whoever can write this file could name any program.
    pub program: PathBuf,
    pub cwd: PathBuf,
    pub config_dir: PathBuf,
    pub listeners: Vec<ListenerInfo>,
    pub supervised: bool,
    pub config_generation: u64,
    pub last_reload: Option<ReloadSummary>,
    /// Direct mode's upgrades (in supervised mode the supervisor's record has the ones that
    /// count; a worker runs none).
    #[serde(flatten)]
    pub upgrades: UpgradeBook,
    /// After a direct-mode upgrade: the previous generation, which may still stand by or
    /// drain. `baton stop` waits for it too.
    #[serde(default)]
    pub previous: Option<ProcessRef>,
    /// After a direct-mode upgrade: when the previous generation stops standing by (Unix
    /// time, ms). Until then a death of this process is rolled back; `baton upgrade` waits.
    #[serde(default)]
    pub probation_until_ms: Option<u64>,
}

/// The upgrade bookkeeping a client reads, one type for both modes, written by whoever runs the
/// upgrades: the server in direct mode, the supervisor in supervised mode. Two files rather than
/// one because each file has one writer (an atomic rename needs no lock), and in direct mode the
/// server's file passes to the next generation at the handover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeBook {
    pub last_upgrade: Option<UpgradeRecord>,
    pub last_refusal: Option<RefusalRecord>,
    /// How long a client should wait for an upgrade or a stop.
    pub ready_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
}

impl UpgradeBook {
    pub(super) fn of(process: &ProcessState, settings: &Settings) -> Self {
        Self {
            last_upgrade: process.last_upgrade(),
            last_refusal: process.last_refusal(),
            ready_timeout_ms: millis(settings.upgrade.ready_timeout),
            shutdown_timeout_ms: millis(settings.lifecycle.shutdown_timeout),
        }
    }

    /// The sequence numbers of the last upgrade and refusal, to tell the next ones.
    pub(super) fn seen(&self) -> (u64, u64) {
        (
            self.last_upgrade.as_ref().map_or(0, |u| u.seq),
            self.last_refusal.as_ref().map_or(0, |r| r.seq),
        )
    }
}

/// One process for the life of the machine: a pid and its start time (see `ProcStat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_ticks: u64,
}

/// A record from its file; `None` when missing or unreadable (mid-handover, or not ours).
pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = read_text(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// A record from its file for a client, refused if anyone but the server's user could have
/// written it (see `pidfile`); `None` when missing or not a record.
fn read_json_trusted<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, PidFileError> {
    Ok(read_trusted(path)?.and_then(|file| serde_json::from_str(&file.text).ok()))
}

/// Writes a record atomically: readers see the old file or the new one.
pub(super) fn write_json<T: Serialize>(record: &T, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    super::pidfile::write_atomic(path, &json)
}

impl ServerRecord {
    /// Unchecked: for the server, which wrote it, and for a client once `read_trusted` has
    /// vouched for the run directory.
    pub fn read(path: &Path) -> Option<ServerRecord> {
        read_json(path)
    }

    /// For a client: refused if anyone but the server's user could have written it.
    pub fn read_trusted(path: &Path) -> Result<Option<ServerRecord>, PidFileError> {
        read_json_trusted(path)
    }

    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        write_json(self, path)
    }

    /// `program` as a user would write it: a server started as `./bin/baton` in `/srv/app`
    /// records `/srv/app/./bin/baton`.
    pub fn program_path(&self) -> PathBuf {
        self.program.components().collect()
    }

    /// The listener with this name (`http`, `admin`).
    pub fn listener(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }
}

/// What a supervisor tells the client commands (`run/baton.supervisor.json`). The pid file
/// names the supervisor; the state file is written by its current worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorRecord {
    pub pid: u32,
    pub start_ticks: u64,
    pub worker_pid: Option<u32>,
    /// The current worker's generation.
    pub generation: u64,
    /// Workers restarted after dying unexpectedly.
    pub restarts: u64,
    #[serde(flatten)]
    pub upgrades: UpgradeBook,
}

impl SupervisorRecord {
    /// Unchecked, as `ServerRecord::read`.
    pub fn read(path: &Path) -> Option<SupervisorRecord> {
        read_json(path)
    }

    /// For a client, as `ServerRecord::read_trusted`.
    pub fn read_trusted(path: &Path) -> Result<Option<SupervisorRecord>, PidFileError> {
        read_json_trusted(path)
    }

    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        write_json(self, path)
    }
}
