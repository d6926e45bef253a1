//! Typed, layered, validated settings and the live store that reloads them.
//!
//! # Layers
//! Lowest first; each layer overrides single keys of the ones below it:
//! 1. built-in defaults ([`Settings::default`], documented key by key in `config/default.toml`);
//! 2. `<dir>/default.toml` (required);
//! 3. `<dir>/<BATON_ENV>.toml` when `BATON_ENV` is set (then required: a missing one is a typo);
//! 4. environment variables `BATON_<SECTION>__<KEY>`, e.g. `BATON_SERVER__LISTEN=0.0.0.0:8080`.
//!    Other `BATON_*` names (`BATON_ENV`, `BATON_CONFIG_DIR`, protocol variables) are not
//!    settings and are ignored.
//!
//! Each layer is checked on its own before the layers are merged (unknown keys, wrong types,
//! durations, addresses), so an error names the file or the variable it came from. The merged
//! result is then deserialized strictly and range-checked by [`Settings::validate`]. Start-up,
//! `baton check`, `baton reload` and a live reload all run this same code.
//!
//! # Reload
//! [`SettingsStore`] holds the settings in force. A reload reads every layer again; an error
//! changes nothing. Keys a running process cannot apply (listen addresses, log format, ...) keep
//! their value in force and are reported, so the operator knows they need `baton upgrade`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// Where settings come from: the config directory and the environment name (`BATON_ENV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub dir: PathBuf,
    /// `config/<env>.toml` is layered over `config/default.toml` when present.
    pub env_name: Option<String>,
}

impl ConfigSource {
    pub fn new(dir: impl Into<PathBuf>, env_name: Option<String>) -> Self {
        Self {
            dir: dir.into(),
            env_name,
        }
    }

    /// The directory given, with the environment name read from `BATON_ENV` (empty = unset).
    pub fn from_env(dir: PathBuf) -> Self {
        let env_name = std::env::var("BATON_ENV").ok().filter(|s| !s.is_empty());
        Self::new(dir, env_name)
    }

    fn default_file(&self) -> PathBuf {
        self.dir.join("default.toml")
    }

    fn env_file(&self, env_name: &str) -> PathBuf {
        self.dir.join(format!("{env_name}.toml"))
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
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

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

impl Default for Settings {
    /// The built-in layer. `config/default.toml` spells out the same values with their
    /// documentation; a test keeps the two equal.
    fn default() -> Self {
        Self {
            server: Server {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                request_timeout: Duration::from_secs(30),
                worker_threads: 0,
            },
            admin: Admin {
                enabled: true,
                listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            },
            app: App {
                greeting: "Hello from baton".to_owned(),
                items_limit: 1000,
                api_key: None,
            },
            log: Log {
                filter: "info".to_owned(),
                format: LogFormat::Text,
            },
            lifecycle: Lifecycle {
                pid_file: PathBuf::from("run/baton.pid"),
                lame_duck: Duration::from_secs(2),
                shutdown_timeout: Duration::from_secs(30),
                supervise: false,
            },
            upgrade: Upgrade {
                ready_timeout: Duration::from_secs(30),
            },
            reload: Reload {
                watch: false,
                debounce: Duration::from_millis(250),
            },
        }
    }
}

/// Where a value came from, so an error can send the user to the right place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    File(PathBuf),
    EnvVar(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::EnvVar(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Everything that can be wrong with settings. `Display` is the whole message a user sees:
/// which file, line or key, what is allowed, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "{}: not found; create it (the repository's config/default.toml documents every key) \
         or pass --config-dir DIR (or set BATON_CONFIG_DIR) to the directory that holds it",
        path.display()
    )]
    MissingDefaultFile { path: PathBuf },

    #[error(
        "{}: not found, but BATON_ENV={env_name} asks for it; create it, or fix or unset BATON_ENV",
        path.display()
    )]
    MissingEnvFile { path: PathBuf, env_name: String },

    #[error(
        "BATON_ENV={env_name:?} is not a valid environment name; use letters, digits, '-' or '_' \
         (it names the file <config dir>/<BATON_ENV>.toml)"
    )]
    InvalidEnvName { env_name: String },

    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{}: TOML syntax error at line {line}, column {column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{origin}: unknown key `{key}`; {allowed}")]
    UnknownKey {
        origin: Origin,
        key: String,
        /// What is allowed there instead, e.g. `allowed keys in [server]: listen, ...`.
        allowed: String,
    },

    /// A value of the wrong type or form, or out of range. `origin` is `None` when the error
    /// comes from [`Settings::validate`] on settings that were not loaded from layers.
    #[error("{}{key} = {value}: {problem}", OriginPrefix(origin.as_ref()))]
    InvalidValue {
        origin: Option<Origin>,
        key: String,
        /// As written (strings quoted); secrets show as `[redacted]`.
        value: String,
        /// What is wrong and what is allowed.
        problem: String,
    },

    /// A check the layer pre-checks did not anticipate; config's own message names the key.
    #[error("invalid settings: {0}")]
    Deserialize(#[source] config::ConfigError),
}

/// `"<origin>: "`, or nothing when the value is a built-in default or the origin is unknown
/// (the message then starts at the key, which is where the user should look).
struct OriginPrefix<'a>(Option<&'a Origin>);

impl fmt::Display for OriginPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None | Some(Origin::BuiltIn) => Ok(()),
            Some(origin) => write!(f, "{origin}: "),
        }
    }
}

impl Settings {
    /// Reads every layer (defaults, `default.toml`, `<env>.toml`, `BATON_<SECTION>__<KEY>`),
    /// deserializes strictly and validates. Start-up and reload both call this.
    pub fn load(source: &ConfigSource) -> Result<Settings, SettingsError> {
        Self::load_from(source, process_env())
    }

    /// [`Settings::load`] with the environment given explicitly (tests, and a reload that wants
    /// to be reproducible). Only `BATON_<SECTION>__<KEY>` names are read from `env`.
    pub fn load_from(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let layers = Layers::read(source, env)?;
        layers.check()?;
        let settings = layers.merge()?;
        settings.validate().map_err(|err| layers.locate(err))?;
        Ok(settings)
    }

    /// Checks ranges and the rules that span keys. [`Settings::load`] calls this; call it
    /// yourself only on settings built in code.
    pub fn validate(&self) -> Result<(), SettingsError> {
        const SECOND: Duration = Duration::from_secs(1);
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        const MILLI: Duration = Duration::from_millis(1);

        duration_in(
            "server.request_timeout",
            self.server.request_timeout,
            MILLI,
            HOUR,
        )?;
        count_in("server.worker_threads", self.server.worker_threads, 0, 1024)?;
        // Port 0 ("any free port", as in tests) never collides: each bind gets its own.
        if self.admin.enabled
            && self.admin.listen.port() != 0
            && self.admin.listen == self.server.listen
        {
            return Err(invalid(
                "admin.listen",
                quoted(self.admin.listen),
                "same address as server.listen; give each listener its own port, \
                 or set admin.enabled = false",
            ));
        }
        let greeting = &self.app.greeting;
        if greeting.is_empty() || greeting.len() > 1000 {
            return Err(invalid(
                "app.greeting",
                quoted_short(greeting),
                format!("is {} bytes; allowed 1 to 1000 bytes", greeting.len()),
            ));
        }
        count_in("app.items_limit", self.app.items_limit, 1, 100_000)?;
        if self
            .app
            .api_key
            .as_ref()
            .is_some_and(|key| key.expose().is_empty())
        {
            return Err(invalid(
                "app.api_key",
                "\"\"".to_owned(),
                "empty; set a non-empty key, or remove app.api_key to turn authentication off",
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(invalid(
                "log.filter",
                quoted_short(&self.log.filter),
                format!("invalid log filter: {err}; expected directives like \"info,baton=debug\""),
            ));
        }
        if self.lifecycle.pid_file.as_os_str().is_empty() {
            return Err(invalid(
                "lifecycle.pid_file",
                "\"\"".to_owned(),
                "empty; give a path such as \"run/baton.pid\"",
            ));
        }
        let shutdown = self.lifecycle.shutdown_timeout;
        duration_in("lifecycle.shutdown_timeout", shutdown, MILLI, HOUR)?;
        if self.lifecycle.lame_duck > shutdown {
            return Err(invalid(
                "lifecycle.lame_duck",
                quoted(humantime::format_duration(self.lifecycle.lame_duck)),
                format!(
                    "out of range; allowed 0s to lifecycle.shutdown_timeout (\"{}\")",
                    humantime::format_duration(shutdown)
                ),
            ));
        }
        let ready = self.upgrade.ready_timeout;
        duration_in("upgrade.ready_timeout", ready, SECOND / 10, HOUR)?;
        duration_in(
            "reload.debounce",
            self.reload.debounce,
            Duration::ZERO,
            MINUTE,
        )?;
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted (what `baton check` prints).
    pub fn to_redacted_toml(&self) -> String {
        // Cannot fail: every field is a string, number, bool or table, and every map key a
        // string (paths are only ever read from UTF-8 text).
        toml::to_string(self).expect("settings always serialize to TOML")
    }
}

fn invalid(key: &str, value: String, problem: impl Into<String>) -> SettingsError {
    SettingsError::InvalidValue {
        origin: None,
        key: key.to_owned(),
        value,
        problem: problem.into(),
    }
}

fn duration_in(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), SettingsError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(invalid(
        key,
        quoted(humantime::format_duration(value)),
        format!(
            "out of range; allowed {} to {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ),
    ))
}

fn count_in(key: &str, value: usize, min: usize, max: usize) -> Result<(), SettingsError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(invalid(
        key,
        value.to_string(),
        format!("out of range; allowed {min} to {max}"),
    ))
}

fn quoted(value: impl fmt::Display) -> String {
    format!("\"{value}\"")
}

/// A string value for a message, cut short so a 5 kB greeting does not flood the log.
fn quoted_short(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}...", &value[..end]),
    }
}

/// The `BATON_*` part of the process environment. Names that are not Unicode cannot be
/// settings variables; a value that is not Unicode is kept lossily, so the error that follows
/// shows it instead of the variable vanishing.
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(ENV_PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

const ENV_PREFIX: &str = "BATON_";
const ENV_SEPARATOR: &str = "__";

/// The schema the layers are checked against: every section, its keys and what they accept.
/// A test keeps it equal to the fields of [`Settings`].
const SECTIONS: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[
            ("listen", Kind::Address),
            ("request_timeout", Kind::Duration),
            ("worker_threads", Kind::Count),
        ],
    ),
    (
        "admin",
        &[("enabled", Kind::Bool), ("listen", Kind::Address)],
    ),
    (
        "app",
        &[
            ("greeting", Kind::Text),
            ("items_limit", Kind::Count),
            ("api_key", Kind::Secret),
        ],
    ),
    (
        "log",
        &[("filter", Kind::Text), ("format", Kind::LogFormat)],
    ),
    (
        "lifecycle",
        &[
            ("pid_file", Kind::Text),
            ("lame_duck", Kind::Duration),
            ("shutdown_timeout", Kind::Duration),
            ("supervise", Kind::Bool),
        ],
    ),
    ("upgrade", &[("ready_timeout", Kind::Duration)]),
    (
        "reload",
        &[("watch", Kind::Bool), ("debounce", Kind::Duration)],
    ),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Address,
    Duration,
    Bool,
    Count,
    Text,
    Secret,
    LogFormat,
}

/// One value as a layer holds it: TOML values from files, plain strings from the environment.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Some(s),
            Raw::Toml(_) => None,
            Raw::Env(s) => Some(s),
        }
    }

    fn show(&self) -> String {
        match self {
            Raw::Toml(value) => value.to_string(),
            Raw::Env(s) => format!("{s:?}"),
        }
    }
}

impl Kind {
    /// `Err(problem)` when `raw` cannot become a value of this kind.
    fn check(self, raw: &Raw<'_>) -> Result<(), String> {
        let ok = match self {
            Kind::Address => raw
                .as_str()
                .is_some_and(|s| s.parse::<SocketAddr>().is_ok()),
            Kind::Duration => match raw.as_str().map(humantime::parse_duration) {
                Some(Ok(_)) => true,
                Some(Err(err)) => {
                    // humantime appends its whole unit list to this one; the hint is enough.
                    let reason = match err {
                        humantime::DurationError::UnknownUnit { unit, .. } => {
                            format!("unknown unit {unit:?}")
                        }
                        other => other.to_string(),
                    };
                    return Err(format!(
                        "invalid duration ({reason}); use a duration like \"500ms\", \"30s\" or \"2m\""
                    ));
                }
                None => false,
            },
            Kind::Bool => match raw {
                Raw::Toml(value) => value.is_bool(),
                Raw::Env(s) => s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"),
            },
            Kind::Count => match raw {
                Raw::Toml(value) => value
                    .as_integer()
                    .is_some_and(|n| usize::try_from(n).is_ok()),
                Raw::Env(s) => s.parse::<usize>().is_ok(),
            },
            Kind::Text | Kind::Secret => raw.as_str().is_some(),
            Kind::LogFormat => matches!(raw.as_str(), Some("text" | "json")),
        };
        if ok {
            Ok(())
        } else {
            Err(self.expected().to_owned())
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Address => "invalid address; expected IP:PORT, e.g. 127.0.0.1:8080",
            Kind::Duration => {
                "invalid duration; use a duration like \"500ms\", \"30s\" or \"2m\" (a quoted string)"
            }
            Kind::Bool => "wrong type; expected true or false",
            Kind::Count => "wrong type; expected a whole number, 0 or more",
            Kind::Text | Kind::Secret => "wrong type; expected a string",
            Kind::LogFormat => "expected \"text\" or \"json\"",
        }
    }

    fn show(self, raw: &Raw<'_>) -> String {
        match self {
            Kind::Secret => "[redacted]".to_owned(),
            _ => raw.show(),
        }
    }
}

fn section_keys(section: &str) -> Option<&'static [(&'static str, Kind)]> {
    SECTIONS
        .iter()
        .find(|(name, _)| *name == section)
        .map(|(_, keys)| *keys)
}

fn allowed_sections() -> String {
    let names: Vec<&str> = SECTIONS.iter().map(|(name, _)| *name).collect();
    format!("allowed sections: {}", names.join(", "))
}

fn allowed_keys(section: &str, keys: &[(&str, Kind)]) -> String {
    let names: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
    format!("allowed keys in [{section}]: {}", names.join(", "))
}

/// A TOML file read and parsed, kept with its path for messages.
struct FileLayer {
    path: PathBuf,
    text: String,
    table: toml::Table,
}

/// A settings variable: its name as set, and the dotted key it maps to.
struct EnvVar {
    name: String,
    key: String,
    value: String,
}

struct Layers {
    files: Vec<FileLayer>,
    env: Vec<EnvVar>,
}

impl Layers {
    fn read(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let default_path = source.default_file();
        let mut files = vec![read_file(&default_path, || {
            SettingsError::MissingDefaultFile {
                path: default_path.clone(),
            }
        })?];
        if let Some(env_name) = &source.env_name {
            if !is_valid_env_name(env_name) {
                return Err(SettingsError::InvalidEnvName {
                    env_name: env_name.clone(),
                });
            }
            let path = source.env_file(env_name);
            files.push(read_file(&path, || SettingsError::MissingEnvFile {
                path: path.clone(),
                env_name: env_name.clone(),
            })?);
        }
        Ok(Self {
            files,
            env: settings_vars(env),
        })
    }

    /// Checks each layer on its own, lowest first, so an error names its file or variable.
    fn check(&self) -> Result<(), SettingsError> {
        for file in &self.files {
            check_file(&file.path, &file.table)?;
        }
        for var in &self.env {
            check_var(var)?;
        }
        Ok(())
    }

    fn merge(&self) -> Result<Settings, SettingsError> {
        let defaults =
            config::Config::try_from(&Settings::default()).map_err(SettingsError::Deserialize)?;
        let mut builder = config::Config::builder().add_source(defaults);
        for file in &self.files {
            builder =
                builder.add_source(config::File::from_str(&file.text, config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = self
            .env
            .iter()
            .map(|var| (var.name.clone(), var.value.clone()))
            .collect();
        // Same mapping as `settings_vars`: strip `BATON_`, lowercase, `__` becomes `.`.
        builder = builder.add_source(
            config::Environment::with_prefix("BATON")
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .source(Some(env)),
        );
        builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(SettingsError::Deserialize)
    }

    /// Where the value of `key` (dotted) in force came from: the highest layer that sets it.
    fn origin_of(&self, key: &str) -> Origin {
        if let Some(var) = self.env.iter().rev().find(|var| var.key == key) {
            return Origin::EnvVar(var.name.clone());
        }
        let Some((section, name)) = key.split_once('.') else {
            return Origin::BuiltIn;
        };
        self.files
            .iter()
            .rev()
            .find(|file| {
                file.table
                    .get(section)
                    .and_then(|table| table.get(name))
                    .is_some()
            })
            .map_or(Origin::BuiltIn, |file| Origin::File(file.path.clone()))
    }

    /// Adds the origin to an error from [`Settings::validate`].
    fn locate(&self, err: SettingsError) -> SettingsError {
        match err {
            SettingsError::InvalidValue {
                origin: None,
                key,
                value,
                problem,
            } => SettingsError::InvalidValue {
                origin: Some(self.origin_of(&key)),
                key,
                value,
                problem,
            },
            other => other,
        }
    }
}

fn read_file(
    path: &Path,
    missing: impl FnOnce() -> SettingsError,
) -> Result<FileLayer, SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(source) => {
            return Err(SettingsError::Unreadable {
                path: path.to_owned(),
                source,
            });
        }
    };
    let table = toml::from_str::<toml::Table>(&text).map_err(|err| {
        let (line, column) = err
            .span()
            .map_or((1, 1), |span| line_and_column(&text, span.start));
        SettingsError::Syntax {
            path: path.to_owned(),
            line,
            column,
            // The parser's message can span lines; keep ours on one.
            message: err
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        }
    })?;
    Ok(FileLayer {
        path: path.to_owned(),
        text,
        table,
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// An environment name becomes part of a file name; keep it to one plain path component.
fn is_valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The settings variables among `env`, sorted by name so errors are reproducible.
fn settings_vars(env: impl IntoIterator<Item = (String, String)>) -> Vec<EnvVar> {
    let mut vars: Vec<EnvVar> = env
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            if !rest.contains(ENV_SEPARATOR) {
                // BATON_ENV, BATON_CONFIG_DIR, BATON_UPGRADE_READY_FD, ...: not settings.
                return None;
            }
            let key = rest.to_lowercase().replace(ENV_SEPARATOR, ".");
            Some(EnvVar { name, key, value })
        })
        .collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    vars
}

fn check_file(path: &Path, table: &toml::Table) -> Result<(), SettingsError> {
    let origin = || Origin::File(path.to_owned());
    for (section, value) in table {
        let Some(keys) = section_keys(section) else {
            let hint = SECTIONS
                .iter()
                .find(|(_, keys)| keys.iter().any(|(key, _)| key == section))
                .map(|(name, _)| format!("put `{section}` under [{name}]; "))
                .unwrap_or_default();
            return Err(SettingsError::UnknownKey {
                origin: origin(),
                key: section.clone(),
                allowed: format!("{hint}{}", allowed_sections()),
            });
        };
        let Some(entries) = value.as_table() else {
            return Err(SettingsError::InvalidValue {
                origin: Some(origin()),
                key: section.clone(),
                value: value.to_string(),
                problem: format!("wrong type; expected a table ([{section}])"),
            });
        };
        for (key, value) in entries {
            let Some((_, kind)) = keys.iter().find(|(name, _)| name == key) else {
                return Err(SettingsError::UnknownKey {
                    origin: origin(),
                    key: format!("{section}.{key}"),
                    allowed: allowed_keys(section, keys),
                });
            };
            let raw = Raw::Toml(value);
            kind.check(&raw)
                .map_err(|problem| SettingsError::InvalidValue {
                    origin: Some(origin()),
                    key: format!("{section}.{key}"),
                    value: kind.show(&raw),
                    problem,
                })?;
        }
    }
    Ok(())
}

fn check_var(var: &EnvVar) -> Result<(), SettingsError> {
    let origin = || Origin::EnvVar(var.name.clone());
    let unknown = |allowed: String| SettingsError::UnknownKey {
        origin: origin(),
        key: var.key.clone(),
        allowed,
    };
    let Some((section, key)) = var.key.split_once('.') else {
        return Err(unknown(String::new()));
    };
    let Some(keys) = section_keys(section) else {
        return Err(unknown(format!(
            "settings variables are named BATON_<SECTION>__<KEY>; {}",
            allowed_sections()
        )));
    };
    let Some((_, kind)) = keys.iter().find(|(name, _)| *name == key) else {
        return Err(unknown(allowed_keys(section, keys)));
    };
    let raw = Raw::Env(&var.value);
    kind.check(&raw)
        .map_err(|problem| SettingsError::InvalidValue {
            origin: Some(origin()),
            key: var.key.clone(),
            value: kind.show(&raw),
            problem,
        })
}

/// The pid file path, read as leniently as possible: `baton stop` and `baton status` must
/// still find a running server after someone broke the config. Falls back to the default.
pub fn lenient_pid_file(source: &ConfigSource) -> PathBuf {
    lenient_pid_file_from(source, process_env())
}

/// [`lenient_pid_file`] with the environment given explicitly.
pub fn lenient_pid_file_from(
    source: &ConfigSource,
    env: impl IntoIterator<Item = (String, String)>,
) -> PathBuf {
    let mut files = vec![source.default_file()];
    if let Some(env_name) = source.env_name.as_deref().filter(|n| is_valid_env_name(n)) {
        files.push(source.env_file(env_name));
    }
    let from_files = files.iter().rev().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let table = toml::from_str::<toml::Table>(&text).ok()?;
        let pid_file = table.get("lifecycle")?.get("pid_file")?.as_str()?;
        (!pid_file.is_empty()).then(|| PathBuf::from(pid_file))
    });
    let from_env = settings_vars(env)
        .into_iter()
        .rev()
        .find(|var| var.key == "lifecycle.pid_file" && !var.value.is_empty())
        .map(|var| PathBuf::from(var.value));
    from_env
        .or(from_files)
        .unwrap_or_else(|| Settings::default().lifecycle.pid_file)
}

/// One key a running process cannot apply: how to tell it changed and how to keep it.
struct UpgradeOnlyKey {
    name: &'static str,
    differs: fn(&Settings, &Settings) -> bool,
    /// Copies the key from the settings in force (first) into a candidate (second).
    keep: fn(&Settings, &mut Settings),
}

macro_rules! upgrade_only_keys {
    ($($section:ident . $key:ident),+ $(,)?) => {
        &[$(UpgradeOnlyKey {
            name: concat!(stringify!($section), ".", stringify!($key)),
            differs: |a, b| a.$section.$key != b.$section.$key,
            keep: |in_force, candidate| {
                candidate.$section.$key = Clone::clone(&in_force.$section.$key)
            },
        }),+]
    };
}

/// Listeners are bound, threads started, the log format and pid file chosen once per process;
/// the next process (after `baton upgrade`) picks the new values up.
const UPGRADE_ONLY_KEYS: &[UpgradeOnlyKey] = upgrade_only_keys![
    server.listen,
    server.worker_threads,
    admin.enabled,
    admin.listen,
    log.format,
    lifecycle.pid_file,
    lifecycle.supervise,
    reload.watch,
    reload.debounce,
];

/// Keys whose change a running process cannot apply (they take effect at the next upgrade).
pub fn upgrade_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    UPGRADE_ONLY_KEYS
        .iter()
        .filter(|key| (key.differs)(old, new))
        .map(|key| key.name)
        .collect()
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The files and environment give the same settings as those in force.
    Unchanged {
        /// Changed keys that will only take effect at the next upgrade.
        upgrade_only: Vec<&'static str>,
    },
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
pub struct SettingsStore {
    source: ConfigSource,
    /// Settings and their generation swap together, so a reader never pairs one with the
    /// other's predecessor.
    in_force: ArcSwap<InForce>,
    /// Held for a whole reload: two signals handled at once must not interleave their
    /// read-compare-swap, or the older read could win.
    reloading: Mutex<()>,
    last_reload: Mutex<Option<ReloadRecord>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

#[derive(Debug)]
struct InForce {
    settings: Arc<Settings>,
    generation: u64,
}

impl SettingsStore {
    pub fn new(source: ConfigSource, initial: Settings) -> Self {
        Self {
            source,
            in_force: ArcSwap::from_pointee(InForce {
                settings: Arc::new(initial),
                generation: 1,
            }),
            reloading: Mutex::new(()),
            last_reload: Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    /// One consistent snapshot: a request that calls this once sees old or new, never a mix.
    pub fn current(&self) -> Arc<Settings> {
        Arc::clone(&self.in_force.load().settings)
    }

    /// The settings in force and their config generation, from the same swap.
    pub fn snapshot(&self) -> (Arc<Settings>, u64) {
        let in_force = self.in_force.load();
        (Arc::clone(&in_force.settings), in_force.generation)
    }

    /// 1 at start, +1 at each applied reload.
    pub fn generation(&self) -> u64 {
        self.in_force.load().generation
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Re-reads every layer, validates, and swaps if changed. Never leaves a partial state.
    /// The outcome is returned and recorded, not logged: the caller logs it once.
    pub fn reload(&self) -> ReloadOutcome {
        self.reload_from(process_env())
    }

    /// [`SettingsStore::reload`] with the environment given explicitly.
    pub fn reload_from(&self, env: impl IntoIterator<Item = (String, String)>) -> ReloadOutcome {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let outcome = match Settings::load_from(&self.source, env) {
            Ok(loaded) => self.apply(loaded),
            Err(err) => ReloadOutcome::Rejected {
                error: err.to_string(),
            },
        };
        let counter = match outcome {
            ReloadOutcome::Rejected { .. } => &self.reloads_failed,
            _ => &self.reloads_ok,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seq = last.as_ref().map_or(0, |record| record.seq) + 1;
        *last = Some(ReloadRecord {
            seq,
            at: SystemTime::now(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Swaps in `loaded`, except the keys this process cannot apply. Caller holds `reloading`.
    fn apply(&self, loaded: Settings) -> ReloadOutcome {
        let in_force = self.in_force.load_full();
        let upgrade_only = upgrade_only_changes(&in_force.settings, &loaded);
        let mut candidate = loaded;
        for key in UPGRADE_ONLY_KEYS {
            (key.keep)(&in_force.settings, &mut candidate);
        }
        // Mixing kept and new keys could in principle break a rule that spans both kinds;
        // check the settings that will really be in force, not the ones that were loaded.
        if let Err(err) = candidate.validate() {
            return ReloadOutcome::Rejected {
                error: format!("{err} (with the upgrade-only keys kept at their current values)"),
            };
        }
        if candidate == *in_force.settings {
            return ReloadOutcome::Unchanged { upgrade_only };
        }
        let config_generation = in_force.generation + 1;
        self.in_force.store(Arc::new(InForce {
            settings: Arc::new(candidate),
            generation: config_generation,
        }));
        ReloadOutcome::Applied {
            config_generation,
            upgrade_only,
        }
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn reloads_ok(&self) -> u64 {
        self.reloads_ok.load(Ordering::Relaxed)
    }

    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The schema used for per-layer checks must list exactly the fields of `Settings`.
    #[test]
    fn schema_matches_settings_fields() {
        let mut settings = Settings::default();
        settings.app.api_key = Some(Secret::new("k"));
        let table: toml::Table =
            toml::from_str(&settings.to_redacted_toml()).expect("redacted TOML parses");
        let from_struct: BTreeMap<String, Vec<String>> = table
            .iter()
            .map(|(section, keys)| {
                let keys = keys.as_table().expect("every top-level value is a section");
                (section.clone(), keys.keys().cloned().collect())
            })
            .collect();
        let from_schema: BTreeMap<String, Vec<String>> = SECTIONS
            .iter()
            .map(|(section, keys)| {
                let mut names: Vec<String> = keys.iter().map(|(k, _)| (*k).to_owned()).collect();
                names.sort();
                ((*section).to_owned(), names)
            })
            .collect();
        let mut from_struct = from_struct;
        for keys in from_struct.values_mut() {
            keys.sort();
        }
        assert_eq!(from_struct, from_schema);
    }

    #[test]
    fn line_and_column_count_from_one() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        let x = text.find('x').expect("x is in the text");
        assert_eq!(line_and_column(text, x), (2, 6));
    }

    #[test]
    fn env_names_must_be_one_plain_component() {
        assert!(is_valid_env_name("production"));
        assert!(is_valid_env_name("staging-2_eu"));
        for bad in ["", "../etc", "a/b", "a.b", "prod "] {
            assert!(!is_valid_env_name(bad), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn keeping_upgrade_only_keys_leaves_no_upgrade_only_difference() {
        let old = Settings::default();
        let mut new = Settings::default();
        new.server.listen = SocketAddr::from(([127, 0, 0, 1], 1));
        new.server.worker_threads = 3;
        new.admin.enabled = false;
        new.admin.listen = SocketAddr::from(([127, 0, 0, 1], 2));
        new.log.format = LogFormat::Json;
        new.lifecycle.pid_file = PathBuf::from("elsewhere.pid");
        new.lifecycle.supervise = true;
        new.reload.watch = true;
        new.reload.debounce = Duration::from_secs(1);
        assert_eq!(
            upgrade_only_changes(&old, &new).len(),
            UPGRADE_ONLY_KEYS.len()
        );
        for key in UPGRADE_ONLY_KEYS {
            (key.keep)(&old, &mut new);
        }
        assert_eq!(new, old);
    }
}
