//! Typed, layered, validated settings and the live store that reloads them.
//!
//! Start-up, `baton check`, `baton reload` and a live reload all run [`Settings::load`]: read
//! every layer (built-in defaults, `default.toml`, `<BATON_ENV>.toml`, `BATON_…` variables),
//! check each on its own so an error names its file or variable, merge, deserialize strictly,
//! and check every key's rule. [`SettingsStore`] holds the settings in force and swaps them at a
//! reload; an error changes nothing.
//!
//! # Layout
//! - `schema`: every key once: type, reloadable or upgrade-only, rule.
//! - `key`: what the schema knows about a key, and the `schema!` macro that says it.
//! - `rule`: ranges and the other rules a value keeps.
//! - `secret`: values never shown ([`Secret`]) or shown without their password ([`SecretUrl`]).
//! - `defaults`: `config/default.toml` built into the binary: the defaults, the base layer.
//! - `source`: the config directory, the layers, reading and merging them.
//! - `validate`: the per-layer checks and [`Settings::validate`].
//! - `error`: [`SettingsError`], worded for the user.
//! - `store`: [`SettingsStore`], the reload and its outcome.

mod defaults;
mod error;
mod key;
mod rule;
mod schema;
mod secret;
mod source;
mod store;
mod validate;

pub use error::{Origin, SettingsError};
pub use schema::{
    Admin, App, Database, Lifecycle, Limits, Log, LogFormat, Reload, Server, Settings, Tls, Upgrade,
};
pub use secret::{Secret, SecretUrl};
pub use source::{ConfigSource, lenient_pid_file, lenient_pid_file_from};
pub use store::{
    Commit, ReloadOutcome, ReloadParticipant, ReloadRecord, SettingsStore, upgrade_only_changes,
};

use source::{Layers, process_env};

impl Settings {
    /// Reads every layer, deserializes strictly and validates. Start-up and reload both call
    /// this.
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
        let settings = layers.merge()?;
        settings.validate().map_err(|err| layers.locate(err))?;
        Ok(settings)
    }

    /// The effective settings as TOML, secrets redacted (what `baton check` prints).
    pub fn to_redacted_toml(&self) -> String {
        // Cannot fail: every field is a string, number, bool or table, and every map key a
        // string (paths are only ever read from UTF-8 text).
        toml::to_string(self).expect("settings always serialize to TOML")
    }
}
