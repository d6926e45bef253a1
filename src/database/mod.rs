//! The database: SQLite embedded by default, PostgreSQL when `database.url` says so, through
//! one code path (sqlx's `Any` driver picks the back end from the URL at run time).
//!
//! # Through upgrades, reloads and drains
//! - **Start**, which for a new generation is before it reports ready: connect with the
//!   pools' settings and session, apply the pending migrations under a lock (`migrate`). Any
//!   failure stops the start, so at an upgrade the old generation keeps serving and `baton
//!   upgrade` prints the reason. On SQLite the usual case, nothing pending, is confirmed on the
//!   starting thread instead (`direct`), without sqlx's connection thread. The pools open
//!   their first connections meanwhile, from the background work ([`Db::spawn_background`]:
//!   the health check and SQLite's log restart start at once), not as a step of the start.
//! - **Reload**: a changed `[database]` is applied by building new pools, checking them
//!   (connect, `SELECT 1`, no migration missing), then swapping them ([`Db`] is an `ArcSwap`);
//!   anything wrong rejects the reload and the old pools keep serving (`reload`). Replaced pools
//!   close once their last query ends (`pool`).
//! - **Drain**: [`Db::begin_drain`] closes the idle connections, and connections given back
//!   while draining close instead of idling, so an upgrade does not double the connections the
//!   database sees.
//! - **Health**: checked every second in the background (`health`); `/readyz` reports it.
//! - **SQLite's log**: restarted every second (`checkpoint`), or steady reads would let it grow
//!   without bound.
//!
//! # Layout
//! - `backend`: which back end a URL names, connect options, per-connection settings (WAL,
//!   busy timeout, statement timeout).
//! - `pool`: [`Pools`], the connections of one configuration, and their stats.
//! - `migrate`: the migrations built into the binary, applied under a lock.
//! - `direct`: SQLite's check at start that nothing is pending, on the starting thread.
//! - `health`: the background check.
//! - `checkpoint`: SQLite's write-ahead log kept small.
//! - `reload`: the reload participant that builds, checks and swaps pools.
//! - `error`: [`DbError`].

mod backend;
mod checkpoint;
mod direct;
mod error;
mod health;
mod migrate;
mod pool;
mod reload;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use serde::Serialize;
use sqlx::Connection;
use sqlx::any::AnyConnectOptions;

pub use backend::Backend;
pub use error::DbError;
pub use migrate::{MIGRATIONS_DIR_VAR, MigrationInfo, Migrations};
pub use pool::{PoolStats, Pools};

use crate::settings::{self, ReloadParticipant};
use backend::{
    Create, connect_direct, connect_options, plain_sqlite_file, prepare_file, session_statements,
};
use health::Health;
use pool::Shared;

/// The database of this process: the pools in force and what outlives them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Swapped whole by a reload; a request loads it once and keeps what it loaded.
    pools: ArcSwap<Pools>,
    migrations: Migrations,
    shared: Arc<Shared>,
    health: Health,
}

/// The database as `/-/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    pub backend: Backend,
    /// Password redacted.
    pub url: String,
    pub up: bool,
    /// Why it is not up.
    pub problem: Option<String>,
    pub pool: PoolStats,
}

impl Db {
    /// Connects, applies the pending migrations (under the lock), and builds the pools. Run
    /// before the process says it is ready. A SQLite file that `direct` finds up to date is not
    /// connected to through sqlx at all here.
    ///
    /// That check's connection, or else the migration's, is the start's check that the
    /// database answers with these settings: the pools connect with the same options and run
    /// the same session statements, so a check of their own would prove nothing more, and it
    /// cost about 1 ms of the start (two more SQLite connections, each on its own thread).
    /// Their first connections open in the background, within the first milliseconds
    /// ([`Db::spawn_background`]).
    pub async fn open(
        settings: &settings::Database,
        migrations: Migrations,
    ) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(&settings.url)?;
        let shared = Arc::new(Shared::default());
        let (options, statements) = recipe(settings, backend, Create::IfMissing)?;
        // Blocking, on the thread that runs the start: nothing waits on it then, and a local
        // file waits only for another process's lock, and no longer than the busy timeout.
        let confirmed = (backend == Backend::Sqlite)
            .then(|| plain_sqlite_file(&settings.url, Create::IfMissing))
            .flatten()
            .and_then(|(file, create)| direct::up_to_date(&file, create, &statements, &migrations));
        let applied = if let Some(confirmed) = confirmed {
            // Closed off the start.
            tokio::spawn(async move { drop(confirmed) });
            Vec::new()
        } else {
            on_one_connection(
                Closing::InBackground,
                settings,
                &options,
                &statements,
                async |conn| {
                    prepare_file(conn, backend).await?;
                    migrations.apply(backend, conn).await
                },
            )
            .await?
        };
        for migration in &applied {
            tracing::info!(%migration, backend = backend.name(), "migration applied");
        }
        let pools = Pools::build(backend, settings, options, statements, &shared);
        tracing::info!(
            backend = backend.name(),
            url = %settings.url.redacted(),
            migrations = %migrations.source(),
            applied = applied.len(),
            "database ready"
        );
        Ok(Db {
            inner: Arc::new(Inner {
                pools: ArcSwap::from_pointee(pools),
                migrations,
                shared,
                health: Health::default(),
            }),
        })
    }

    /// The pools in force. Hold them for one unit of work (a request), not longer: a reload
    /// swaps in new ones, and the old ones close when their last holder lets go.
    pub fn pools(&self) -> Arc<Pools> {
        self.inner.pools.load_full()
    }

    /// The drain began: close the idle connections, and from now on each one given back.
    pub async fn begin_drain(&self) {
        self.inner.shared.draining.store(true, Ordering::Relaxed);
        let pools = self.pools();
        let closed = pools.close_idle().await;
        let stats = pools.stats();
        tracing::info!(
            closed,
            in_use = stats.open.saturating_sub(stats.idle),
            "draining: idle database connections closed; those in use close when their query ends"
        );
    }

    /// Serving again (the successor died in its probation): keep connections again.
    pub fn end_drain(&self) {
        self.inner.shared.draining.store(false, Ordering::Relaxed);
    }

    /// At exit, after the drain: closes the connections, so PostgreSQL sees each one say goodbye
    /// and SQLite folds its write-ahead log back into the database file.
    pub async fn close(&self) {
        self.pools().close().await;
    }

    /// `None` while the database answers, else why not (see `health`).
    pub fn problem(&self) -> Option<String> {
        self.inner.health.problem()
    }

    /// Runs the background work until `until` resolves: the health check, and on SQLite the
    /// log's restarts. Both begin at once, so they also open the pools' first connections (the
    /// readers', and SQLite's writer) right after [`Db::open`].
    pub fn spawn_background(&self, until: impl Future<Output = ()> + Send + 'static) {
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                until.await;
                stop.cancel();
            }
        });
        tokio::spawn(health::run(self.clone(), stop.clone().cancelled_owned()));
        tokio::spawn(checkpoint::run(self.clone(), stop.cancelled_owned()));
    }

    fn is_draining(&self) -> bool {
        self.inner.shared.draining.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> DbStatus {
        let pools = self.pools();
        let problem = self.problem();
        DbStatus {
            backend: pools.backend(),
            url: pools.settings().url.redacted(),
            up: problem.is_none(),
            problem,
            pool: pools.stats(),
        }
    }

    /// Takes part in reloads: builds, checks and swaps the pools when `[database]` changes.
    pub fn reload_participant(&self) -> Arc<dyn ReloadParticipant> {
        Arc::new(reload::PoolReload(self.clone()))
    }

    /// How a running process connects for `settings`: to a database that exists.
    fn connect_recipe(
        &self,
        settings: &settings::Database,
    ) -> Result<(AnyConnectOptions, Vec<String>), DbError> {
        recipe(settings, Backend::of(&settings.url)?, Create::Never)
    }
}

/// Connect options and per-connection statements for `settings`.
fn recipe(
    settings: &settings::Database,
    backend: Backend,
    create: Create,
) -> Result<(AnyConnectOptions, Vec<String>), DbError> {
    let options = connect_options(&settings.url, backend, create)?;
    let name = format!("baton {}", std::process::id());
    let statements = session_statements(backend, settings.statement_timeout, &name);
    Ok((options, statements))
}

/// What `baton migrate` does: with `apply`, applies what is pending (as a start would) and
/// returns it; without, only returns what is pending.
pub async fn migrate(
    settings: &settings::Database,
    migrations: &Migrations,
    apply: bool,
) -> Result<Vec<MigrationInfo>, DbError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(&settings.url)?;
    if !apply && backend::sqlite_file_missing(&settings.url)? {
        // Nothing to connect to, and a check must not create the file: all of them are pending.
        return Ok(migrations.all(backend));
    }
    let create = if apply {
        Create::IfMissing
    } else {
        Create::Never
    };
    let (options, statements) = recipe(settings, backend, create)?;
    on_one_connection(
        Closing::Awaited,
        settings,
        &options,
        &statements,
        async |conn| {
            if apply {
                prepare_file(conn, backend).await?;
                migrations.apply(backend, conn).await
            } else {
                migrations.pending(backend, conn).await
            }
        },
    )
    .await
}

/// How [`on_one_connection`] closes its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Before it returns: a command that exits next must not cut the connection mid-close.
    Awaited,
    /// In a task of its own: one more round trip (and for SQLite, the end of the connection's
    /// thread) that a start does not need to finish before it is ready.
    InBackground,
}

/// Runs `work` on one connection of its own (migrations run before any pool exists, and
/// must not hold a pooled connection), and closes it whatever `work` returned.
async fn on_one_connection<T>(
    closing: Closing,
    settings: &settings::Database,
    options: &AnyConnectOptions,
    statements: &[String],
    work: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut conn =
        connect_direct(options, &settings.url, settings.acquire_timeout, statements).await?;
    let result = work(&mut conn).await;
    match closing {
        Closing::Awaited => {
            let _ = conn.close().await;
        }
        Closing::InBackground => {
            tokio::spawn(async move {
                let _ = conn.close().await;
            });
        }
    }
    result
}
