//! The rules a key's value keeps beyond its type: ranges, non-empty strings, and the few rules
//! that relate two keys. `schema.rs` names one per key; a rule's type must fit the key's type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::key::quoted;
use super::schema::Settings;
use super::secret::{Secret, SecretUrl};

/// What a value of type `T` must satisfy.
pub(crate) trait Rule<T> {
    /// The rule reads other keys of the settings (see [`Key::relative`](super::key::Key)).
    const RELATIVE: bool = false;

    /// `Err(problem)`: what is wrong and what is allowed.
    fn check(&self, value: &T, settings: &Settings) -> Result<(), String>;

    /// The rule as `config/default.toml` states it (e.g. `1ms to 1h`), for rules that have a
    /// short statement; the documentation test looks for it next to the key.
    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        None
    }
}

/// Any value of the type will do.
pub(crate) struct Any;

impl<T> Rule<T> for Any {
    fn check(&self, _: &T, _: &Settings) -> Result<(), String> {
        Ok(())
    }
}

/// From the first bound to the second, both included.
pub(crate) struct Range<T>(pub(crate) T, pub(crate) T);

/// A bound of a [`Range`], as the range is written.
pub(crate) trait Bound: PartialOrd {
    fn written(&self) -> String;
}

impl Bound for usize {
    fn written(&self) -> String {
        self.to_string()
    }
}

impl Bound for Duration {
    fn written(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl<T: Bound> Rule<T> for Range<T> {
    fn check(&self, value: &T, _: &Settings) -> Result<(), String> {
        if (&self.0..=&self.1).contains(&value) {
            return Ok(());
        }
        Err(format!("out of range; allowed {}", self.statement()))
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some(self.statement())
    }
}

impl<T: Bound> Range<T> {
    fn statement(&self) -> String {
        format!("{} to {}", self.0.written(), self.1.written())
    }
}

/// A string whose length in bytes is in the range, both bounds included.
pub(crate) struct Bytes(pub(crate) usize, pub(crate) usize);

impl Rule<String> for Bytes {
    fn check(&self, value: &String, _: &Settings) -> Result<(), String> {
        if (self.0..=self.1).contains(&value.len()) {
            return Ok(());
        }
        Err(format!(
            "is {} bytes; allowed {}",
            value.len(),
            self.statement()
        ))
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some(self.statement())
    }
}

impl Bytes {
    fn statement(&self) -> String {
        format!("{} to {} bytes", self.0, self.1)
    }
}

/// Not empty (when set); the text says what to do instead.
pub(crate) struct NonEmpty(pub(crate) &'static str);

impl NonEmpty {
    fn problem(&self) -> String {
        format!("empty; {}", self.0)
    }
}

impl Rule<PathBuf> for NonEmpty {
    fn check(&self, value: &PathBuf, _: &Settings) -> Result<(), String> {
        if value.as_os_str().is_empty() {
            return Err(self.problem());
        }
        Ok(())
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some("non-empty".to_owned())
    }
}

impl Rule<Option<Secret>> for NonEmpty {
    fn check(&self, value: &Option<Secret>, _: &Settings) -> Result<(), String> {
        if value.as_ref().is_some_and(|key| key.expose().is_empty()) {
            return Err(self.problem());
        }
        Ok(())
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some("non-empty".to_owned())
    }
}

/// A duration no longer than another key's; made by `up_to!(section.key)`.
pub(crate) struct UpTo {
    pub(crate) key: &'static str,
    pub(crate) value: fn(&Settings) -> Duration,
}

/// [`UpTo`] the key named, e.g. `up_to!(lifecycle.shutdown_timeout)`.
macro_rules! up_to {
    ($section:ident . $key:ident) => {
        $crate::settings::rule::UpTo {
            key: concat!(stringify!($section), ".", stringify!($key)),
            value: |settings| settings.$section.$key,
        }
    };
}

pub(crate) use up_to;

impl Rule<Duration> for UpTo {
    const RELATIVE: bool = true;

    fn check(&self, value: &Duration, settings: &Settings) -> Result<(), String> {
        let limit = (self.value)(settings);
        if *value <= limit {
            return Ok(());
        }
        Err(format!(
            "out of range; allowed {} ({})",
            self.statement(),
            quoted(humantime::format_duration(limit))
        ))
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some(self.statement())
    }
}

impl UpTo {
    fn statement(&self) -> String {
        format!("0s to {}", self.key)
    }
}

/// An optional path set together with another key, or neither is (a certificate and its key);
/// made by `paired_with!(section.key)`.
pub(crate) struct PairedWith {
    pub(crate) key: &'static str,
    pub(crate) value: fn(&Settings) -> &Option<PathBuf>,
}

/// [`PairedWith`] the key named, e.g. `paired_with!(tls.key)`.
macro_rules! paired_with {
    ($section:ident . $key:ident) => {
        $crate::settings::rule::PairedWith {
            key: concat!(stringify!($section), ".", stringify!($key)),
            value: |settings| &settings.$section.$key,
        }
    };
}

pub(crate) use paired_with;

impl Rule<Option<PathBuf>> for PairedWith {
    const RELATIVE: bool = true;

    fn check(&self, value: &Option<PathBuf>, settings: &Settings) -> Result<(), String> {
        let other = (self.value)(settings);
        let advice = "set both to serve HTTPS, or neither for plain HTTP";
        match (value, other) {
            (Some(path), _) if path.as_os_str().is_empty() => Err(format!(
                "empty; give the path of a PEM file, or leave it unset ({advice})"
            )),
            (Some(_), None) => Err(format!("{} is not set; {advice}", self.key)),
            (None, Some(_)) => Err(format!("not set, but {} is; {advice}", self.key)),
            _ => Ok(()),
        }
    }
}

/// `tracing` `EnvFilter` directives.
pub(crate) struct LogFilter;

impl Rule<String> for LogFilter {
    fn check(&self, value: &String, _: &Settings) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(value)
            .map(drop)
            .map_err(|err| {
                format!("invalid log filter: {err}; expected directives like \"info,baton=debug\"")
            })
    }
}

/// The admin listener's address is not the public one, while the admin listener is on.
pub(crate) struct OwnPort;

impl Rule<SocketAddr> for OwnPort {
    const RELATIVE: bool = true;

    fn check(&self, value: &SocketAddr, settings: &Settings) -> Result<(), String> {
        // Port 0 ("any free port", as in tests) never collides: each bind gets its own.
        if settings.admin.enabled && value.port() != 0 && *value == settings.server.listen {
            return Err(
                "same address as server.listen; give each listener its own port, \
                        or set admin.enabled = false"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// A URL with one of these schemes; the first is the one suggested.
pub(crate) struct Schemes(pub(crate) &'static [&'static str]);

impl Rule<SecretUrl> for Schemes {
    fn check(&self, value: &SecretUrl, _: &Settings) -> Result<(), String> {
        let scheme = value.scheme();
        if self.0.contains(&scheme.as_str()) {
            return Ok(());
        }
        Err(format!(
            "unsupported scheme {}; use {}",
            quoted(&scheme),
            self.statement()
        ))
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some(self.statement())
    }
}

impl Schemes {
    /// `sqlite:// or postgres://`: the schemes a user picks from (aliases such as `postgresql`
    /// after the first two are accepted but not advertised).
    fn statement(&self) -> String {
        let shown: Vec<String> = self.0.iter().take(2).map(|s| format!("{s}://")).collect();
        shown.join(" or ")
    }
}

/// The admin token: not empty when set, and set whenever the admin listener is reachable from
/// another machine (a non-loopback `admin.listen`): `/-/status` and `/metrics` tell an
/// attacker what runs, and how loaded it is.
pub(crate) struct AdminToken;

impl Rule<Option<Secret>> for AdminToken {
    const RELATIVE: bool = true;

    fn check(&self, value: &Option<Secret>, settings: &Settings) -> Result<(), String> {
        match value {
            Some(token) if token.expose().is_empty() => Err(
                "empty; set a long random token, or remove admin.token (only on a loopback \
                 admin.listen)"
                    .to_owned(),
            ),
            None if settings.admin.enabled && !settings.admin.listen.ip().is_loopback() => {
                Err(format!(
                    "required because admin.listen ({}) is not a loopback address: set \
                     admin.token (BATON_ADMIN__TOKEN) so that /-/status and /metrics require \
                     \"Authorization: Bearer <token>\", or listen on 127.0.0.1",
                    settings.admin.listen
                ))
            }
            _ => Ok(()),
        }
    }

    #[cfg(test)]
    fn doc(&self) -> Option<String> {
        Some("required when admin.listen is not a loopback address".to_owned())
    }
}
