//! What the schema knows about one key, and the `schema!` macro that states it once per key.
//!
//! `schema.rs` declares each key as a field with its type, whether a reload applies it, and
//! the rule its value keeps. `schema!` turns that declaration into the serde struct field and a
//! [`Key`] in [`KEYS`]. The descriptors drive the per-layer checks and the
//! unknown-key hints, the range checks, the upgrade-only handling of a reload, and the test that
//! `config/default.toml` documents every key. The key's default is in `config/default.toml`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::SettingsError;
use super::rule::Rule;
use super::schema::{KEYS, LogFormat, Settings};
use super::secret::{Secret, SecretUrl};
use super::validate::Kind;

/// Whether a running process can take a new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Apply {
    /// A reload applies the new value.
    Reloadable,
    /// Chosen once per process (a bound listener, the thread pool, ...): a reload reports the
    /// change and keeps the value in force; the next upgrade starts with the new one.
    UpgradeOnly,
    /// An optional key whose new value a reload applies, but whose setting or unsetting (a
    /// feature turned on or off, such as TLS) is upgrade-only, as for [`Apply::UpgradeOnly`].
    ReloadableWhileSet,
}

impl Apply {
    /// The sentence `config/default.toml` says it with.
    #[cfg(test)]
    pub(crate) fn sentence(self) -> &'static str {
        match self {
            Apply::Reloadable => "Reloadable.",
            Apply::UpgradeOnly => "Upgrade-only.",
            Apply::ReloadableWhileSet => {
                "Reloadable while set; setting or unsetting it needs an upgrade."
            }
        }
    }

    /// Whether going from `old` to `new` is a change a reload cannot apply.
    pub(crate) fn needs_upgrade<T: Field + PartialEq>(self, old: &T, new: &T) -> bool {
        match self {
            Apply::Reloadable => false,
            Apply::UpgradeOnly => old != new,
            Apply::ReloadableWhileSet => old.is_set() != new.is_set(),
        }
    }
}

/// One key of the schema. Made by `schema!` only, so every part agrees with the field.
pub(crate) struct Key {
    pub(crate) section: &'static str,
    pub(crate) name: &'static str,
    /// `section.name`, as messages and reload outcomes name the key.
    pub(crate) path: &'static str,
    pub(crate) apply: Apply,
    /// What a layer must hold, from the field's type.
    pub(crate) kind: Kind,
    /// The rule reads other keys, so it runs after every key's own rule: a key out of its own
    /// range is reported as such, not as a conflict with the keys that depend on it.
    pub(crate) relative: bool,
    /// Checks the key's rule in `settings`.
    pub(crate) check: fn(&Settings) -> Result<(), SettingsError>,
    /// Whether the change from the first settings to the second needs an upgrade ([`Apply`]).
    pub(crate) needs_upgrade: fn(&Settings, &Settings) -> bool,
    /// Copies the key from the settings in force (first) into a candidate (second).
    pub(crate) keep: fn(&Settings, &mut Settings),
    /// The rule as `config/default.toml` must state it, e.g. `1ms to 1h`.
    #[cfg(test)]
    pub(crate) rule_doc: fn() -> Option<String>,
}

/// The keys some of whose changes a running process cannot apply, in declaration order.
pub(crate) fn upgrade_only_keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|key| key.apply != Apply::Reloadable)
}

/// The section names, in declaration order.
pub(crate) fn sections() -> impl Iterator<Item = &'static str> {
    let mut previous = None;
    KEYS.iter().filter_map(move |key| {
        let new = previous != Some(key.section);
        previous = Some(key.section);
        new.then_some(key.section)
    })
}

/// The keys of `section`, or `None` when there is no such section.
pub(crate) fn section_keys(section: &str) -> Option<Vec<&'static Key>> {
    let keys: Vec<&'static Key> = KEYS.iter().filter(|key| key.section == section).collect();
    (!keys.is_empty()).then_some(keys)
}

/// A type a key can have: what a layer must hold for it and how a message shows a value.
pub(crate) trait Field {
    const KIND: Kind;
    /// The value as an error message shows it: strings quoted, secrets hidden.
    fn show(&self) -> String;
    /// Whether an optional key is set; other keys always are.
    fn is_set(&self) -> bool {
        true
    }
}

/// `Type => Kind, how a message shows a value;`, one line a type.
macro_rules! fields {
    ($($ty:ty => $kind:ident, $show:expr;)+) => {
        $(impl Field for $ty {
            const KIND: Kind = Kind::$kind;
            fn show(&self) -> String {
                ($show)(self)
            }
        })+
    };
}

fields! {
    SocketAddr => Address, |value: &SocketAddr| quoted(value);
    Duration => Duration, |value: &Duration| quoted(humantime::format_duration(*value));
    usize => Count, usize::to_string;
    bool => Bool, bool::to_string;
    String => Text, |value: &String| quoted_short(value);
    PathBuf => Text, |value: &PathBuf| quoted_short(&value.to_string_lossy());
}

impl Field for Option<Secret> {
    const KIND: Kind = Kind::Secret;
    fn show(&self) -> String {
        match self {
            // Shows nothing secret, and is what the user has to look for.
            Some(key) if key.expose().is_empty() => quoted(""),
            Some(_) => quoted("[redacted]"),
            None => NOT_SET.to_owned(),
        }
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl Field for SecretUrl {
    const KIND: Kind = Kind::Url;
    fn show(&self) -> String {
        quoted(self.redacted())
    }
}

impl Field for Option<PathBuf> {
    const KIND: Kind = Kind::Text;
    fn show(&self) -> String {
        match self {
            Some(path) => path.show(),
            None => NOT_SET.to_owned(),
        }
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

/// How a message shows an optional key without a value.
const NOT_SET: &str = "(not set)";

impl Field for LogFormat {
    const KIND: Kind = Kind::LogFormat;
    fn show(&self) -> String {
        quoted(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Checks `rule` on `value`, the value of `key`; what `schema!` puts in [`Key::check`].
pub(crate) fn check_rule<T: Field, R: Rule<T>>(
    rule: &R,
    key: &str,
    value: &T,
    settings: &Settings,
) -> Result<(), SettingsError> {
    rule.check(value, settings)
        .map_err(|problem| SettingsError::invalid(key, value.show(), problem))
}

/// Whether `rule` reads other keys; what `schema!` puts in [`Key::relative`].
pub(crate) const fn is_relative<T, R: Rule<T>>(_rule: &R) -> bool {
    R::RELATIVE
}

pub(crate) fn quoted(value: impl fmt::Display) -> String {
    format!("\"{value}\"")
}

/// A string value for a message, cut short so a 5 kB greeting does not flood the log.
pub(crate) fn quoted_short(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}...", &value[..end]),
    }
}

/// Declares the settings: [`Settings`], one struct per section, and [`KEYS`], from one line
/// per key: `name: Type => Reloadable | UpgradeOnly | ReloadableWhileSet [, rule];` (no rule:
/// any value of the type).
macro_rules! schema {
    (
        $(
            $(#[$section_attr:meta])*
            $section:ident: $Section:ident {
                $(
                    $(#[$field_attr:meta])*
                    $field:ident: $ty:ty => $apply:ident $(, $rule:expr)?;
                )+
            }
        )+
    ) => {
        /// Every setting, one field per `[section]` of the config files.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(pub $section: $Section,)+
        }

        $(
            $(#[$section_attr])*
            #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $Section {
                $($(#[$field_attr])* pub $field: $ty,)+
            }
        )+

        /// Every key, in declaration order.
        pub(crate) static KEYS: &[$crate::settings::key::Key] = &[$($(
            $crate::settings::key::Key {
                section: stringify!($section),
                name: stringify!($field),
                path: concat!(stringify!($section), ".", stringify!($field)),
                apply: $crate::settings::key::Apply::$apply,
                kind: <$ty as $crate::settings::key::Field>::KIND,
                relative: $crate::settings::key::is_relative::<$ty, _>(
                    &$crate::settings::key::rule_or_any!($($rule)?),
                ),
                check: |settings| $crate::settings::key::check_rule::<$ty, _>(
                    &$crate::settings::key::rule_or_any!($($rule)?),
                    concat!(stringify!($section), ".", stringify!($field)),
                    &settings.$section.$field,
                    settings,
                ),
                needs_upgrade: |a, b| $crate::settings::key::Apply::$apply
                    .needs_upgrade(&a.$section.$field, &b.$section.$field),
                keep: |in_force, candidate| {
                    candidate.$section.$field = Clone::clone(&in_force.$section.$field)
                },
                #[cfg(test)]
                rule_doc: || $crate::settings::rule::Rule::<$ty>::doc(
                    &$crate::settings::key::rule_or_any!($($rule)?),
                ),
            },
        )+)+];
    };
}

macro_rules! rule_or_any {
    () => {
        $crate::settings::rule::Any
    };
    ($rule:expr) => {
        $rule
    };
}

pub(crate) use {rule_or_any, schema};
