//! The built-in defaults: `config/default.toml`, compiled into the binary and parsed once.
//!
//! The file is the one place a default value is written, and where each key is documented. It
//! is also the lowest layer of every load, so a deployment's `default.toml` may set only some
//! keys. A test holds the file to the schema: every key documented, as reloadable or not.
//!
//! A start parses it once and deserializes only the merged layers: the built-in layer alone
//! becomes [`Settings`] only for `Settings::default()`, and a deployment whose `default.toml` is
//! this same text (the template as cloned) gets the parsed table rather than a second parse.

use std::path::Path;
use std::sync::LazyLock;

use super::error::{Origin, SettingsError};
use super::schema::{KEYS, Settings};
use super::source::parse;
use super::validate::check_table;

/// Where the text comes from, as the build knows it and as messages name it.
const PATH: &str = "config/default.toml";
const TEXT: &str = include_str!("../../config/default.toml");

/// The built-in layer as raw TOML: the base the other layers merge over.
pub(super) struct BuiltIn {
    pub(super) table: toml::Table,
}

/// Parsed on first use; an error is kept as its message, since a broken built-in file is the
/// same error at every load.
static BUILT_IN: LazyLock<Result<BuiltIn, String>> =
    LazyLock::new(|| BuiltIn::load().map_err(|err| err.to_string()));

/// The built-in layer alone as settings, for `Settings::default()`; on first use only.
static DEFAULTS: LazyLock<Result<Settings, String>> =
    LazyLock::new(|| BuiltIn::settings().map_err(|err| err.to_string()));

impl BuiltIn {
    /// The same checks as any layer.
    fn load() -> Result<Self, SettingsError> {
        let table = parse(Path::new(PATH), TEXT)?;
        check_table(&Origin::File(PATH.into()), &table)?;
        refuse_secrets(&table)?;
        Ok(Self { table })
    }

    /// Every key must have a value (except optional ones), and the values keep their rules.
    fn settings() -> Result<Settings, SettingsError> {
        let table = built_in()?.table.clone();
        let settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(SettingsError::Deserialize)?;
        settings.validate()?;
        Ok(settings)
    }
}

/// The built-in table, when `text` (a deployment's file) is the built-in text itself: no need
/// to parse it again.
pub(super) fn parsed_if_built_in(text: &str) -> Option<toml::Table> {
    (text == TEXT)
        .then(|| built_in().ok().map(|built_in| built_in.table.clone()))
        .flatten()
}

/// A secret in the built-in file would be in every copy of the binary.
fn refuse_secrets(table: &toml::Table) -> Result<(), SettingsError> {
    let secret = KEYS.iter().find(|key| {
        table
            .get(key.section)
            .and_then(|section| section.get(key.name))
            .is_some_and(|value| key.kind.holds_secret(value))
    });
    match secret {
        None => Ok(()),
        Some(key) => Err(SettingsError::InvalidValue {
            origin: Some(Origin::File(PATH.into())),
            key: key.path.to_owned(),
            value: "[redacted]".to_owned(),
            problem: format!(
                "a secret here would be compiled into the binary; set it in the environment \
                 (BATON_{}__{}) or in <BATON_ENV>.toml instead",
                key.section.to_uppercase(),
                key.name.to_uppercase()
            ),
        }),
    }
}

/// The built-in layer, or why this build's copy of `config/default.toml` does not load.
pub(super) fn built_in() -> Result<&'static BuiltIn, SettingsError> {
    BUILT_IN.as_ref().map_err(|message| SettingsError::BuiltIn {
        message: message.clone(),
    })
}

impl Default for Settings {
    /// `config/default.toml` as it was when this binary was built.
    ///
    /// # Panics
    /// When that file does not load: the build is broken (`cargo test` says why). Loading
    /// ([`Settings::load`]) reports the same problem as an error instead.
    fn default() -> Self {
        match &*DEFAULTS {
            Ok(settings) => settings.clone(),
            Err(err) => panic!("{err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::key::Apply;
    use super::super::schema::KEYS;
    use super::*;

    #[test]
    fn the_built_in_file_loads() {
        if let Err(err) = built_in() {
            panic!("{err}");
        }
        if let Err(err) = &*DEFAULTS {
            panic!("{err}");
        }
    }

    #[test]
    fn the_built_in_text_is_not_parsed_twice_and_other_text_is() {
        let table = parsed_if_built_in(TEXT).expect("the built-in text");
        assert_eq!(Some(&table), built_in().ok().map(|b| &b.table));
        assert_eq!(parsed_if_built_in(&format!("{TEXT}\n")), None);
        assert_eq!(parsed_if_built_in("[app]\ngreeting = \"hi\"\n"), None);
    }

    #[test]
    fn a_secret_in_the_built_in_file_is_refused_with_where_to_put_it() {
        let table: toml::Table =
            toml::from_str("[app]\napi_key = \"s3cret\"\n").expect("valid TOML");
        let message = refuse_secrets(&table)
            .expect_err("a secret is refused")
            .to_string();
        assert!(message.contains("app.api_key"), "{message}");
        assert!(message.contains("BATON_APP__API_KEY"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        let table: toml::Table = toml::from_str("[app]\ngreeting = \"hi\"\n").expect("valid TOML");
        assert!(refuse_secrets(&table).is_ok());
    }

    #[test]
    fn a_database_url_with_a_password_in_the_built_in_file_is_refused() {
        let with_password: toml::Table =
            toml::from_str("[database]\nurl = \"postgres://baton:s3cret@db/baton\"\n")
                .expect("valid TOML");
        let message = refuse_secrets(&with_password)
            .expect_err("a password is refused")
            .to_string();
        assert!(message.contains("BATON_DATABASE__URL"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        let without: toml::Table =
            toml::from_str("[database]\nurl = \"postgres://baton@db/baton\"\n")
                .expect("valid TOML");
        assert!(refuse_secrets(&without).is_ok());
    }

    /// Each key line (`key = value`, or `# key = value` for a key without a default) with the
    /// comment lines right above it, by dotted key.
    fn documented_keys(text: &str) -> BTreeMap<String, String> {
        let mut keys = BTreeMap::new();
        let mut section = None;
        let mut comment = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_owned());
                comment.clear();
            } else if let Some(key) = key_of(line) {
                let section = section.as_deref().unwrap_or("(no section)");
                keys.insert(format!("{section}.{key}"), std::mem::take(&mut comment));
            } else if let Some(text) = line.strip_prefix('#') {
                comment.push_str(text);
                comment.push(' ');
            } else {
                comment.clear();
            }
        }
        keys
    }

    fn key_of(line: &str) -> Option<&str> {
        let (name, _) = line.trim_start_matches('#').split_once('=')?;
        let name = name.trim();
        let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        (!name.is_empty() && name.chars().all(plain)).then_some(name)
    }

    /// Whether `phrase` stands in `text` as whole words ("1 to 100" is not in "1 to 1000").
    fn states(text: &str, phrase: &str) -> bool {
        let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        text.match_indices(phrase).any(|(at, _)| {
            !word(text[..at].chars().next_back()) && !word(text[at + phrase.len()..].chars().next())
        })
    }

    #[test]
    fn default_toml_documents_every_key_as_the_schema_states_it() {
        let documented = documented_keys(TEXT);
        for key in KEYS {
            let Some(comment) = documented.get(key.path) else {
                panic!("{PATH} lacks `{}` in [{}]", key.name, key.section);
            };
            let others: Vec<&str> = [
                Apply::Reloadable,
                Apply::UpgradeOnly,
                Apply::ReloadableWhileSet,
            ]
            .into_iter()
            .filter(|apply| *apply != key.apply)
            .map(Apply::sentence)
            .collect();
            assert!(
                comment.contains(key.apply.sentence())
                    && !others.iter().any(|other| comment.contains(other)),
                "{PATH}: the comment on `{}` must say {:?} (and none of {others:?}): {comment:?}",
                key.path,
                key.apply.sentence(),
            );
            if let Some(rule) = (key.rule_doc)() {
                assert!(
                    states(&comment.to_lowercase(), &rule.to_lowercase()),
                    "{PATH}: the comment on `{}` must state its rule {rule:?}: {comment:?}",
                    key.path
                );
            }
        }
        for path in documented.keys() {
            assert!(
                KEYS.iter().any(|key| key.path == path),
                "{PATH} documents `{path}`, which is not a setting"
            );
        }
    }

    #[test]
    fn a_rule_is_stated_as_whole_words() {
        assert!(states("0 to 1024. upgrade-only.", "0 to 1024"));
        assert!(!states("0 to 10240.", "0 to 1024"));
        assert!(!states("10 to 1024.", "0 to 1024"));
    }

    #[test]
    fn documented_keys_sees_commented_out_keys_and_their_comment_only() {
        let text =
            "# header\n\n[a]\n# One. Reloadable.\nx = 1\n\n# Two.\n# three = \"3\"\n# A = b\n";
        let keys = documented_keys(text);
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            [
                ("a.three".to_owned(), " Two. ".to_owned()),
                ("a.x".to_owned(), " One. Reloadable. ".to_owned()),
            ]
        );
    }
}
