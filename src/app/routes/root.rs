//! `/` (who is serving), `/healthz` (alive) and `/readyz` (should get traffic).

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};

use crate::app::error::AppError;
use crate::app::extract::CurrentSettings;
use crate::app::state::AppState;
use crate::lifecycle::Phase;

/// `<greeting> (version <v>, pid <pid>, generation <g>)`: which build, process and binary
/// generation answered, so an upgrade is visible from `curl`.
pub(crate) async fn greet(
    State(state): State<AppState>,
    CurrentSettings(settings, _): CurrentSettings,
) -> String {
    let process = state.process();
    format!(
        "{} (version {}, pid {}, generation {})\n",
        settings.app.greeting,
        crate::version(),
        process.pid(),
        process.generation()
    )
}

/// Liveness: the process answers. Stays 200 while draining, so an orchestrator does not kill a
/// process that is finishing its requests.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 503 before serving starts, from the moment the drain begins, and while the
/// database does not answer, so load balancers send the work elsewhere. (`/healthz` stays 200
/// through a database outage: restarting this process would not bring the database back.)
/// Why the database does not answer is in the log and `/-/status`, not on the public listener.
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.process().phase() {
        // An upgrade in progress still serves; the new process takes over only when ready.
        Phase::Serving | Phase::Upgrading if state.db().problem().is_some() => {
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
        }
        Phase::Serving | Phase::Upgrading => (StatusCode::OK, "ready\n"),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
    }
}

/// Unknown routes get the same JSON error shape as the API.
pub(crate) async fn not_found(method: Method, uri: Uri) -> AppError {
    AppError::NotFound(format!("no route for {method} {}", uri.path()))
}
