//! baton: an axum service template that is never down.
//!
//! A new binary replaces the running one on `SIGUSR2` and a new configuration replaces the
//! current one on `SIGUSR1`/`SIGHUP`, while requests keep flowing and none is lost.
//!
//! # Layout
//! - [`cli`]: the subcommands (`serve`, `check`, `reload`, `upgrade`, `stop`, `status`, `health`).
//! - [`settings`]: typed, layered, validated settings and the live store that reloads them.
//! - [`config_watch`]: reloads when a config file changes (`reload.watch`), e.g. a ConfigMap.
//! - [`telemetry`]: tracing set-up with a log filter that reloads.
//! - `otel` (feature `otel`): traces over OTLP, flushed after the drain.
//! - [`log_limit`]: warnings and errors limited per call site, so a client cannot flood the log.
//! - [`database`]: the connection pools (SQLite or PostgreSQL), migrations, health; built,
//!   checked and swapped like the settings.
//! - [`app`]: the HTTP application: routes, state, the repository, the error type, the admin
//!   endpoints.
//! - [`lifecycle`]: signals, listeners, the upgrade handshake, the drain, the pid file, and the
//!   client side of the control protocol. It knows nothing about the routes.
//! - [`tls`]: TLS on the public listener: certificates that reload, ticket keys that cross
//!   upgrades, the handshake the lifecycle runs on each connection.
//! - [`server`]: wires the application into the lifecycle (`baton serve`).

pub mod app;
pub mod cli;
pub mod config_watch;
pub mod database;
pub mod lifecycle;
pub mod log_limit;
#[cfg(feature = "otel")]
pub mod otel;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod tls;

/// The build's identity: crate version plus the git commit it was built from, as semver build
/// metadata (`0.1.0+3f2a9c1d4e5b`).
pub fn version() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), "+", env!("BATON_GIT_COMMIT"))
}
