//! `baton serve`: loads the settings, sets up logging and the runtime, builds the application
//! and hands it to the lifecycle. The build steps that can fail all run before the process
//! accepts a connection, and a failure is reported to a waiting parent (upgrade) as well as
//! to the caller.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::app::{self, AppState};
use crate::config_watch::{self, WatchError};
use crate::lifecycle::{self, Commands, Exit, ProcessState, Routers, Startup};
use crate::settings::{ConfigSource, Settings, SettingsError, SettingsStore};
use crate::telemetry::{self, TelemetryError};

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
}

/// Runs the server until it is shut down or replaced, or the supervisor when asked for
/// (`supervise`, `lifecycle.supervise`) or when running as PID 1. Returns the exit code.
/// `startup` must have been captured before any thread was started.
pub fn serve(
    mut startup: Startup,
    config: ConfigSource,
    supervise: bool,
) -> Result<i32, ServeError> {
    let result = load(&config).and_then(|(settings, telemetry)| {
        if lifecycle::should_supervise(&startup, supervise, &settings) {
            // One thread: the supervisor only waits on signals, pipes and children.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Runtime)?;
            return Ok(runtime.block_on(lifecycle::supervise(&mut startup, config, settings))?);
        }
        let runtime = build_runtime(&settings)?;
        let outcome = runtime.block_on(run(&mut startup, config, settings, telemetry));
        // Connections still open after the drain's deadline were already counted and cut.
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        outcome.map(|_| 0)
    });
    if let Err(err) = &result {
        startup.report_failure(&err.to_string());
    }
    result
}

fn load(config: &ConfigSource) -> Result<(Settings, telemetry::Telemetry), ServeError> {
    let settings = Settings::load(config)?;
    let telemetry = telemetry::init(&settings.log)?;
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
    let store = Arc::new(SettingsStore::new(config, settings));
    let process = ProcessState::new(startup.generation(), crate::version());
    let reload = store.current().reload.clone();
    if reload.watch {
        // Until the drain starts: a draining process ignores reloads; its successor watches.
        config_watch::spawn(
            store.source(),
            reload.debounce,
            commands.sender(),
            process.drain_started(),
        )?;
    }
    let state = AppState::new(store.clone(), process.clone());
    let routers = Routers {
        http: app::router(state.clone()),
        admin: app::admin_router(state),
    };
    self_check(&routers).await?;
    Ok(lifecycle::run(startup, commands, store, telemetry, process, routers).await?)
}

/// One request through the whole stack before the process says it is ready: a build that
/// cannot answer its own health check must not replace one that can.
async fn self_check(routers: &Routers) -> Result<(), ServeError> {
    let request = Request::get("/healthz")
        .body(Body::empty())
        .map_err(|e| ServeError::SelfCheck(e.to_string()))?;
    let response = routers
        .http
        .clone()
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
