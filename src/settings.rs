//! Typed, layered, validated settings and the live store that reloads them.
//!
//! INTERFACE SKELETON: types and signatures are fixed (other modules code against them);
//! bodies marked `unimplemented!` are being written.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Where settings come from: the config directory and the environment name (`BATON_ENV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub dir: PathBuf,
    /// `config/<env>.toml` is layered over `config/default.toml` when present.
    pub env_name: Option<String>,
}

impl ConfigSource {
    /// The directory given, with the environment name read from `BATON_ENV`.
    pub fn from_env(dir: PathBuf) -> Self {
        unimplemented!()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: Server,
    pub admin: Admin,
    pub app: App,
    pub log: Log,
    pub lifecycle: Lifecycle,
    pub upgrade: Upgrade,
    pub reload: Reload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Upgrade-only.
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// 0 = one per core. Upgrade-only.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Upgrade-only.
    pub enabled: bool,
    /// Upgrade-only.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub greeting: String,
    /// Most items the demo store keeps (1..=100000).
    pub items_limit: usize,
    /// When set, `POST /api/items` requires `Authorization: Bearer <key>`. Redacted in output.
    pub api_key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// An `EnvFilter` directive, e.g. `info,baton=debug`. Reloadable.
    pub filter: String,
    /// Upgrade-only.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    pub pid_file: PathBuf,
    #[serde(with = "humantime_serde")]
    pub lame_duck: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Run a supervisor that keeps a stable pid (always on when baton is PID 1). Upgrade-only.
    pub supervise: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    /// Reload when a config file changes (as SIGUSR1 would). Upgrade-only.
    pub watch: bool,
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
}

/// A string that never shows in logs, `Debug` or `baton check` output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Everything that can be wrong with settings. `Display` is the whole message a user sees:
/// which file, line or key, what is allowed, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("placeholder")]
    Placeholder,
}

impl Settings {
    /// Reads every layer (defaults, `default.toml`, `<env>.toml`, `BATON_<SECTION>__<KEY>`),
    /// deserializes strictly and validates. Start-up and reload both call this.
    pub fn load(source: &ConfigSource) -> Result<Settings, SettingsError> {
        unimplemented!()
    }

    /// The effective settings as TOML, secrets redacted (what `baton check` prints).
    pub fn to_redacted_toml(&self) -> String {
        unimplemented!()
    }
}

/// Keys whose change a running process cannot apply (they take effect at the next upgrade).
pub fn upgrade_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    unimplemented!()
}

/// What one reload did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The files and environment give the same settings as those in force.
    Unchanged,
    /// New settings are in force from `config_generation` on.
    Applied {
        config_generation: u64,
        /// Changed keys that will only take effect at the next upgrade.
        upgrade_only: Vec<&'static str>,
    },
    /// The old settings stay in force, whole.
    Rejected { error: String },
}

/// The last reload, for `/-/status` and `baton reload`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// Counts every reload attempt, so a client can wait for "the next one".
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub outcome: ReloadOutcome,
}

/// The settings in force, swapped atomically at each successful reload.
#[derive(Debug)]
pub struct SettingsStore {}

impl SettingsStore {
    pub fn new(source: ConfigSource, initial: Settings) -> Self {
        unimplemented!()
    }

    /// One consistent snapshot: a request that calls this once sees old or new, never a mix.
    pub fn current(&self) -> Arc<Settings> {
        unimplemented!()
    }

    /// 1 at start, +1 at each applied reload.
    pub fn generation(&self) -> u64 {
        unimplemented!()
    }

    pub fn source(&self) -> &ConfigSource {
        unimplemented!()
    }

    /// Re-reads every layer, validates, and swaps if changed. Never leaves a partial state.
    pub fn reload(&self) -> ReloadOutcome {
        unimplemented!()
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        unimplemented!()
    }

    pub fn reloads_ok(&self) -> u64 {
        unimplemented!()
    }

    pub fn reloads_failed(&self) -> u64 {
        unimplemented!()
    }
}
