//! The `items` table.
//!
//! Every query names its columns, never `SELECT *`: during an upgrade the previous generation
//! runs these queries against a schema the new one may have expanded, and PostgreSQL refuses a
//! cached `SELECT *` whose columns changed ("cached plan must not change result type").
//! Each write is one statement, so on SQLite it takes the write lock at once and never has to
//! upgrade a read lock (which fails, rather than waits, when the other generation wrote).

use std::sync::Arc;

use serde::Serialize;

use crate::app::error::AppError;
use crate::database::{DbError, Pools};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub(crate) struct Item {
    pub(crate) id: i64,
    pub(crate) name: String,
}

/// The items, on one set of pools.
#[derive(Debug)]
pub(crate) struct Items {
    pools: Arc<Pools>,
}

impl Items {
    pub(crate) fn new(pools: Arc<Pools>) -> Self {
        Items { pools }
    }

    /// Up to `limit` items with an id above `after`, by id: a page that a client continues
    /// from its last id (keyset pagination, as fast on the last page as on the first).
    pub(crate) async fn page(&self, after: i64, limit: u32) -> Result<Vec<Item>, AppError> {
        let mut conn = self.pools.read().await?;
        let items = sqlx::query_as("SELECT id, name FROM items WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await
            .map_err(DbError::from)?;
        Ok(items)
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<Item>, AppError> {
        let mut conn = self.pools.read().await?;
        let item = sqlx::query_as("SELECT id, name FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(DbError::from)?;
        Ok(item)
    }

    /// Adds an item; a name already taken is a conflict.
    pub(crate) async fn create(&self, name: &str) -> Result<Item, AppError> {
        let mut conn = self.pools.write().await?;
        let created = sqlx::query_as("INSERT INTO items (name) VALUES ($1) RETURNING id, name")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(DbError::from);
        match created {
            Ok(item) => Ok(item),
            Err(DbError::UniqueViolation(_)) => Err(AppError::Conflict(format!(
                "an item named {name:?} exists already; names are unique"
            ))),
            Err(other) => Err(other.into()),
        }
    }

    /// Deletes an item; `false` if there was none with that id.
    pub(crate) async fn delete(&self, id: i64) -> Result<bool, AppError> {
        let mut conn = self.pools.write().await?;
        let deleted = sqlx::query("DELETE FROM items WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(DbError::from)?;
        Ok(deleted.rows_affected() > 0)
    }
}
