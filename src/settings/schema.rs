//! The schema: every key once, with its type, whether a reload applies it, and its rule.
//!
//! Defaults, and what each key is for, are in `config/default.toml` (built into the binary, see
//! `defaults.rs`); a test holds the file to this schema. To add a key: add its line here, then
//! its value and a comment ending "Reloadable." or "Upgrade-only." to `config/default.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::key::schema;
use super::rule::{
    AdminToken, Bytes, LogFilter, NonEmpty, OwnPort, Range, Schemes, paired_with, up_to,
};
use super::secret::{Secret, SecretUrl};

const MILLI: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

schema! {
    /// The public HTTP listener.
    server: Server {
        listen: SocketAddr => UpgradeOnly;
        #[serde(with = "humantime_serde")]
        request_timeout: Duration => Reloadable, Range(MILLI, HOUR);
        /// 0: one per CPU core.
        worker_threads: usize => UpgradeOnly, Range(0, 1024);
    }

    /// TLS on the public listener: `cert` and `key` both set, or neither (plain HTTP).
    tls: Tls {
        /// PEM certificate chain, the server's own certificate first.
        cert: Option<PathBuf> => ReloadableWhileSet, paired_with!(tls.key);
        /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
        key: Option<PathBuf> => ReloadableWhileSet, paired_with!(tls.cert);
        #[serde(with = "humantime_serde")]
        handshake_timeout: Duration => Reloadable, Range(MILLI, MINUTE);
        #[serde(with = "humantime_serde")]
        ticket_rotation: Duration => UpgradeOnly, Range(MINUTE, DAY);
    }

    /// The admin listener (`/-/status`, `/metrics`).
    admin: Admin {
        enabled: bool => UpgradeOnly;
        listen: SocketAddr => UpgradeOnly, OwnPort;
        /// When set, `/-/status` and `/metrics` require `Authorization: Bearer <token>`;
        /// required when `listen` is not a loopback address.
        token: Option<Secret> => Reloadable, AdminToken;
    }

    /// The demo application.
    app: App {
        greeting: String => Reloadable, Bytes(1, 1000);
        items_limit: usize => Reloadable, Range(1, 100_000);
        /// When set, `POST /api/items` requires `Authorization: Bearer <key>`.
        api_key: Option<Secret> => Reloadable,
            NonEmpty("set a non-empty key, or remove app.api_key to turn authentication off");
    }

    /// What one client can hold: connections, time, memory.
    limits: Limits {
        max_connections: usize => Reloadable, Range(1, 1_000_000);
        #[serde(with = "humantime_serde")]
        header_read_timeout: Duration => Reloadable, Range(Duration::from_millis(100), HOUR);
        #[serde(with = "humantime_serde")]
        idle_timeout: Duration => Reloadable, Range(Duration::from_millis(100), HOUR);
        #[serde(with = "humantime_serde")]
        send_timeout: Duration => Reloadable, Range(Duration::from_millis(100), HOUR);
        requests_per_connection: usize => Reloadable, Range(1, 100_000_000);
        max_body_bytes: usize => Reloadable, Range(0, 1024 * MIB);
        h2_max_concurrent_streams: usize => Reloadable, Range(1, 10_000);
        h2_max_send_buffer_bytes: usize => Reloadable, Range(KIB, 16 * MIB);
        #[serde(with = "humantime_serde")]
        stream_lifetime: Duration => Reloadable, Range(SECOND, DAY);
    }

    /// Logging.
    log: Log {
        /// `EnvFilter` directives, e.g. `info,baton=debug`.
        filter: String => Reloadable, LogFilter;
        format: LogFormat => UpgradeOnly;
        /// One line per request on the `baton::access` target.
        access: bool => Reloadable;
        /// OTLP/HTTP collector for traces (feature `otel`); empty: none.
        otlp_endpoint: String => UpgradeOnly;
    }

    /// The process: where clients find it, how it drains, whether it supervises.
    lifecycle: Lifecycle {
        pid_file: PathBuf => UpgradeOnly, NonEmpty("give a path such as \"run/baton.pid\"");
        #[serde(with = "humantime_serde")]
        lame_duck: Duration => Reloadable, up_to!(lifecycle.shutdown_timeout);
        #[serde(with = "humantime_serde")]
        close_spread: Duration => Reloadable, Range(Duration::ZERO, HOUR);
        #[serde(with = "humantime_serde")]
        shutdown_timeout: Duration => Reloadable, Range(MILLI, HOUR);
        supervise: bool => UpgradeOnly;
    }

    /// Binary upgrades.
    upgrade: Upgrade {
        #[serde(with = "humantime_serde")]
        ready_timeout: Duration => Reloadable, Range(Duration::from_millis(100), HOUR);
        #[serde(with = "humantime_serde")]
        probation: Duration => Reloadable, Range(Duration::ZERO, HOUR);
        max_draining: usize => Reloadable, Range(1, 64);
    }

    /// Configuration reloads.
    reload: Reload {
        watch: bool => UpgradeOnly;
        #[serde(with = "humantime_serde")]
        debounce: Duration => UpgradeOnly, Range(Duration::ZERO, MINUTE);
    }

    /// The database: SQLite by default, PostgreSQL when the URL says so.
    database: Database {
        url: SecretUrl => Reloadable, Schemes(&["sqlite", "postgres", "postgresql"]);
        pool_size: usize => Reloadable, Range(1, 1000);
        #[serde(with = "humantime_serde")]
        acquire_timeout: Duration => Reloadable, Range(MILLI, MINUTE);
        #[serde(with = "humantime_serde")]
        statement_timeout: Duration => Reloadable, Range(MILLI, HOUR);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
