//! The database through upgrades, reloads, stops and drains, driven on the real binary (issue
//! 10). Every scenario runs on SQLite (the default: a file in the deployment's `data/`), and
//! again on PostgreSQL when `BATON_TEST_DATABASE_URL` names a server the tests may create
//! databases on (`scripts/postgres-tests.sh` starts a private one and sets it); each PostgreSQL
//! test gets a database of its own, dropped at the end. The test names say which: `sqlite::...`,
//! `postgres::...`.
//!
//! What "no item lost" means here: the write load POSTs a unique name per request and keeps the
//! body of every 201; afterwards every acknowledged item must be readable with its id, no name
//! twice, and nothing else stored.
//!
//! A database that goes down is tested on PostgreSQL only, through a proxy the test cuts: an
//! embedded SQLite file has no "down" a process could recover from.
//!
//! Schema changes need a second build with one more migration. The tests get it by pointing
//! `BATON_MIGRATIONS_DIR` (read at start-up instead of the built-in migrations) at a copy of
//! `migrations/` and adding a file there before `baton upgrade`: the new generation is the same
//! code with one more migration. That proves what can break in an expand/contract change (the
//! migration runs in the new generation under the lock while the old one writes, the old code
//! keeps working on the expanded schema, a failed migration leaves nothing behind), though not
//! a new release's own use of the column, which starts only once its migration is in.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadgen::{Load, LoadConfig, Mode, Report};
use serde::Deserialize;
use sqlx::Connection;
use support::{CLI_DEADLINE, Config, DEADLINE, POLL, REQUEST_TIMEOUT, Server, wait_until};

/// Concurrent writers of the load, as the issue states it.
const WRITERS: usize = 64;
/// Concurrent readers next to them.
const READERS: usize = 16;
/// Upgrades under load per scenario.
const UPGRADES: usize = 10;
/// Pool size of the test deployments (the default).
const POOL_SIZE: u32 = 10;

// ---------------------------------------------------------------------------------------------
// The scenarios, once per back end
// ---------------------------------------------------------------------------------------------

/// Runs each scenario on SQLite, and on PostgreSQL when there is one.
macro_rules! on_both_back_ends {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::Store::sqlite());
            })+
        }
        mod postgres {
            $(#[test]
            fn $scenario() {
                if let Some(store) = super::Store::postgres(stringify!($scenario)) {
                    super::$scenario(store);
                }
            })+
        }
    };
}

on_both_back_ends!(
    upgrades_under_write_load_lose_no_item,
    a_draining_generation_closes_its_connections,
    reloads_and_a_restart_keep_every_item,
    an_expanding_migration_runs_while_the_old_generation_writes,
    a_failing_migration_changes_nothing,
    a_reload_to_a_bad_database_is_rejected_and_the_pool_stays,
    migrate_check_lists_what_a_start_would_apply,
);

/// Ten upgrades while 64 connections POST: no request fails (no "database is locked", no
/// lost connection), and every acknowledged item is stored once.
fn upgrades_under_write_load_lose_no_item(store: Store) {
    // `baton upgrade` waits through each probation, which this test is not about.
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..store.config()
    });
    let runtime = runtime();
    let peak = store.watch_connections();
    let load = start_writes(&runtime, &server, "up", WRITERS);
    let reads = start_reads(&runtime, &server, READERS);
    for _ in 0..UPGRADES {
        let (old, new) = server.upgrade();
        assert_ne!(old, new);
        // Writes go on through the new generation before the next upgrade.
        let_run(&load, 100);
    }
    let report = stop(&runtime, load);
    assert_eq!(report.failed(), 0, "failed writes:\n{report}");
    let read_report = stop(&runtime, reads);
    assert_eq!(read_report.failed(), 0, "failed reads:\n{read_report}");
    let acked = acknowledged(&report);
    assert_stored_exactly(&server, &acked);
    if store.is_sqlite() {
        // Steady reads and writes must not let SQLite's log grow without bound: it starts
        // over every second, and is cut back to 64 MiB.
        let wal = std::fs::metadata(server.root().join("data/baton.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(wal <= 64 << 20, "the write-ahead log grew to {wal} bytes");
    }
    if let Some(peak) = peak.map(ConnectionWatch::stop) {
        eprintln!(
            "peak PostgreSQL connections over {UPGRADES} upgrades: {peak} (pool size {POOL_SIZE})"
        );
        // One generation's pool, plus what the other still holds in flight at the handover.
        assert!(peak <= 2 * u64::from(POOL_SIZE) + 2, "peak {peak}");
    }
    let metrics = server.metrics();
    assert_eq!(
        support::metric_value(&metrics, "baton_database_up"),
        Some(1.0),
        "{metrics}"
    );
}

/// A generation that hands over closes its database connections as soon as it drains, while it
/// is still alive and standing by for its successor's probation.
fn a_draining_generation_closes_its_connections(store: Store) {
    let config = Config {
        probation: "10s".into(),
        ..store.config()
    };
    let server = Server::start(&config);
    let runtime = runtime();
    let load = start_writes(&runtime, &server, "drain", 16);
    let old = server.current_pid();
    wait_until(DEADLINE, "the old generation to hold connections", || {
        store.connections_of(&server, old) > 0
    });
    // A signal, not `baton upgrade`, which reports only once the probation has passed.
    server.signal(nix::sys::signal::Signal::SIGUSR2);
    let new = server.wait_pid_file_change(old);
    let_run(&load, 100);
    wait_until(
        DEADLINE,
        "the draining generation to close its database connections",
        || {
            let open = store.connections_of(&server, old);
            // Gone, the process would hold nothing: that proves nothing.
            assert!(
                !server.gone(old),
                "the old generation exited with {open} connections still open at the last look"
            );
            open == 0
        },
    );
    assert!(store.connections_of(&server, new) > 0);
    let report = stop(&runtime, load);
    assert_eq!(report.failed(), 0, "{report}");
    assert_stored_exactly(&server, &acknowledged(&report));
}

/// Reloads that replace the pool under write load lose nothing; `baton stop` and a new start
/// keep every item.
fn reloads_and_a_restart_keep_every_item(store: Store) {
    let mut config = store.config();
    let server = Server::start(&config);
    let runtime = runtime();
    let load = start_writes(&runtime, &server, "reload", WRITERS);
    for size in [4, 8, 3, 10, 6] {
        config.database_pool_size = size;
        server.write_config(&config.toml());
        let out = server.run_cli(&["reload"]);
        assert_eq!(out.code, Some(0), "{out}\nlog:\n{}", server.log());
        assert!(out.stdout.starts_with("reloaded"), "{out}");
        let max = server.status()["database"]["pool"]["max"].as_u64();
        let expected = u64::from(size) + u64::from(store.is_sqlite());
        assert_eq!(max, Some(expected), "the new pool is in force");
        let_run(&load, 100);
    }
    let report = stop(&runtime, load);
    assert_eq!(report.failed(), 0, "{report}");
    let acked = acknowledged(&report);
    assert_stored_exactly(&server, &acked);

    let out = server.run_cli(&["stop"]);
    assert_eq!(out.code, Some(0), "{out}");
    let mut restarted = server.command(&server.bin());
    restarted.arg("serve").stdin(std::process::Stdio::null());
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(server.log_path())
        .expect("open the log");
    restarted
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log);
    // Reaped by the harness (a child of this process; killed with the deployment at the end).
    let _child = support::KillOnDrop(restarted.spawn().expect("start baton again"));
    let mut server = server;
    server.attach();
    assert_stored_exactly(&server, &acked);
}

/// Expand, as the README's rule says: the next release adds a column with a default. Its
/// migration runs in the new generation, under the lock, while the old generation keeps
/// writing, and both serve through the overlap. Then the previous release is put back (a
/// rollback): it starts on the expanded schema, which holds a migration it does not know.
fn an_expanding_migration_runs_while_the_old_generation_writes(store: Store) {
    let mut server = Server::prepare(&store.config());
    let migrations = copy_migrations(&server);
    server.spawn_with(|command| {
        command.env(baton::database::MIGRATIONS_DIR_VAR, &migrations);
    });
    let runtime = runtime();
    let load = start_writes(&runtime, &server, "expand", WRITERS);

    add_migration(
        &migrations,
        "0002_items_note.sql",
        "ALTER TABLE items ADD COLUMN note TEXT NOT NULL DEFAULT '';",
    );
    server.upgrade();
    let_run(&load, 200);
    assert!(
        server
            .log()
            .contains("migration applied migration=2 items note"),
        "the new generation applied it; log:\n{}",
        server.log()
    );
    assert_eq!(
        store.scalar(&server, "SELECT count(*) FROM items WHERE note <> ''"),
        Ok(0),
        "the column exists, with its default on every row"
    );

    // The previous release again: same code, without the migration.
    remove_migration(&migrations, "0002_items_note.sql");
    server.upgrade();
    let_run(&load, 200);
    let report = stop(&runtime, load);
    assert_eq!(report.failed(), 0, "{report}");
    assert_stored_exactly(&server, &acknowledged(&report));
    assert_eq!(
        store.scalar(&server, "SELECT count(*) FROM items WHERE note <> ''"),
        Ok(0),
        "rows written by the previous release on the expanded schema got the default"
    );
}

/// A migration that fails half-way is a failed upgrade: `baton upgrade` says why, the old
/// generation serves on, and nothing of the migration remains. The fixed release then goes
/// through.
fn a_failing_migration_changes_nothing(store: Store) {
    let mut server = Server::prepare(&store.config());
    let migrations = copy_migrations(&server);
    server.spawn_with(|command| {
        command.env(baton::database::MIGRATIONS_DIR_VAR, &migrations);
    });
    let old = server.current_pid();
    post_item(&server, "before");

    add_migration(
        &migrations,
        "0002_broken.sql",
        "ALTER TABLE items ADD COLUMN broken TEXT;\nINSERT INTO no_such_table VALUES (1);",
    );
    let out = server.run_cli(&["upgrade"]);
    assert_ne!(out.code, Some(0), "the upgrade must fail:\n{out}");
    assert!(
        out.stderr.contains("migration 2") && out.stderr.contains("no_such_table"),
        "baton upgrade names the migration and the error:\n{out}"
    );
    assert_eq!(server.current_pid(), old, "the old generation still serves");
    post_item(&server, "after");
    assert!(
        store
            .scalar(&server, "SELECT count(broken) FROM items")
            .is_err(),
        "the half-applied migration was rolled back"
    );
    assert_eq!(
        store.scalar(
            &server,
            "SELECT count(*) FROM _sqlx_migrations WHERE version = 2"
        ),
        Ok(0)
    );

    add_migration(
        &migrations,
        "0002_broken.sql",
        "ALTER TABLE items ADD COLUMN broken TEXT;",
    );
    let (_, new) = server.upgrade();
    assert_ne!(new, old);
    assert_eq!(
        store.scalar(&server, "SELECT count(broken) FROM items"),
        Ok(0)
    );
    post_item(&server, "fixed");
    let names: Vec<String> = all_items(&server).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["before", "after", "fixed"]);

    // An applied migration edited afterwards: refused, not silently skipped.
    add_migration(
        &migrations,
        "0002_broken.sql",
        "ALTER TABLE items ADD COLUMN broken INTEGER;",
    );
    let out = server.run_cli(&["upgrade"]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("other contents"), "{out}");
    assert_eq!(server.current_pid(), new);
}

/// A reload to a database that does not answer, or lacks a migration, is rejected with the
/// reason (password redacted); the pool in force keeps serving. A reload that only resizes the
/// pool applies.
fn a_reload_to_a_bad_database_is_rejected_and_the_pool_stays(store: Store) {
    let mut config = store.config();
    let server = Server::start(&config);
    post_item(&server, "a");

    let unreachable = "postgres://baton:pw-never-shown@127.0.0.1:1/nothing";
    let mut bad = config.clone();
    bad.database_url = Some(unreachable.to_owned());
    server.write_config(&bad.toml());
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("cannot connect to postgres://baton:[redacted]@127.0.0.1:1/nothing"),
        "{out}"
    );
    assert!(!out.stderr.contains("pw-never-shown"), "{out}");
    assert!(!server.log().contains("pw-never-shown"));
    post_item(&server, "b");

    // An SQLite file that does not exist: not created, rejected.
    bad.database_url = Some("sqlite://data/elsewhere.db".to_owned());
    server.write_config(&bad.toml());
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("sqlite://data/elsewhere.db"), "{out}");
    assert!(!server.root().join("data/elsewhere.db").exists());
    post_item(&server, "c");
    assert_eq!(server.status()["config_generation"], 1);

    config.database_pool_size = 3;
    server.write_config(&config.toml());
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    post_item(&server, "d");
    let names: Vec<String> = all_items(&server).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert_eq!(
        server.status()["database"]["pool"]["max"].as_u64(),
        Some(3 + u64::from(store.is_sqlite()))
    );
}

/// `baton migrate --check` lists what is pending and changes nothing; `baton migrate` applies
/// it; a start then has nothing left to do.
fn migrate_check_lists_what_a_start_would_apply(store: Store) {
    let server = Server::prepare(&store.config());
    let out = server.run_cli(&["migrate", "--check"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("would apply 1 migration:"), "{out}");
    assert!(out.stdout.contains("  1 items"), "{out}");
    if store.is_sqlite() {
        assert!(
            !server.root().join("data").exists(),
            "a check creates nothing"
        );
    }
    let out = server.run_cli(&["migrate"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("applied 1 migration:"), "{out}");
    let out = server.run_cli(&["migrate", "--check"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("up to date"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Scenarios of one back end
// ---------------------------------------------------------------------------------------------

/// The database disappears (a proxy in front of PostgreSQL is cut): `/readyz` says 503 within
/// seconds and `/healthz` stays 200; writes get 503 with `Retry-After`; when the database is
/// back, so is everything.
#[test]
fn postgres_outage_shows_in_readyz_not_healthz_and_passes() {
    let Some(store) = Store::postgres("outage") else {
        return;
    };
    let proxy = Proxy::start(store.postgres_addr());
    let config = Config {
        database_url: Some(store.url_via(proxy.addr)),
        database_acquire_timeout: "1s".into(),
        ..store.config()
    };
    let server = Server::start(&config);
    assert_eq!(server.get("/readyz").status, 200);
    post_item(&server, "before");

    proxy.cut();
    wait_until(
        DEADLINE,
        "/readyz to say the database is unreachable",
        || {
            let response = server.get("/readyz");
            response.status == 503 && response.body == "database unreachable\n"
        },
    );
    assert_eq!(server.get("/healthz").status, 200, "alive all the same");
    let status = server.status();
    assert_eq!(status["database"]["up"], false, "{status}");
    // Refused or cut off, as the pool met it: either way the reason is there.
    let problem = status["database"]["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("cannot connect") || problem.contains("unavailable"),
        "{problem}"
    );
    let refused = loadgen::post_json_blocking(
        server.http,
        "/api/items",
        r#"{"name":"during"}"#,
        REQUEST_TIMEOUT,
    )
    .expect("an answer");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));

    proxy.restore();
    wait_until(DEADLINE, "/readyz to be ready again", || {
        server.get("/readyz").status == 200
    });
    post_item(&server, "after");
    let names: Vec<String> = all_items(&server).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["before", "after"]);
}

/// The database URL's password never shows: not in `baton check`, not in the error of a
/// command that could not connect.
#[test]
fn the_database_password_is_never_shown() {
    let server = Server::prepare(&Config::default());
    let url = "postgres://baton:s3cret-pw@127.0.0.1:1/baton";
    for args in [&["check"][..], &["migrate", "--check"][..]] {
        let mut command = server.command(&server.bin());
        command
            .args(args)
            .env("BATON_DATABASE__URL", url)
            .env("BATON_DATABASE__ACQUIRE_TIMEOUT", "1s");
        let out = support::run(command, CLI_DEADLINE);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!all.contains("s3cret-pw"), "{out}");
        assert!(
            all.contains("postgres://baton:[redacted]@127.0.0.1:1/baton"),
            "{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Where the data lives
// ---------------------------------------------------------------------------------------------

/// The back end of one test.
struct Store {
    /// `None`: SQLite, the default URL (`data/baton.db` in the deployment).
    postgres: Option<PgDatabase>,
}

impl Store {
    fn sqlite() -> Store {
        Store { postgres: None }
    }

    /// A fresh database on the server of `BATON_TEST_DATABASE_URL`, or `None` (the test is
    /// skipped, with a line saying so) when it is not set.
    fn postgres(test: &str) -> Option<Store> {
        let Some(admin) = std::env::var("BATON_TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            eprintln!("{test}: skipped on PostgreSQL: BATON_TEST_DATABASE_URL is not set");
            return None;
        };
        Some(Store {
            postgres: Some(PgDatabase::create(&admin)),
        })
    }

    fn is_sqlite(&self) -> bool {
        self.postgres.is_none()
    }

    fn config(&self) -> Config {
        Config {
            database_url: self.postgres.as_ref().map(|db| db.url.clone()),
            database_pool_size: POOL_SIZE,
            ..Config::default()
        }
    }

    /// The URL the test itself uses to look into the database.
    fn inspect_url(&self, server: &Server) -> String {
        match &self.postgres {
            Some(db) => db.url.clone(),
            None => format!(
                "sqlite://{}?mode=ro",
                server.root().join("data/baton.db").display()
            ),
        }
    }

    /// One number from the database, or the error.
    fn scalar(&self, server: &Server, sql: &'static str) -> Result<i64, String> {
        let url = self.inspect_url(server);
        on_side_runtime(async move {
            let mut conn = sqlx::AnyConnection::connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            let value = sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string());
            let _ = conn.close().await;
            value
        })
    }

    /// Database connections `pid` holds: PostgreSQL sessions named after it, or SQLite's
    /// database file open in it.
    fn connections_of(&self, server: &Server, pid: u32) -> u64 {
        match &self.postgres {
            Some(db) => db.sessions(Some(pid)),
            None => {
                let file = server.root().join("data/baton.db");
                let file = std::fs::canonicalize(&file).unwrap_or(file);
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    return 0;
                };
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| *target == file)
                    .count() as u64
            }
        }
    }

    /// Samples every baton session of the database until stopped (PostgreSQL only).
    fn watch_connections(&self) -> Option<ConnectionWatch> {
        self.postgres
            .as_ref()
            .map(|db| ConnectionWatch::start(db.url.clone()))
    }

    fn postgres_addr(&self) -> SocketAddr {
        self.postgres.as_ref().expect("a PostgreSQL test").addr()
    }

    /// This test's database URL with the host and port of `addr` instead.
    fn url_via(&self, addr: SocketAddr) -> String {
        let db = self.postgres.as_ref().expect("a PostgreSQL test");
        let mut url = url::Url::parse(&db.url).expect("a valid URL");
        url.set_host(Some(&addr.ip().to_string()))
            .expect("an IP host");
        url.set_port(Some(addr.port())).expect("a port");
        url.to_string()
    }
}

/// A database of its own on the test server, dropped at the end.
struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin: &str) -> PgDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "baton_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut url = url::Url::parse(admin).expect("BATON_TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        let db = PgDatabase {
            admin: admin.to_owned(),
            name,
            url: url.to_string(),
        };
        db.admin_statement(&format!("CREATE DATABASE {}", db.name))
            .unwrap_or_else(|err| panic!("cannot create a test database on {admin}: {err}"));
        db
    }

    fn admin_statement(&self, sql: &str) -> Result<(), String> {
        let (admin, sql) = (self.admin.clone(), sql.to_owned());
        on_side_runtime(async move {
            let mut conn = sqlx::AnyConnection::connect(&admin)
                .await
                .map_err(|e| e.to_string())?;
            let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            let _ = conn.close().await;
            done
        })
    }

    /// Sessions of baton processes in this database; of `pid` only, if given.
    fn sessions(&self, pid: Option<u32>) -> u64 {
        let url = self.url.clone();
        let name = match pid {
            Some(pid) => format!("baton {pid}"),
            None => "baton %".to_owned(),
        };
        on_side_runtime(async move {
            let mut conn = sqlx::AnyConnection::connect(&url).await.ok()?;
            let count = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE $1",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .ok();
            let _ = conn.close().await;
            count
        })
        .and_then(|count| u64::try_from(count).ok())
        .unwrap_or(0)
    }

    fn addr(&self) -> SocketAddr {
        let url = url::Url::parse(&self.url).expect("a valid URL");
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(5432);
        format!("{host}:{port}")
            .parse()
            .expect("BATON_TEST_DATABASE_URL names an IP address and port")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // The server's own processes are gone by now (the Server drops first); FORCE ends any
        // session still open.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = self.admin_statement(&sql) {
            eprintln!("could not drop the test database {}: {err}", self.name);
        }
    }
}

/// Samples the number of baton sessions every 20 ms in a thread of its own.
struct ConnectionWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl ConnectionWatch {
    fn start(url: String) -> ConnectionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let db = PgDatabase {
                    admin: String::new(),
                    name: String::new(),
                    url,
                };
                let mut peak = 0;
                let end = Instant::now() + Duration::from_secs(300);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    peak = peak.max(db.sessions(None));
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Not a database of ours to drop.
                std::mem::forget(db);
                peak
            }
        });
        ConnectionWatch { stop, thread }
    }

    /// The peak.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watch thread")
    }
}

/// Runs `future` to completion on a runtime of its own, in a thread of its own (the tests that
/// drive a load are inside another runtime, which must not be blocked on from within).
fn on_side_runtime<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    sqlx::any::install_default_drivers();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async move {
                tokio::time::timeout(DEADLINE, future)
                    .await
                    .expect("the database answers in time")
            })
    })
    .join()
    .expect("the side thread")
}

// ---------------------------------------------------------------------------------------------
// Migrations a test adds
// ---------------------------------------------------------------------------------------------

/// Copies the repository's `migrations/` into the deployment; returns the copy.
fn copy_migrations(server: &Server) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let copy = server.root().join("migrations");
    for backend in ["sqlite", "postgres"] {
        std::fs::create_dir_all(copy.join(backend)).expect("create the migrations copy");
        for entry in std::fs::read_dir(source.join(backend)).expect("read migrations/") {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().expect("a file name");
            std::fs::copy(&path, copy.join(backend).join(name)).expect("copy a migration");
        }
    }
    copy
}

/// The same migration for both back ends.
fn add_migration(dir: &Path, name: &str, sql: &str) {
    for backend in ["sqlite", "postgres"] {
        std::fs::write(dir.join(backend).join(name), sql).expect("write a migration");
    }
}

fn remove_migration(dir: &Path, name: &str) {
    for backend in ["sqlite", "postgres"] {
        std::fs::remove_file(dir.join(backend).join(name)).expect("remove a migration");
    }
}

// ---------------------------------------------------------------------------------------------
// Writes and what became of them
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `connections` workers POSTing items named `<prefix>-<n>`, each name once; returns once
/// writes flow.
fn start_writes(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    prefix: &str,
    connections: usize,
) -> Load {
    let load = {
        let _inside = runtime.enter();
        loadgen::start(LoadConfig {
            connections,
            mode: Mode::KeepAlive,
            path: "/api/items".to_owned(),
            post_json: Some(format!(r#"{{"name":"{prefix}-{{n}}"}}"#)),
            keep_bodies: true,
            // Stopped by the test; this only bounds a test that panicked with the load running.
            max_duration: Duration::from_secs(300),
            request_timeout: REQUEST_TIMEOUT,
            ..LoadConfig::new(server.http)
        })
    };
    let_run(&load, 100);
    load
}

/// `connections` workers reading the first page of items; returns once reads flow.
fn start_reads(runtime: &tokio::runtime::Runtime, server: &Server, connections: usize) -> Load {
    let load = {
        let _inside = runtime.enter();
        loadgen::start(LoadConfig {
            connections,
            mode: Mode::KeepAlive,
            path: "/api/items?limit=10".to_owned(),
            max_duration: Duration::from_secs(300),
            request_timeout: REQUEST_TIMEOUT,
            ..LoadConfig::new(server.http)
        })
    };
    let_run(&load, 100);
    load
}

/// Waits until the load has `more` successful requests beyond what it had.
fn let_run(load: &Load, more: u64) {
    let target = load.snapshot().ok + more;
    let end = Instant::now() + DEADLINE;
    while load.snapshot().ok < target {
        assert!(
            Instant::now() < end,
            "the writes made no progress: {:?}",
            load.snapshot()
        );
        std::thread::sleep(POLL);
    }
}

fn stop(runtime: &tokio::runtime::Runtime, load: Load) -> Report {
    let report = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, load.stop())
            .await
            .expect("the load stops in time")
    });
    eprintln!("{report}");
    report
}

/// The items the server acknowledged (201 bodies).
fn acknowledged(report: &Report) -> Vec<Item> {
    report
        .bodies
        .iter()
        .map(|body| {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("a 201 body {body:?}: {e}"))
        })
        .collect()
}

fn post_item(server: &Server, name: &str) -> Item {
    let response = loadgen::post_json_blocking(
        server.http,
        "/api/items",
        &serde_json::json!({ "name": name }).to_string(),
        REQUEST_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("POST {name}: {e}; log:\n{}", server.log()));
    assert_eq!(response.status, 201, "POST {name}: {}", response.body);
    serde_json::from_str(&response.body).expect("an item")
}

/// Every item, page by page.
fn all_items(server: &Server) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    loop {
        let after = items.last().map_or(0, |item| item.id);
        let response = server.get(&format!("/api/items?after={after}&limit=1000"));
        assert_eq!(response.status, 200, "{}", response.body);
        let page: Vec<Item> = serde_json::from_str(&response.body).expect("a page of items");
        let full = page.len() == 1000;
        items.extend(page);
        if !full {
            return items;
        }
        assert!(items.len() < 10_000_000, "paging never ends");
    }
}

/// The store holds exactly the acknowledged items: each with the id it was acknowledged with,
/// none twice, nothing else.
fn assert_stored_exactly(server: &Server, acked: &[Item]) {
    let stored = all_items(server);
    let ids: HashSet<u64> = stored.iter().map(|item| item.id).collect();
    let names: HashSet<&str> = stored.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "an id listed twice");
    assert_eq!(names.len(), stored.len(), "a name stored twice");
    let by_name: BTreeMap<&str, u64> = stored
        .iter()
        .map(|item| (item.name.as_str(), item.id))
        .collect();
    let acked_names: HashSet<&str> = acked.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(acked_names.len(), acked.len(), "a name acknowledged twice");
    let missing: Vec<&Item> = acked
        .iter()
        .filter(|item| by_name.get(item.name.as_str()) != Some(&item.id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored (first 10): {missing:?}"
    );
    let extra: Vec<&Item> = stored
        .iter()
        .filter(|item| !acked_names.contains(item.name.as_str()))
        .take(10)
        .collect();
    assert!(extra.is_empty(), "stored but never acknowledged: {extra:?}");
    eprintln!("{} items acknowledged, all stored once", acked.len());
}

// ---------------------------------------------------------------------------------------------
// A proxy that plays "the database is down"
// ---------------------------------------------------------------------------------------------

/// Forwards TCP connections from a loopback port to `target`, until cut: then every forwarded
/// connection is closed and new ones are closed at once, until restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped at each cut: forwarders of an earlier epoch end.
    epoch: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let runtime = runtime();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let up = Arc::new(AtomicBool::new(true));
        let epoch = Arc::new(AtomicU64::new(0));
        runtime.spawn({
            let (up, epoch) = (Arc::clone(&up), Arc::clone(&epoch));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let (up, epoch) = (Arc::clone(&up), Arc::clone(&epoch));
                    tokio::spawn(forward(client, target, up, epoch));
                }
            }
        });
        Proxy {
            addr,
            up,
            epoch,
            _runtime: runtime,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn forward(
    mut client: tokio::net::TcpStream,
    target: SocketAddr,
    up: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
) {
    let born = epoch.load(Ordering::SeqCst);
    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    let cut = async {
        while up.load(Ordering::SeqCst) && epoch.load(Ordering::SeqCst) == born {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = copy => {}
        () = cut => {}
    }
}
