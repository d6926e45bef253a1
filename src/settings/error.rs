//! What can be wrong with settings, worded for the person who has to fix it.

use std::fmt;
use std::io;
use std::path::PathBuf;

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
    /// comes from [`Settings::validate`](super::Settings::validate) on settings that were not
    /// loaded from layers.
    #[error("{}{key} = {value}: {problem}", OriginPrefix(origin.as_ref()))]
    InvalidValue {
        origin: Option<Origin>,
        key: String,
        /// As written (strings quoted); secrets show as `[redacted]`.
        value: String,
        /// What is wrong and what is allowed.
        problem: String,
    },

    /// The copy of `config/default.toml` compiled into the binary does not load: the build is
    /// broken, whatever the files on disk say.
    #[error(
        "the defaults built into this binary are invalid: {message}; \
         fix config/default.toml in the source tree and rebuild (cargo test shows the error)"
    )]
    BuiltIn { message: String },

    /// A check the layer checks did not anticipate; the message names the key.
    #[error("invalid settings: {0}")]
    Deserialize(#[source] toml::de::Error),
}

impl SettingsError {
    /// An [`SettingsError::InvalidValue`] whose origin the loader fills in.
    pub(super) fn invalid(key: &str, value: String, problem: impl Into<String>) -> Self {
        SettingsError::InvalidValue {
            origin: None,
            key: key.to_owned(),
            value,
            problem: problem.into(),
        }
    }
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
