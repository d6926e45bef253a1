//! SQLite only: keeps the write-ahead log from growing without bound.
//!
//! SQLite folds the log back into the database file on its own (an automatic checkpoint every
//! 1000 pages), but it can start the log over only at a moment when no reader still needs it.
//! Under steady reads and writes that moment never comes: measured here, the log of a 2 MB
//! database grew by 20 MB a second, past 600 MB in half a minute, and reads slowed down with it.
//! So once a second the writer connection runs `wal_checkpoint(RESTART)`, which waits briefly
//! for the readers of the moment to finish (they take milliseconds) and makes the next write
//! start the log from the beginning; `journal_size_limit` (see `backend`) then trims the file.

use std::time::Duration;

use super::Db;
use super::backend::Backend;

/// How often the log is restarted: at the write rates of this template it stays a few tens of
/// megabytes at most.
const EVERY: Duration = Duration::from_secs(1);

/// Longest the checkpoint waits for readers; the writes of this process queue behind it
/// meanwhile. Readers here take milliseconds; if one takes longer, the next round will do.
const WAIT_FOR_READERS: Duration = Duration::from_millis(100);

/// Restarts the log every [`EVERY`] until `until` resolves, while the pools in force are SQLite.
pub(super) async fn run(db: Db, until: impl Future<Output = ()>) {
    let mut until = std::pin::pin!(until);
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut until => return,
            _ = ticks.tick() => {
                let pools = db.pools();
                // A draining process writes little, and must not open a connection to do this.
                if pools.backend() != Backend::Sqlite || db.is_draining() {
                    continue;
                }
                if let Err(err) = restart_log(&pools, pools.settings().statement_timeout).await {
                    tracing::debug!(error = %err, "SQLite checkpoint skipped");
                }
            }
        }
    }
}

async fn restart_log(pools: &super::Pools, busy_timeout: Duration) -> Result<(), super::DbError> {
    let mut conn = pools.write().await?;
    let wait = WAIT_FOR_READERS.as_millis();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {wait}")))
        .execute(&mut *conn)
        .await?;
    let checkpoint: Result<(i64, i64, i64), sqlx::Error> =
        sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await;
    // The connection goes back to the pool: its busy timeout must be the usual one again.
    let restore = format!("PRAGMA busy_timeout = {}", busy_timeout.as_millis());
    sqlx::raw_sql(sqlx::AssertSqlSafe(restore))
        .execute(&mut *conn)
        .await?;
    let (busy, log, checkpointed) = checkpoint?;
    tracing::trace!(busy, log, checkpointed, "SQLite checkpoint");
    Ok(())
}
