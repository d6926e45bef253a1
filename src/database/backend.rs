//! Which database a URL names, and what each back end needs so that two generations can share
//! it: the connect options, and the statements every new connection runs.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::AnyConnection;
use sqlx::AssertSqlSafe;
use sqlx::any::AnyConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::error::DbError;
use crate::settings::SecretUrl;

/// The back ends this build speaks; the URL's scheme picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &SecretUrl) -> Result<Backend, DbError> {
        match url.scheme().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(DbError::BadUrl {
                url: url.redacted(),
                reason: format!("unsupported scheme {other:?}; use sqlite:// or postgres://"),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Whether opening a SQLite database may create its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    /// At start and `baton migrate`: the file and its directory are made if missing.
    IfMissing,
    /// At a reload: a database that does not exist yet is an error, not an empty new file.
    Never,
}

/// How to open connections to `url`. For SQLite with [`Create::IfMissing`], the file is created
/// on first use (unless the URL says `mode=` itself) and its directory now.
pub(super) fn connect_options(
    url: &SecretUrl,
    backend: Backend,
    create: Create,
) -> Result<AnyConnectOptions, DbError> {
    let bad = |reason: String| DbError::BadUrl {
        url: url.redacted(),
        reason,
    };
    let mut parsed = url::Url::parse(url.expose()).map_err(|err| bad(err.to_string()))?;
    if backend == Backend::Sqlite {
        if !parsed.query_pairs().any(|(key, _)| key == "mode") {
            let mode = match create {
                Create::IfMissing => "rwc",
                Create::Never => "rw",
            };
            parsed.query_pairs_mut().append_pair("mode", mode);
        }
        let options =
            SqliteConnectOptions::from_str(parsed.as_str()).map_err(|err| bad(err.to_string()))?;
        if create == Create::IfMissing {
            create_parent(options.get_filename())?;
        }
    }
    AnyConnectOptions::from_url(&parsed).map_err(|err| bad(err.to_string()))
}

/// The file a SQLite URL names, and whether opening may create it, when the URL asks for
/// nothing but that (no parameter other than `mode=rw` or `rwc`, not in memory): what
/// `direct` opens as sqlx would. `create` applies when the URL has no `mode`.
pub(super) fn plain_sqlite_file(url: &SecretUrl, create: Create) -> Option<(PathBuf, Create)> {
    let parsed = url::Url::parse(url.expose()).ok()?;
    let mut create = create;
    for (key, value) in parsed.query_pairs() {
        create = match (&*key, &*value) {
            ("mode", "rw") => Create::Never,
            ("mode", "rwc") => Create::IfMissing,
            _ => return None,
        };
    }
    let options = SqliteConnectOptions::from_str(url.expose()).ok()?;
    let file = options.get_filename();
    // `sqlite::memory:` becomes a shared-cache `file:` name.
    if file.as_os_str().is_empty() || file.to_str().is_some_and(|f| f.starts_with("file:")) {
        return None;
    }
    Some((file.to_path_buf(), create))
}

/// Whether `url` names a SQLite file that does not exist (yet).
pub(super) fn sqlite_file_missing(url: &SecretUrl) -> Result<bool, DbError> {
    if Backend::of(url)? != Backend::Sqlite {
        return Ok(false);
    }
    let options = SqliteConnectOptions::from_str(url.expose()).map_err(|err| DbError::BadUrl {
        url: url.redacted(),
        reason: err.to_string(),
    })?;
    Ok(!options.get_filename().exists())
}

fn create_parent(file: &Path) -> Result<(), DbError> {
    let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|err| {
        DbError::Setup(format!(
            "cannot create {} for the SQLite database {}: {err}; create it, or point \
             database.url elsewhere",
            dir.display(),
            file.display()
        ))
    })
}

/// What every new connection runs before its first use.
pub(super) fn session_statements(
    backend: Backend,
    statement_timeout: Duration,
    application_name: &str,
) -> Vec<String> {
    let millis = statement_timeout.as_millis();
    match backend {
        // WAL (set once per file, see `prepare_file`) lets readers go on while one process
        // writes; the busy timeout makes a writer wait for the other process's write instead
        // of failing with "database is locked". NORMAL is durable against a crash of the
        // process, and loses at most the last commits (never the file) on a power cut.
        Backend::Sqlite => vec![
            format!("PRAGMA busy_timeout = {millis}"),
            "PRAGMA synchronous = NORMAL".to_owned(),
            "PRAGMA foreign_keys = ON".to_owned(),
            // After the log restarts (see `checkpoint`), a file left larger than this is cut.
            "PRAGMA journal_size_limit = 67108864".to_owned(),
        ],
        Backend::Postgres => vec![
            format!("SET statement_timeout = {millis}"),
            // Which process holds which connection, in pg_stat_activity.
            format!(
                "SET application_name = '{}'",
                application_name.replace('\'', "''")
            ),
        ],
    }
}

/// Runs the session statements on `conn`, as one batch: one round trip (to SQLite's thread or
/// to the server) instead of one per statement, and none of them kept as a prepared statement.
pub(super) async fn start_session(
    conn: &mut AnyConnection,
    statements: &[String],
) -> Result<(), sqlx::Error> {
    if statements.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(AssertSqlSafe(statements.join(";\n")))
        .execute(conn)
        .await?;
    Ok(())
}

/// Opens one connection outside any pool, with the real reason when it fails (a pool only says
/// that it timed out), and starts its session.
pub(super) async fn connect_direct(
    options: &AnyConnectOptions,
    url: &SecretUrl,
    timeout: Duration,
    statements: &[String],
) -> Result<AnyConnection, DbError> {
    let failed = |reason: String| DbError::Connect {
        url: url.redacted(),
        reason,
    };
    let connect = async {
        let mut conn = AnyConnection::connect_with(options).await?;
        start_session(&mut conn, statements).await?;
        Ok::<_, sqlx::Error>(conn)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(failed(err.to_string())),
        Err(_) => Err(failed(format!(
            "no answer within {} (database.acquire_timeout)",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Switches the file to WAL mode; answers the mode in force (see [`is_wal`]).
pub(super) const SET_WAL: &str = "PRAGMA journal_mode = WAL";

/// Whether [`SET_WAL`]'s answer says the file is in WAL mode.
pub(super) fn is_wal(mode: &str) -> bool {
    mode.eq_ignore_ascii_case("wal")
}

/// Once per database file: WAL mode, which is a property of the file and is kept. Without it
/// a reader blocks a writer, and the two generations of an upgrade would block each other.
pub(super) async fn prepare_file(
    conn: &mut AnyConnection,
    backend: Backend,
) -> Result<(), DbError> {
    if backend != Backend::Sqlite {
        return Ok(());
    }
    let mode: String = sqlx::query_scalar(SET_WAL).fetch_one(&mut *conn).await?;
    if !is_wal(&mode) {
        return Err(DbError::Setup(format!(
            "SQLite could not switch the database to WAL mode (it stays in {mode:?} mode); \
             keep the file on a local file system"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(url: &str) -> Option<(PathBuf, Create)> {
        plain_sqlite_file(&SecretUrl::new(url), Create::IfMissing)
    }

    #[test]
    fn a_plain_file_url_names_its_file_and_its_mode() {
        assert_eq!(
            plain("sqlite://data/baton.db"),
            Some(("data/baton.db".into(), Create::IfMissing))
        );
        assert_eq!(
            plain("sqlite:///var/lib/baton/baton.db?mode=rw"),
            Some(("/var/lib/baton/baton.db".into(), Create::Never))
        );
        assert_eq!(
            plain("sqlite://data/baton.db?mode=rwc"),
            Some(("data/baton.db".into(), Create::IfMissing))
        );
    }

    #[test]
    fn anything_more_than_a_file_is_not_plain() {
        for url in [
            "sqlite::memory:",
            "sqlite://data/baton.db?mode=ro",
            "sqlite://data/baton.db?mode=memory",
            "sqlite://data/baton.db?cache=shared",
            "sqlite://data/baton.db?immutable=true",
            "sqlite://data/baton.db?vfs=unix-dotfile",
        ] {
            assert_eq!(plain(url), None, "{url}");
        }
    }
}
