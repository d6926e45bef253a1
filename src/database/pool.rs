//! [`Pools`]: the connections of one `[database]` configuration. Built lazily from checked
//! settings, shared behind an `Arc`, and closed once the last holder lets go of it, so a pool
//! replaced by a reload finishes its in-flight queries first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};

use super::backend::{Backend, start_session};
use super::error::DbError;
use crate::settings;

/// What every pool of this process shares, across reloads.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// While set, a connection given back closes instead of waiting idle: a draining
    /// generation must not hold connections its successor needs.
    pub(super) draining: Arc<AtomicBool>,
    pub(super) counters: Counters,
}

/// Waits for a connection, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Requests waiting for a connection right now.
    waiting: AtomicUsize,
    /// Waits that ended without a connection (`database.acquire_timeout`).
    timeouts: AtomicU64,
}

/// The connections of one configuration.
#[derive(Debug)]
pub struct Pools {
    backend: Backend,
    /// What they were built from: a reload with the same `[database]` keeps them.
    settings: settings::Database,
    read: AnyPool,
    /// SQLite takes one writer at a time: writes of this process queue here, in order and
    /// without polling, rather than in SQLite's busy handler (which sleeps and retries, and can
    /// starve a writer into "database is locked"). Only the other generation's writer, during
    /// an upgrade, meets the busy timeout. PostgreSQL: the same pool as `read`.
    write: AnyPool,
    shared: Arc<Shared>,
}

/// A pool's size, as `/-/status` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Connections open.
    pub open: u32,
    /// Of those, waiting unused.
    pub idle: u32,
    /// Most connections the pools may open.
    pub max: u32,
    /// Requests waiting for a connection now.
    pub waiting: usize,
    /// Waits that timed out, since the process started.
    pub timeouts: u64,
}

impl Pools {
    /// Pools for `settings` that connect on first use, each new connection starting its
    /// session with `statements`.
    pub(super) fn build(
        backend: Backend,
        settings: &settings::Database,
        options: AnyConnectOptions,
        statements: Vec<String>,
        shared: &Arc<Shared>,
    ) -> Pools {
        let statements: Arc<[String]> = statements.into();
        let pool = |max: u32| {
            let statements = Arc::clone(&statements);
            let draining = Arc::clone(&shared.draining);
            AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(0)
                .acquire_timeout(settings.acquire_timeout)
                // A round trip before each use finds a connection the server dropped (a
                // PostgreSQL restart); an SQLite file cannot drop one, and there the ping is a
                // hop to the connection's thread in every write's hand-over.
                .test_before_acquire(backend == Backend::Postgres)
                .after_connect(move |conn, _| {
                    let statements = Arc::clone(&statements);
                    Box::pin(async move { start_session(conn, &statements).await })
                })
                .after_release(move |_, _| {
                    let keep = !draining.load(Ordering::Relaxed);
                    Box::pin(async move { Ok(keep) })
                })
                .connect_lazy_with(options.clone())
        };
        let max = u32::try_from(settings.pool_size).unwrap_or(u32::MAX);
        let read = pool(max);
        let write = match backend {
            Backend::Sqlite => pool(1),
            Backend::Postgres => read.clone(),
        };
        Pools {
            backend,
            settings: settings.clone(),
            read,
            write,
            shared: Arc::clone(shared),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(super) fn settings(&self) -> &settings::Database {
        &self.settings
    }

    /// A connection for reading.
    pub async fn read(&self) -> Result<PoolConnection<Any>, DbError> {
        self.acquire(&self.read).await
    }

    /// A connection for writing (see `write` for why SQLite has its own).
    pub async fn write(&self) -> Result<PoolConnection<Any>, DbError> {
        self.acquire(&self.write).await
    }

    async fn acquire(&self, pool: &AnyPool) -> Result<PoolConnection<Any>, DbError> {
        let counters = &self.shared.counters;
        counters.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted down however the wait ends, a cancelled request included.
        let _waiting = scopeguard(|| {
            counters.waiting.fetch_sub(1, Ordering::Relaxed);
        });
        pool.acquire().await.map_err(|err| {
            if matches!(err, sqlx::Error::PoolTimedOut) {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            DbError::from(err)
        })
    }

    /// One `SELECT 1` through each pool: every kind of connection opens and starts its
    /// session. The pools at once: each SQLite connection opens on its own thread.
    pub async fn check(&self) -> Result<(), DbError> {
        let checks = self
            .distinct()
            .map(|pool| async move { select_one(self.acquire(pool).await?).await });
        futures_util::future::try_join_all(checks).await?;
        Ok(())
    }

    /// One `SELECT 1` through the readers only: whether the database answers, without queueing
    /// behind SQLite's writes.
    pub async fn check_read(&self) -> Result<(), DbError> {
        select_one(self.read().await?).await
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            open: 0,
            idle: 0,
            max: 0,
            waiting: self.shared.counters.waiting.load(Ordering::Relaxed),
            timeouts: self.shared.counters.timeouts.load(Ordering::Relaxed),
        };
        for pool in self.distinct() {
            stats.open += pool.size();
            stats.idle += u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
            stats.max += pool.options().get_max_connections();
        }
        stats
    }

    /// Closes the connections idle now; returns how many. Those in use close when given back
    /// while the process drains (see `Shared::draining`).
    pub(super) async fn close_idle(&self) -> usize {
        let mut closed = 0;
        for pool in self.distinct() {
            // Bounded by the idle connections seen now: one given back meanwhile closes anyway.
            for _ in 0..pool.num_idle() {
                let Some(conn) = pool.try_acquire() else {
                    break;
                };
                match conn.close().await {
                    Ok(()) => closed += 1,
                    Err(err) => {
                        tracing::debug!(error = %err, "closing an idle database connection failed");
                    }
                }
            }
        }
        closed
    }

    /// Closes every connection, waiting for those in use to be given back.
    pub(super) async fn close(&self) {
        for pool in self.distinct() {
            pool.close().await;
        }
    }

    fn distinct(&self) -> impl Iterator<Item = &AnyPool> {
        let write = (self.backend == Backend::Sqlite).then_some(&self.write);
        std::iter::once(&self.read).chain(write)
    }
}

impl Drop for Pools {
    /// The last holder is gone: no query can start on these pools any more. Close them, in the
    /// background (connections close with a goodbye to the server).
    fn drop(&mut self) {
        let pools: Vec<AnyPool> = self.distinct().cloned().collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for pool in pools {
                    pool.close().await;
                }
            });
        }
    }
}

async fn select_one(mut conn: PoolConnection<Any>) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(&mut *conn).await?;
    Ok(())
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
