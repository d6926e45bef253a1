//! A reload that changes `[database]`: new pools are built and checked before the settings
//! swap, and swapped in right after it. The old pools stay in force if anything is wrong.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::Connection;

use super::backend::{Backend, connect_direct};
use super::{Db, Pools};
use crate::settings::{Commit, ReloadParticipant, Settings};

#[derive(Debug)]
pub(super) struct PoolReload(pub(super) Db);

impl ReloadParticipant for PoolReload {
    fn prepare<'a>(
        &'a self,
        _in_force: &'a Settings,
        candidate: &'a Settings,
    ) -> BoxFuture<'a, Result<Option<Commit>, String>> {
        Box::pin(async move {
            let wanted = &candidate.database;
            // Compared with what the pools were built from, not with the settings in force:
            // the two are the same, but the pools are what this replaces.
            if self.0.pools().settings() == wanted {
                return Ok(None);
            }
            let pools = self.build(wanted).await?;
            let db = self.0.clone();
            Ok(Some(Box::new(move || swap(&db, pools)) as Commit))
        })
    }
}

impl PoolReload {
    /// New pools for `wanted`, checked: the database answers, and has every migration this
    /// binary needs (a reload never migrates; an upgrade or `baton migrate` does).
    async fn build(&self, wanted: &crate::settings::Database) -> Result<Pools, String> {
        let rejected = |reason: String| format!("database: {reason}; the current pool stays");
        let db = &self.0;
        let backend = Backend::of(&wanted.url).map_err(|e| rejected(e.to_string()))?;
        let (options, statements) = db
            .connect_recipe(wanted)
            .map_err(|e| rejected(e.to_string()))?;
        let mut conn = connect_direct(&options, &wanted.url, wanted.acquire_timeout, &statements)
            .await
            .map_err(|e| rejected(e.to_string()))?;
        let pending = db.inner.migrations.pending(backend, &mut conn).await;
        let _ = conn.close().await;
        let pending = pending.map_err(|e| rejected(e.to_string()))?;
        if !pending.is_empty() {
            let names: Vec<String> = pending.iter().map(ToString::to_string).collect();
            return Err(rejected(format!(
                "{} lacks migrations this binary needs ({}); apply them with `baton migrate` \
                 (which reads the same settings), then reload again",
                wanted.url.redacted(),
                names.join(", ")
            )));
        }
        let pools = Pools::build(backend, wanted, options, statements, &db.inner.shared);
        pools.check().await.map_err(|e| rejected(e.to_string()))?;
        Ok(pools)
    }
}

/// Puts checked pools in force, right after the settings swap.
fn swap(db: &Db, pools: Pools) {
    tracing::info!(
        backend = pools.backend().name(),
        url = %pools.settings().url.redacted(),
        pool_size = pools.settings().pool_size,
        "database pool replaced; the previous one closes after its last query"
    );
    db.inner.pools.store(Arc::new(pools));
    // The new pool was just checked.
    db.inner.health.set(None);
}
