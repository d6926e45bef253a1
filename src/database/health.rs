//! Whether the database answers: checked in the background, so `/readyz` answers at once and
//! a flood of probes never becomes a flood of queries.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::Db;
use super::backend::connect_direct;
use super::error::DbError;

/// How often the database is checked: a load balancer probing `/readyz` every few seconds
/// sees an outage within about a second of it.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The last check's result.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// `None` while the database answers; else what is wrong.
    problem: Mutex<Option<String>>,
}

impl Health {
    pub(super) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set(&self, problem: Option<String>) {
        let mut current = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*current, &problem) {
            (None, Some(problem)) => tracing::error!(%problem, "the database is unreachable"),
            (Some(_), None) => tracing::info!("the database answers again"),
            _ => {}
        }
        *current = problem;
    }
}

/// Checks `db` every [`CHECK_EVERY`] until `until` resolves.
pub(super) async fn run(db: Db, until: impl Future<Output = ()>) {
    let mut until = std::pin::pin!(until);
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut until => return,
            _ = ticks.tick() => {
                // A draining process is out of the load balancer anyway, and a check would
                // open a connection it must not keep.
                if db.is_draining() {
                    continue;
                }
                let problem = check(&db).await.err();
                db.inner.health.set(problem);
            }
        }
    }
}

/// One check through the pools, as a request would get its connection. A pool that only timed
/// out is asked why with a connection of its own: if that one connects, the database is up and
/// merely busy, which is no reason to take this process out of a load balancer (its peers are
/// as busy).
async fn check(db: &Db) -> Result<(), String> {
    let pools = db.pools();
    match pools.check_read().await {
        Ok(()) => Ok(()),
        Err(DbError::PoolTimedOut) => {
            let settings = pools.settings();
            let (options, statements) = db.connect_recipe(settings).map_err(|e| e.to_string())?;
            let mut conn = connect_direct(
                &options,
                &settings.url,
                settings.acquire_timeout,
                &statements,
            )
            .await
            .map_err(|err| err.to_string())?;
            let answered = sqlx::query("SELECT 1").execute(&mut conn).await;
            let _ = sqlx::Connection::close(conn).await;
            answered
                .map(drop)
                .map_err(|err| DbError::from(err).to_string())
        }
        Err(err) => Err(err.to_string()),
    }
}
