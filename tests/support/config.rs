//! The settings a test server starts with, rendered as a complete `config/default.toml`.

/// The settings a test server starts with; `toml()` renders a complete `default.toml`.
/// Listeners are on loopback port 0 (the addresses come from the state file); the drain
/// timings are short so that tests end quickly; everything else is the product default.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: String,
    /// `None` turns the admin listener off.
    pub admin: Option<String>,
    pub greeting: String,
    pub items_limit: u32,
    pub lame_duck: String,
    /// `lifecycle.close_spread`: the product default; at most half the lame duck is used.
    pub close_spread: String,
    pub shutdown_timeout: String,
    pub ready_timeout: String,
    /// `upgrade.probation`.
    pub probation: String,
    pub log_filter: String,
    /// `reload.watch`: reload when the config files change on disk.
    pub watch: bool,
    /// `reload.debounce`.
    pub debounce: String,
    /// `database.url`; `None` keeps the default (SQLite in the deployment's `data/`).
    pub database_url: Option<String>,
    pub database_pool_size: u32,
    pub database_acquire_timeout: String,
    /// HTTPS on the public listener; the harness then probes it with this client.
    pub tls: Option<TlsSetup>,
}

/// `[tls]` for a test server, and the client that trusts its certificate's CA.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// Relative to the deployment directory, where the test writes the files.
    pub cert: String,
    pub key: String,
    pub handshake_timeout: String,
    pub client: loadgen::Tls,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: "127.0.0.1:0".into(),
            admin: Some("127.0.0.1:0".into()),
            greeting: "Hello from the test".into(),
            items_limit: 1000,
            lame_duck: "300ms".into(),
            close_spread: "1s".into(),
            shutdown_timeout: "10s".into(),
            ready_timeout: "10s".into(),
            probation: "2s".into(),
            log_filter: "info".into(),
            watch: false,
            debounce: "250ms".into(),
            database_url: None,
            database_pool_size: 10,
            database_acquire_timeout: "5s".into(),
            tls: None,
        }
    }
}

impl Config {
    pub fn toml(&self) -> String {
        let (admin_enabled, admin_listen) = match &self.admin {
            Some(addr) => (true, addr.as_str()),
            None => (false, "127.0.0.1:0"),
        };
        let tls = match &self.tls {
            Some(tls) => format!(
                "cert = \"{}\"\nkey = \"{}\"\nhandshake_timeout = \"{}\"\n",
                tls.cert, tls.key, tls.handshake_timeout
            ),
            None => String::new(),
        };
        format!(
            r#"[server]
listen = "{http}"
request_timeout = "30s"
worker_threads = 2

[tls]
{tls}
[admin]
enabled = {admin_enabled}
listen = "{admin_listen}"

[app]
greeting = "{greeting}"
items_limit = {items_limit}

[log]
filter = "{filter}"
format = "text"

[lifecycle]
pid_file = "run/baton.pid"
supervise = false
lame_duck = "{lame_duck}"
close_spread = "{close_spread}"
shutdown_timeout = "{shutdown_timeout}"

[upgrade]
ready_timeout = "{ready_timeout}"
probation = "{probation}"

[reload]
watch = {watch}
debounce = "{debounce}"

[database]
{database_url}pool_size = {pool_size}
acquire_timeout = "{acquire_timeout}"
"#,
            http = self.http,
            greeting = self.greeting,
            items_limit = self.items_limit,
            filter = self.log_filter,
            lame_duck = self.lame_duck,
            close_spread = self.close_spread,
            shutdown_timeout = self.shutdown_timeout,
            ready_timeout = self.ready_timeout,
            probation = self.probation,
            watch = self.watch,
            debounce = self.debounce,
            database_url = self
                .database_url
                .as_ref()
                .map(|url| format!("url = \"{url}\"\n"))
                .unwrap_or_default(),
            pool_size = self.database_pool_size,
            acquire_timeout = self.database_acquire_timeout,
        )
    }
}
