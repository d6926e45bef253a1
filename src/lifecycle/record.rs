//! The state file: what the serving process tells its client commands (`baton reload`,
//! `upgrade`, `stop`, `status`) about itself and the outcome of what they asked for. Written
//! atomically by the current generation only; read without any network, so it works with the
//! admin listener switched off.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::{ListenerInfo, RefusalRecord, UpgradeRecord};

/// One line of the reload story, owned (the server's `ReloadOutcome` borrows static keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub seq: u64,
    /// `applied`, `unchanged` or `rejected`.
    pub result: String,
    pub config_generation: u64,
    pub error: Option<String>,
    /// Changed keys that take effect at the next upgrade.
    pub upgrade_only: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    pub pid: u32,
    /// With `pid`, names this process for the life of the machine (see `pidfile::ProcStat`).
    pub start_ticks: u64,
    pub generation: u64,
    pub version: String,
    /// What `baton upgrade` checks the configuration with before it signals.
    pub program: PathBuf,
    pub cwd: PathBuf,
    pub config_dir: PathBuf,
    pub listeners: Vec<ListenerInfo>,
    pub supervised: bool,
    pub config_generation: u64,
    pub last_reload: Option<ReloadSummary>,
    pub last_upgrade: Option<UpgradeRecord>,
    pub last_refusal: Option<RefusalRecord>,
    /// How long a client should wait for an upgrade or a stop.
    pub ready_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
}

/// A record from its file; `None` when missing or unreadable (mid-handover, or not ours).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a record atomically: readers see the old file or the new one.
fn write_json<T: Serialize>(record: &T, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    super::pidfile::write_atomic(path, &json)
}

impl ServerRecord {
    pub fn read(path: &Path) -> Option<ServerRecord> {
        read_json(path)
    }

    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        write_json(self, path)
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
    pub last_upgrade: Option<UpgradeRecord>,
    pub last_refusal: Option<RefusalRecord>,
    pub ready_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
}

impl SupervisorRecord {
    pub fn read(path: &Path) -> Option<SupervisorRecord> {
        read_json(path)
    }

    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        write_json(self, path)
    }
}
