//! Where settings come from: the layers, read and parsed once per load, and merged.
//!
//! Lowest first; each layer overrides single keys of the ones below it:
//! 1. the built-in defaults, `config/default.toml` as it was at build time (`defaults.rs`);
//! 2. `<dir>/default.toml` (required);
//! 3. `<dir>/<BATON_ENV>.toml` when `BATON_ENV` is set (then required: a missing one is a typo);
//! 4. environment variables `BATON_<SECTION>__<KEY>`, e.g. `BATON_SERVER__LISTEN=0.0.0.0:8080`.
//!    Other `BATON_*` names (`BATON_ENV`, `BATON_CONFIG_DIR`, protocol variables) are not
//!    settings and are ignored.

use std::io;
use std::path::{Path, PathBuf};

use super::defaults::{built_in, parsed_if_built_in};
use super::error::{Origin, SettingsError};
use super::schema::Settings;
use super::validate::{check_table, env_value};

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

const ENV_PREFIX: &str = "BATON_";
const ENV_SEPARATOR: &str = "__";

/// The `BATON_*` part of the process environment. Names that are not Unicode cannot be
/// settings variables; a value that is not Unicode is kept lossily, so the error that follows
/// shows it instead of the variable vanishing.
pub(super) fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(ENV_PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// A config file, parsed, kept with its path for messages.
struct FileLayer {
    path: PathBuf,
    table: toml::Table,
}

/// A settings variable: its name as set, and the dotted key it maps to.
struct EnvVar {
    name: String,
    key: String,
    value: String,
}

/// The layers above the built-in defaults, as read for one load.
pub(super) struct Layers {
    files: Vec<FileLayer>,
    env: Vec<EnvVar>,
}

impl Layers {
    pub(super) fn read(
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

    /// Checks each layer on its own, lowest first, so an error names its file or variable,
    /// then lays them over the built-in defaults.
    pub(super) fn merge(&self) -> Result<Settings, SettingsError> {
        let mut merged = built_in()?.table.clone();
        for file in &self.files {
            check_table(&Origin::File(file.path.clone()), &file.table)?;
            for (section, keys) in &file.table {
                // A checked layer holds only known sections, each a table.
                if let Some(keys) = keys.as_table() {
                    for (key, value) in keys {
                        set(&mut merged, section, key, value.clone());
                    }
                }
            }
        }
        for var in &self.env {
            let (key, value) = env_value(&var.name, &var.key, &var.value)?;
            set(&mut merged, key.section, key.name, value);
        }
        toml::Value::Table(merged)
            .try_into()
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
    pub(super) fn locate(&self, err: SettingsError) -> SettingsError {
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

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let section = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(section) = section.as_table_mut() {
        section.insert(key.to_owned(), value);
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
    let table = match parsed_if_built_in(&text) {
        Some(table) => table,
        None => parse(path, &text)?,
    };
    Ok(FileLayer {
        path: path.to_owned(),
        table,
    })
}

/// Parses TOML `text` read from `path`; a syntax error names the line and column.
pub(super) fn parse(path: &Path, text: &str) -> Result<toml::Table, SettingsError> {
    toml::from_str::<toml::Table>(text).map_err(|err| {
        let (line, column) = err
            .span()
            .map_or((1, 1), |span| line_and_column(text, span.start));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
