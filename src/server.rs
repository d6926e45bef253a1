//! `baton serve`: loads the settings, sets up logging and the runtime, opens the database
//! (migrations included), builds the application and hands it to the lifecycle. The build steps
//! that can fail all run before the process accepts a connection, and a failure is reported to
//! a waiting parent (upgrade) as well as to the caller. The database follows the lifecycle from
//! here: reloads through a reload participant, drains through the process state.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::app::{self, AppState};
use crate::config_watch::{self, WatchError};
use crate::database::{Db, DbError, Migrations};
use crate::lifecycle::{self, Commands, Exit, HttpService, ProcessState, Routers, Startup, Step};
use crate::settings::{ConfigSource, Settings, SettingsError, SettingsStore};
use crate::telemetry::{self, TelemetryError};
use crate::tls::{Tls, TlsError};

/// How long the exit waits for the database connections to close cleanly.
const CLOSE_DATABASE_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("self-check failed: {0}")]
    SelfCheck(String),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error("supervisor: {0}")]
    Supervisor(#[from] lifecycle::SupervisorError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Runs the server until it is shut down or replaced, or the supervisor when asked for
/// (`supervise`, `lifecycle.supervise`) or when running as PID 1. Returns the exit code.
/// `startup` must have been captured before any thread was started.
pub fn serve(
    mut startup: Startup,
    config: ConfigSource,
    supervise: bool,
) -> Result<i32, ServeError> {
    let result = load(&mut startup, &config).and_then(|(settings, telemetry)| {
        // Before anything opens an fd: the supervisor's limit is also its workers'.
        lifecycle::raise_fd_limit();
        if lifecycle::should_supervise(&startup, supervise, &settings) {
            // One thread: the supervisor only waits on signals, pipes and children.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Runtime)?;
            return Ok(runtime.block_on(lifecycle::supervise(&mut startup, config, settings))?);
        }
        let runtime = build_runtime(&settings)?;
        startup.lap(Step::Runtime);
        let outcome = runtime.block_on(run(&mut startup, config, settings, telemetry.clone()));
        // Drained: what is left of this generation's spans goes out before it exits.
        telemetry.flush();
        // Connections still open after the drain's deadline were already counted and cut.
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        outcome.map(|_| 0)
    });
    if let Err(err) = &result {
        startup.report_failure(&err.to_string());
    }
    result
}

fn load(
    startup: &mut Startup,
    config: &ConfigSource,
) -> Result<(Settings, telemetry::Telemetry), ServeError> {
    let settings = Settings::load(config)?;
    startup.lap(Step::Config);
    let telemetry = telemetry::init(&settings.log, startup.generation())?;
    startup.lap(Step::Logging);
    Ok((settings, telemetry))
}

fn build_runtime(settings: &Settings) -> Result<tokio::runtime::Runtime, ServeError> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if settings.server.worker_threads > 0 {
        runtime.worker_threads(settings.server.worker_threads);
    }
    runtime.build().map_err(ServeError::Runtime)
}

async fn run(
    startup: &mut Startup,
    config: ConfigSource,
    settings: Settings,
    telemetry: telemetry::Telemetry,
) -> Result<Exit, ServeError> {
    // First thing once the runtime exists: until now SIGUSR1/SIGUSR2 would kill the process.
    let commands = Commands::install().map_err(ServeError::Signals)?;
    tokio::spawn(telemetry.report_suppressed());
    let store = Arc::new(SettingsStore::new(config, settings));
    let process = ProcessState::new(startup.generation(), crate::version());
    // Before the watch: a missing certificate is reported as such, not as a directory that
    // cannot be watched.
    let tls = Tls::build(&store, startup.inherited())?;
    if let Some(tls) = &tls {
        store.add_participant(tls.clone());
    }
    let reload = store.current().reload.clone();
    if reload.watch {
        // Until the process retires: a draining one ignores reloads and its successor watches,
        // but one standing by may serve again (a rollback) and must still watch then. The TLS
        // files too: a renewed certificate is a reload like a changed setting.
        let settings = store.current();
        let files: Vec<_> = [&settings.tls.cert, &settings.tls.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        config_watch::spawn(
            store.source(),
            &files,
            reload.debounce,
            commands.sender(),
            process.retired(),
        )?;
    }
    startup.lap(Step::Setup);
    // Migrations run here, before "ready": a failing one fails this generation's start, so at
    // an upgrade the previous generation keeps serving and `baton upgrade` says why.
    let db = Db::open(&store.current().database, Migrations::from_env().await?).await?;
    store.add_participant(db.reload_participant());
    db.spawn_background(process.retired());
    tokio::spawn(follow_drains(process.clone(), db.clone()));
    startup.lap(Step::Database);
    let state = AppState::new(store.clone(), process.clone(), db.clone(), tls.clone());
    let carry = app::AppCarry::new(state.clone(), startup.inherited());
    let http = app::router(state.clone());
    let admin = app::admin_router(state);
    startup.lap(Step::Router);
    self_check(http.clone()).await?;
    startup.lap(Step::SelfCheck);
    let routers = Routers {
        http: HttpService::new(http),
        admin: HttpService::new(admin),
        carry: Some(Arc::new(carry)),
        http_acceptor: tls.map(|tls| tls.acceptor()),
    };
    let exit = lifecycle::run(startup, commands, store, telemetry, process, routers).await?;
    // Drained: requests are done or were cut, so this only waits for connections that are on
    // their way back; bounded all the same, as exiting must not depend on it.
    if tokio::time::timeout(CLOSE_DATABASE_WITHIN, db.close())
        .await
        .is_err()
    {
        tracing::warn!("database connections still in use at exit; closed with the process");
    }
    Ok(exit)
}

/// One request through the whole stack before the process says it is ready: a build that
/// cannot answer its own health check must not replace one that can.
async fn self_check(http: app::Public) -> Result<(), ServeError> {
    let request = Request::get("/healthz")
        .body(Body::empty())
        .map_err(|e| ServeError::SelfCheck(e.to_string()))?;
    let response = http
        .oneshot(request)
        .await
        .map_err(|e| ServeError::SelfCheck(e.to_string()))?;
    match response.status() {
        StatusCode::OK => Ok(()),
        status => Err(ServeError::SelfCheck(format!(
            "GET /healthz answered {status}"
        ))),
    }
}

/// While the process drains, the database keeps no idle connection (the next generation needs
/// them); if the process serves again (its successor died in its probation), it keeps them
/// again. Ends when the process retires.
async fn follow_drains(process: ProcessState, db: Db) {
    loop {
        process.drain_started().await;
        db.begin_drain().await;
        tokio::select! {
            () = process.retired() => return,
            () = serving_again(&process) => db.end_drain(),
        }
    }
}

/// Resolves once the process no longer drains. The lifecycle has no event for a rollback, so
/// this looks every 100 ms; it runs only while a process stands by.
async fn serving_again(process: &ProcessState) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    while process.is_draining() {
        ticks.tick().await;
    }
}
