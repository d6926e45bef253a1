//! The migrations, built into the binary from `migrations/<backend>/`, and how they are applied:
//! under a lock, so two generations never migrate at once, and in transactions, so a failed
//! migration leaves the schema as it was.
//!
//! - SQLite: the lock is one `BEGIN EXCLUSIVE` transaction around every pending migration
//!   (each in a savepoint); a failure rolls all of them back. Writers of the other generation
//!   wait for it (busy timeout), readers go on (WAL).
//! - PostgreSQL: sqlx's advisory lock for the whole run, one transaction per migration (so a
//!   `-- no-transaction` migration such as `CREATE INDEX CONCURRENTLY` is possible); a failure
//!   rolls that migration back and keeps the ones before it.
//!
//! A database may hold migrations this binary does not know: those of a newer release, during
//! its probation or after a rollback. They are ignored, which is safe as long as each release
//! only expands the schema the previous one uses (README, "Schema changes").

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use sqlx::AnyConnection;
use sqlx::migrate::{Migrate, Migration, Migrator};
use sqlx::{Acquire, Connection};

use super::backend::Backend;
use super::error::DbError;

/// The table sqlx keeps its bookkeeping in.
const TABLE: &str = "_sqlx_migrations";

/// Whether SQLite holds sqlx's table: a count, 0 or 1.
pub(super) const SQLITE_HAS_TABLE: &str =
    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";

/// The migrations applied, as `version, checksum` (see [`Migrations::not_in`]).
pub(super) const APPLIED: &str = "SELECT version, checksum FROM _sqlx_migrations WHERE success";

/// Where a development build may read its migrations from instead (see [`Migrations::from_env`]).
pub const MIGRATIONS_DIR_VAR: &str = "BATON_MIGRATIONS_DIR";

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// One migration, as reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationInfo {
    pub version: i64,
    pub description: String,
}

impl std::fmt::Display for MigrationInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.description)
    }
}

/// The migrations of both back ends.
#[derive(Debug)]
pub struct Migrations {
    sqlite: Migrator,
    postgres: Migrator,
    /// `None`: the ones built into the binary.
    dir: Option<PathBuf>,
}

impl Migrations {
    /// The migrations built into the binary.
    pub fn built_in() -> Migrations {
        Migrations {
            sqlite: tolerant(SQLITE.iter().cloned().collect()),
            postgres: tolerant(POSTGRES.iter().cloned().collect()),
            dir: None,
        }
    }

    /// Those of `dir` (`dir/sqlite/`, `dir/postgres/`, as in the repository), read now: for
    /// trying a migration without a rebuild, and for the tests that upgrade to a build with
    /// one more migration. Never needed in production.
    pub async fn from_dir(dir: &Path) -> Result<Migrations, DbError> {
        let read = |backend: &str| {
            let path = dir.join(backend);
            async move {
                Migrator::new(path.as_path())
                    .await
                    .map(|migrator| tolerant(migrator.iter().cloned().collect()))
                    .map_err(|err| {
                        DbError::Migrate(format!(
                            "cannot read the migrations in {} ({MIGRATIONS_DIR_VAR}): {err}",
                            path.display()
                        ))
                    })
            }
        };
        Ok(Migrations {
            sqlite: read("sqlite").await?,
            postgres: read("postgres").await?,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// [`Migrations::from_dir`] when `BATON_MIGRATIONS_DIR` is set, else the built-in ones.
    /// Read once, at start-up.
    pub async fn from_env() -> Result<Migrations, DbError> {
        match std::env::var_os(MIGRATIONS_DIR_VAR) {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                tracing::warn!(
                    dir = %dir.display(),
                    "migrations read from {MIGRATIONS_DIR_VAR}, not the ones built into this binary"
                );
                Migrations::from_dir(&dir).await
            }
            _ => Ok(Migrations::built_in()),
        }
    }

    /// Where they come from, for messages.
    pub fn source(&self) -> Cow<'static, str> {
        match &self.dir {
            None => "built in".into(),
            Some(dir) => format!("from {}", dir.display()).into(),
        }
    }

    fn of(&self, backend: Backend) -> &Migrator {
        match backend {
            Backend::Sqlite => &self.sqlite,
            Backend::Postgres => &self.postgres,
        }
    }

    /// Every migration of `backend`, in order.
    pub fn all(&self, backend: Backend) -> Vec<MigrationInfo> {
        self.of(backend)
            .iter()
            .filter(|m| is_up(m))
            .map(info)
            .collect()
    }

    /// Applies what is pending, under the lock; returns what it applied. With nothing pending
    /// (most upgrades) no lock is taken: on SQLite it would hold up the other generation's
    /// writes for nothing.
    pub(super) async fn apply(
        &self,
        backend: Backend,
        conn: &mut AnyConnection,
    ) -> Result<Vec<MigrationInfo>, DbError> {
        if self.pending(backend, conn).await?.is_empty() {
            return Ok(Vec::new());
        }
        let migrator = self.of(backend);
        match backend {
            Backend::Sqlite => {
                let mut tx = conn.begin_with("BEGIN EXCLUSIVE").await?;
                let applied = run_locked(migrator, &mut tx).await?;
                tx.commit().await?;
                Ok(applied)
            }
            Backend::Postgres => {
                conn.lock().await.map_err(migrate_error)?;
                let applied = run_locked(migrator, &mut *conn).await;
                // The lock is the session's: if unlocking fails, closing the connection frees it.
                let unlocked = conn.unlock().await.map_err(migrate_error);
                let applied = applied?;
                unlocked?;
                Ok(applied)
            }
        }
    }

    /// What [`Migrations::apply`] would apply now, read without writing anything (see
    /// [`Migrations::not_in`]).
    pub(super) async fn pending(
        &self,
        backend: Backend,
        conn: &mut AnyConnection,
    ) -> Result<Vec<MigrationInfo>, DbError> {
        let has_table = match backend {
            Backend::Sqlite => sqlx::query_scalar::<_, i64>(SQLITE_HAS_TABLE),
            Backend::Postgres => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_catalog.pg_tables \
                 WHERE tablename = '_sqlx_migrations' AND schemaname = ANY (current_schemas(false))",
            ),
        }
        .fetch_one(&mut *conn)
        .await?
            > 0;
        let applied: Vec<(i64, Vec<u8>)> = if has_table {
            sqlx::query_as(APPLIED).fetch_all(&mut *conn).await?
        } else {
            Vec::new()
        };
        self.not_in(backend, &applied)
    }

    /// Those of `backend` that `applied` (the `version, checksum` of `_sqlx_migrations`'s
    /// successful rows) does not hold. One this binary knows with other contents is an error,
    /// as sqlx's own run would say.
    pub(super) fn not_in(
        &self,
        backend: Backend,
        applied: &[(i64, Vec<u8>)],
    ) -> Result<Vec<MigrationInfo>, DbError> {
        let mut pending = Vec::new();
        for migration in self.of(backend).iter().filter(|m| is_up(m)) {
            match applied
                .iter()
                .find(|(version, _)| *version == migration.version)
            {
                None => pending.push(info(migration)),
                Some((_, checksum)) if *checksum != *migration.checksum => {
                    return Err(DbError::Migrate(format!(
                        "migration {} was applied with other contents than this binary's; an \
                         applied migration must never change: put the change in a new one",
                        info(migration)
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(pending)
    }
}

/// A migrator that accepts migrations in the database it does not know (a newer release's).
fn tolerant(migrations: Vec<Migration>) -> Migrator {
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.set_ignore_missing(true);
    // The callers hold the lock (see `apply`).
    migrator.set_locking(false);
    migrator
}

/// Runs the pending migrations on `conn`, whose lock the caller holds.
async fn run_locked<'c, A>(migrator: &Migrator, conn: A) -> Result<Vec<MigrationInfo>, DbError>
where
    A: Acquire<'c, Database = sqlx::Any>,
{
    let mut conn = conn.acquire().await?;
    conn.ensure_migrations_table(TABLE)
        .await
        .map_err(migrate_error)?;
    let applied: Vec<i64> = conn
        .list_applied_migrations(TABLE)
        .await
        .map_err(migrate_error)?
        .into_iter()
        .map(|m| m.version)
        .collect();
    let pending: Vec<MigrationInfo> = migrator
        .iter()
        .filter(|m| is_up(m) && !applied.contains(&m.version))
        .map(info)
        .collect();
    migrator.run(&mut *conn).await.map_err(migrate_error)?;
    Ok(pending)
}

fn is_up(migration: &Migration) -> bool {
    !migration.migration_type.is_down_migration()
}

fn info(migration: &Migration) -> MigrationInfo {
    MigrationInfo {
        version: migration.version,
        description: migration.description.to_string(),
    }
}

fn migrate_error(err: sqlx::migrate::MigrateError) -> DbError {
    DbError::Migrate(err.to_string())
}
