//! Values that must never be shown: [`Secret`] (shown as `[redacted]`) and [`SecretUrl`] (shown
//! with its password as `[redacted]`). `Debug`, serialization (`baton check`) and every message
//! about a value go through the redacted form.

use serde::{Deserialize, Serialize};

/// What stands in for a secret wherever a value is shown.
pub(crate) const REDACTED: &str = "[redacted]";

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
        write!(f, "\"{REDACTED}\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// A URL that may carry a password (`postgres://user:password@host/db`, or `?password=`):
/// everything about it may be shown but the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL with its password, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as messages show it.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// The scheme, lowercased (`sqlite`, `postgres`), or `""` when the text is not a URL.
    pub fn scheme(&self) -> String {
        url::Url::parse(&self.0)
            .map(|url| url.scheme().to_owned())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Whether `text` is a URL that carries a password.
pub(crate) fn url_has_password(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|url| url.password().is_some() || password_param(&url))
}

fn password_param(url: &url::Url) -> bool {
    url.query_pairs()
        .any(|(key, _)| key.eq_ignore_ascii_case("password"))
}

/// `text` with the password in the user info and in a `password=` query parameter replaced by
/// `[redacted]`. Text that is not a URL is redacted whole: where a password would be in it is
/// anyone's guess.
pub(crate) fn redact_url(text: &str) -> String {
    let Ok(url) = url::Url::parse(text) else {
        return REDACTED.to_owned();
    };
    // The parsed form, so the password is found exactly as `password()` spells it.
    let mut shown = url.as_str().to_owned();
    if let Some(password) = url.password() {
        // The user name before it cannot hold an unescaped ':', so the first match is the one.
        let authority = shown.find("://").map_or(0, |at| at + 3);
        let needle = format!(":{password}@");
        if let Some(at) = shown[authority..].find(&needle) {
            let at = authority + at;
            shown.replace_range(at..at + needle.len(), &format!(":{REDACTED}@"));
        }
    }
    if let (Some(query), true) = (url.query(), password_param(&url)) {
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect();
        let start = shown.find('?').map_or(shown.len(), |at| at + 1);
        let end = shown.find('#').unwrap_or(shown.len());
        shown.replace_range(start..end, &redacted.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_the_rest_is_shown() {
        assert_eq!(
            redact_url("postgres://baton:s3cret@db.example:5432/baton"),
            "postgres://baton:[redacted]@db.example:5432/baton"
        );
        assert_eq!(
            redact_url("postgres://db/baton?user=baton&password=s3cret&sslmode=require"),
            "postgres://db/baton?user=baton&password=[redacted]&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite://data/baton.db"),
            "sqlite://data/baton.db"
        );
        // A password that looks like the rest of the URL is still the one replaced.
        assert_eq!(
            redact_url("postgres://db:db@db/db"),
            "postgres://db:[redacted]@db/db"
        );
        assert_eq!(redact_url("not a url: s3cret"), "[redacted]");
    }

    #[test]
    fn a_password_is_found_where_it_can_be() {
        assert!(url_has_password("postgres://u:p@h/d"));
        assert!(url_has_password("postgres://h/d?password=p"));
        assert!(!url_has_password("postgres://u@h/d"));
        assert!(!url_has_password("sqlite://data/baton.db"));
    }

    #[test]
    fn debug_and_serialize_never_show_the_password() {
        let url = SecretUrl::new("postgres://u:s3cret@h/d");
        assert!(!format!("{url:?}").contains("s3cret"));
        let json = serde_json::to_string(&url).expect("a string serializes");
        assert!(!json.contains("s3cret"), "{json}");
        assert_eq!(url.expose(), "postgres://u:s3cret@h/d");
        assert_eq!(url.scheme(), "postgres");
    }
}
