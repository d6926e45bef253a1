//! [`DbError`]: sqlx's errors sorted by what the caller does about them, worded for the user.

use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// What can go wrong with the database. `Display` is the whole message; URLs in it are always
/// redacted.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `database.url` names no back end this build knows (the settings rule catches most).
    #[error("database.url = \"{url}\": {reason}")]
    BadUrl { url: String, reason: String },

    /// Preparing the place the data lives (SQLite's directory) failed.
    #[error("{0}")]
    Setup(String),

    /// No connection could be opened: the database is down, refuses us, or does not exist.
    #[error("cannot connect to {url} (database.url): {reason}")]
    Connect { url: String, reason: String },

    /// Every connection stayed busy for `database.acquire_timeout`.
    #[error(
        "no database connection became free within database.acquire_timeout; the database is \
         slow or unreachable, or database.pool_size is too small for the load"
    )]
    PoolTimedOut,

    /// The connection broke, the pool is closed, or the database did not answer in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),

    /// SQLite: another process held the write lock for longer than the busy timeout
    /// (`database.statement_timeout`).
    #[error("the database stayed locked by another writer: {0}")]
    Busy(String),

    /// A row with the same unique key exists.
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),

    /// A migration did not apply; nothing of it remains (it ran in a transaction).
    #[error("migrations: {0}")]
    Migrate(String),

    /// The database refused a statement for any other reason: a bug, or a schema that does
    /// not match the code.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
}

impl DbError {
    /// Whether a client may simply retry later (a 503 rather than a 500).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DbError::Connect { .. }
                | DbError::PoolTimedOut
                | DbError::Unavailable(_)
                | DbError::Busy(_)
        )
    }
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => DbError::PoolTimedOut,
            sqlx::Error::PoolClosed => DbError::Unavailable("the connection pool is closed".into()),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(error.to_string()),
            sqlx::Error::Database(ref db) if db.is_unique_violation() => {
                DbError::UniqueViolation(db.constraint().unwrap_or(db.message()).to_owned())
            }
            sqlx::Error::Database(ref db)
                if db.try_downcast_ref::<SqliteError>().is_some()
                    && is_busy(db.code().as_deref()) =>
            {
                DbError::Busy(db.message().to_owned())
            }
            sqlx::Error::Database(ref db)
                if db.try_downcast_ref::<PgDatabaseError>().is_some()
                    && is_timeout(db.code().as_deref()) =>
            {
                DbError::Unavailable(format!(
                    "a statement ran past database.statement_timeout ({})",
                    db.message()
                ))
            }
            sqlx::Error::Migrate(error) => DbError::Migrate(error.to_string()),
            other => DbError::Query(other),
        }
    }
}

/// SQLite's SQLITE_BUSY and SQLITE_LOCKED, extended codes included (the low byte is the
/// primary code).
fn is_busy(code: Option<&str>) -> bool {
    code.and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// PostgreSQL's query_canceled, which is what statement_timeout raises.
fn is_timeout(code: Option<&str>) -> bool {
    code == Some("57014")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_codes_include_the_extended_ones() {
        assert!(is_busy(Some("5")));
        assert!(is_busy(Some("517")), "SQLITE_BUSY_SNAPSHOT");
        assert!(is_busy(Some("6")));
        assert!(!is_busy(Some("2067")), "SQLITE_CONSTRAINT_UNIQUE");
        assert!(!is_busy(None));
    }
}
