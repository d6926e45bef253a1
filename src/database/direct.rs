//! SQLite's check at start, done on the calling thread: the file opens with this process's
//! session, is in WAL mode, and holds every migration of this binary.
//!
//! Why not through sqlx, as everything else is: a sqlx SQLite connection is a thread of its
//! own, and each statement is a round trip to it, so the same check took 1.1-1.5 ms of a new
//! generation's start there, against 0.45-0.75 ms here, of a start of about 5 ms
//! (BENCHMARKS.md, "session 17: SQLite's start check on the starting thread"). It is the only
//! SQL this process runs outside sqlx, and it does nothing sqlx's path would not (create the
//! file where the URL allows, switch it to WAL). Anything it cannot confirm (a pending
//! migration, an edited one, an error, a URL asking for more than a plain file) sends the
//! start down sqlx's path, which applies or reports it as before.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::backend::{Backend, Create, SET_WAL, is_wal};
use super::migrate::{APPLIED, Migrations, SQLITE_HAS_TABLE};

/// Whether the SQLite file at `file` is ready for this binary as it is: opened (created if
/// `create` allows) with `statements` run, in WAL mode, and nothing pending. `None` says
/// only that this could not be confirmed here; the caller then takes sqlx's path.
///
/// `Some` holds the connection that confirmed it. Closing it takes 0.1 ms (SQLite unmaps the
/// log's index and closes its files), which the start need not wait for: drop it elsewhere.
pub(super) fn up_to_date(
    file: &Path,
    create: Create,
    statements: &[String],
    migrations: &Migrations,
) -> Option<Connection> {
    match confirm(file, create, statements, migrations) {
        Ok(conn) => Some(conn),
        Err(why) => {
            tracing::debug!(file = %file.display(), why, "SQLite checked through sqlx instead");
            None
        }
    }
}

fn confirm(
    file: &Path,
    create: Create,
    statements: &[String],
    migrations: &Migrations,
) -> Result<Connection, String> {
    // As sqlx opens it (`establish.rs`): a URI-capable name, no mutex, a private cache.
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_PRIVATE_CACHE;
    if create == Create::IfMissing {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(file, flags).map_err(|e| e.to_string())?;
    conn.execute_batch(&statements.join(";\n"))
        .map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row(SET_WAL, [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if !is_wal(&mode) {
        return Err(format!("journal mode {mode}"));
    }
    let has_table: i64 = conn
        .query_row(SQLITE_HAS_TABLE, [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let applied = if has_table > 0 {
        let mut query = conn.prepare(APPLIED).map_err(|e| e.to_string())?;
        query
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let pending = migrations
        .not_in(Backend::Sqlite, &applied)
        .map_err(|e| e.to_string())?;
    if pending.is_empty() {
        Ok(conn)
    } else {
        Err(format!("{} migration(s) pending", pending.len()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::database::backend::session_statements;
    use crate::database::{Db, Migrations};
    use crate::settings::{SecretUrl, Settings};

    const DEADLINE: Duration = Duration::from_secs(10);

    fn statements() -> Vec<String> {
        session_statements(Backend::Sqlite, Duration::from_secs(5), "test")
    }

    /// A database that sqlx's path (`Db::open`) created and migrated, in a temp dir.
    async fn migrated() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let file = dir.path().join("baton.db");
        let mut settings = Settings::default().database;
        settings.url = SecretUrl::new(format!("sqlite://{}", file.display()));
        let db = tokio::time::timeout(DEADLINE, Db::open(&settings, Migrations::built_in()))
            .await
            .expect("the database opens in time")
            .expect("a SQLite database in a temp dir opens");
        db.close().await;
        (dir, file)
    }

    #[tokio::test]
    async fn a_migrated_database_is_confirmed_here() {
        let (_dir, file) = migrated().await;
        let migrations = Migrations::built_in();
        assert!(confirm(&file, Create::Never, &statements(), &migrations).is_ok());
    }

    #[test]
    fn a_new_file_is_left_to_sqlx_with_its_migrations_pending() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let file = dir.path().join("new.db");
        let migrations = Migrations::built_in();
        let pending = migrations.all(Backend::Sqlite).len();
        assert_eq!(
            confirm(&file, Create::IfMissing, &statements(), &migrations).err(),
            Some(format!("{pending} migration(s) pending"))
        );
        // Left in WAL mode, as sqlx's path would leave it.
        let conn = Connection::open(&file).expect("the file exists now");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .expect("the mode can be read");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_missing_file_is_not_created_when_the_url_says_rw() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let file = dir.path().join("absent.db");
        let migrations = Migrations::built_in();
        assert!(up_to_date(&file, Create::Never, &statements(), &migrations).is_none());
        assert!(!file.exists());
    }

    #[tokio::test]
    async fn an_edited_migration_is_left_to_sqlx_to_report() {
        let (_dir, file) = migrated().await;
        let conn = Connection::open(&file).expect("the file opens");
        conn.execute("UPDATE _sqlx_migrations SET checksum = x'00'", [])
            .expect("the checksum can be changed");
        drop(conn);
        let migrations = Migrations::built_in();
        let why = confirm(&file, Create::Never, &statements(), &migrations)
            .expect_err("a changed checksum is not confirmed");
        assert!(why.contains("other contents"), "{why}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_left_to_sqlx() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let file = dir.path().join("text.db");
        std::fs::write(
            &file,
            "not a database, but long enough to have a header: ".repeat(20),
        )
        .expect("the file can be written");
        assert!(up_to_date(&file, Create::Never, &statements(), &Migrations::built_in()).is_none());
    }
}
