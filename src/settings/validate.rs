//! Validation, in two steps that both follow the schema.
//!
//! 1. Each layer on its own, before the layers merge: unknown sections and keys (with a hint of
//!    what is allowed), and the type and form of each value, so an error names the file or the
//!    environment variable it came from.
//! 2. The merged settings: each key's rule ([`Settings::validate`]), the same code at start-up,
//!    `baton check` and reload.

use std::net::SocketAddr;

use super::error::{Origin, SettingsError};
use super::key::{Key, section_keys, sections};
use super::schema::{KEYS, LogFormat, Settings};
use super::secret::{REDACTED, redact_url, url_has_password};

impl Settings {
    /// Checks each key's rule (ranges, and the rules that relate keys).
    /// [`Settings::load`] calls this; call it yourself only on settings built in code.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let own = KEYS.iter().filter(|key| !key.relative);
        let relative = KEYS.iter().filter(|key| key.relative);
        own.chain(relative).try_for_each(|key| (key.check)(self))
    }
}

/// What a layer must hold for a key, known from the key's Rust type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Address,
    Duration,
    Bool,
    Count,
    Text,
    Secret,
    /// A URL, shown without its password.
    Url,
    LogFormat,
}

impl Kind {
    /// `Err(problem)` when `value`, as a file holds it, cannot become a value of this kind.
    fn check(self, value: &toml::Value) -> Result<(), String> {
        let ok = match self {
            Kind::Address => value
                .as_str()
                .is_some_and(|s| s.parse::<SocketAddr>().is_ok()),
            Kind::Duration => match value.as_str().map(humantime::parse_duration) {
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
            Kind::Bool => value.is_bool(),
            Kind::Count => value
                .as_integer()
                .is_some_and(|n| usize::try_from(n).is_ok()),
            Kind::Text | Kind::Secret => value.is_str(),
            Kind::Url => value.as_str().is_some_and(|s| url::Url::parse(s).is_ok()),
            Kind::LogFormat => value.clone().try_into::<LogFormat>().is_ok(),
        };
        if ok { Ok(()) } else { Err(self.expected()) }
    }

    /// The value an environment variable's text stands for, as a file would hold it.
    fn parse_env(self, text: &str) -> Result<toml::Value, String> {
        let value = match self {
            Kind::Bool if text.eq_ignore_ascii_case("true") => toml::Value::Boolean(true),
            Kind::Bool if text.eq_ignore_ascii_case("false") => toml::Value::Boolean(false),
            Kind::Bool => return Err(self.expected()),
            Kind::Count => text
                .parse::<usize>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .map(toml::Value::Integer)
                .ok_or_else(|| self.expected())?,
            _ => toml::Value::String(text.to_owned()),
        };
        self.check(&value)?;
        Ok(value)
    }

    fn expected(self) -> String {
        match self {
            Kind::Address => "invalid address; expected IP:PORT, e.g. 127.0.0.1:8080",
            Kind::Duration => {
                "invalid duration; use a duration like \"500ms\", \"30s\" or \"2m\" (a quoted string)"
            }
            Kind::Bool => "wrong type; expected true or false",
            Kind::Count => "wrong type; expected a whole number, 0 or more",
            Kind::Text | Kind::Secret => "wrong type; expected a string",
            Kind::Url => "expected a URL such as \"sqlite://data/baton.db\" (a quoted string)",
            Kind::LogFormat => "expected \"text\" or \"json\"",
        }
        .to_owned()
    }

    /// A layer's value as a message shows it; `written` is quoted when it is a string.
    fn show(self, written: String) -> String {
        match self {
            Kind::Secret => REDACTED.to_owned(),
            Kind::Url => match written.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                Some(text) => format!("\"{}\"", redact_url(text)),
                // Not a string: whatever it holds may be the secret.
                None => REDACTED.to_owned(),
            },
            _ => written,
        }
    }

    /// Whether `value` holds a secret: a [`Secret`](super::Secret) always, a URL when it carries
    /// a password.
    pub(crate) fn holds_secret(self, value: &toml::Value) -> bool {
        match self {
            Kind::Secret => true,
            Kind::Url => value.as_str().is_none_or(url_has_password),
            _ => false,
        }
    }
}

/// Checks one file's table (from `origin`) against the schema.
pub(super) fn check_table(origin: &Origin, table: &toml::Table) -> Result<(), SettingsError> {
    for (section, value) in table {
        let Some(keys) = section_keys(section) else {
            let hint = KEYS
                .iter()
                .find(|key| key.name == section)
                .map(|key| format!("put `{section}` under [{}]; ", key.section))
                .unwrap_or_default();
            return Err(SettingsError::UnknownKey {
                origin: origin.clone(),
                key: section.clone(),
                allowed: format!("{hint}{}", allowed_sections()),
            });
        };
        let Some(entries) = value.as_table() else {
            return Err(SettingsError::InvalidValue {
                origin: Some(origin.clone()),
                key: section.clone(),
                value: value.to_string(),
                problem: format!("wrong type; expected a table ([{section}])"),
            });
        };
        for (name, value) in entries {
            let Some(key) = keys.iter().find(|key| key.name == name) else {
                return Err(SettingsError::UnknownKey {
                    origin: origin.clone(),
                    key: format!("{section}.{name}"),
                    allowed: allowed_keys(section, &keys),
                });
            };
            key.kind
                .check(value)
                .map_err(|problem| SettingsError::InvalidValue {
                    origin: Some(origin.clone()),
                    key: key.path.to_owned(),
                    value: key.kind.show(value.to_string()),
                    problem,
                })?;
        }
    }
    Ok(())
}

/// Checks one settings variable, `name` = `text` naming the dotted `key`, and returns the key
/// and the value it sets.
pub(super) fn env_value(
    name: &str,
    key: &str,
    text: &str,
) -> Result<(&'static Key, toml::Value), SettingsError> {
    let origin = || Origin::EnvVar(name.to_owned());
    let unknown = |allowed: String| SettingsError::UnknownKey {
        origin: origin(),
        key: key.to_owned(),
        allowed,
    };
    let Some((section, field)) = key.split_once('.') else {
        return Err(unknown(String::new()));
    };
    let Some(keys) = section_keys(section) else {
        return Err(unknown(format!(
            "settings variables are named BATON_<SECTION>__<KEY>; {}",
            allowed_sections()
        )));
    };
    let Some(found) = keys.iter().find(|candidate| candidate.name == field) else {
        return Err(unknown(allowed_keys(section, &keys)));
    };
    let value = found
        .kind
        .parse_env(text)
        .map_err(|problem| SettingsError::InvalidValue {
            origin: Some(origin()),
            key: key.to_owned(),
            value: found.kind.show(format!("{text:?}")),
            problem,
        })?;
    Ok((found, value))
}

fn allowed_sections() -> String {
    let names: Vec<&str> = sections().collect();
    format!("allowed sections: {}", names.join(", "))
}

fn allowed_keys(section: &str, keys: &[&Key]) -> String {
    let names: Vec<&str> = keys.iter().map(|key| key.name).collect();
    format!("allowed keys in [{section}]: {}", names.join(", "))
}
