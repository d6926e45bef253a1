//! `/` (who is serving), `/healthz` (alive) and `/readyz` (should get traffic).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::app::error::AppError;
use crate::app::extract::CurrentSettings;
use crate::app::state::AppState;
use crate::lifecycle::Phase;

/// `<greeting> (version <v>, pid <pid>, generation <g>)`: which build, process and binary
/// generation answered, so an upgrade is visible from `curl`.
pub(crate) async fn greet(
    State(state): State<AppState>,
    CurrentSettings(settings, config_generation): CurrentSettings,
) -> Response {
    let body = state.greeting().get(config_generation, || {
        let process = state.process();
        format!(
            "{} (version {}, pid {}, generation {})\n",
            settings.app.greeting,
            crate::version(),
            process.pid(),
            process.generation()
        )
    });
    ([(CONTENT_TYPE, TEXT_PLAIN)], body).into_response()
}

/// What `String` responses get, so the cached body reads the same as a formatted one.
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// `GET /`'s body, rendered once per config generation: everything in it but the greeting is
/// fixed for the life of the process, and formatting it on every request cost 8 % of the
/// instructions of `GET /` (BENCHMARKS.md, "Instructions per request").
#[derive(Debug, Default)]
pub(crate) struct Greeting(ArcSwapOption<(u64, Bytes)>);

impl Greeting {
    /// The body for `config_generation`, rendered by `render` if it is not the one kept. Two
    /// requests racing on a reload may both render it; both bodies are right.
    fn get(&self, config_generation: u64, render: impl FnOnce() -> String) -> Bytes {
        if let Some(kept) = &*self.0.load()
            && kept.0 == config_generation
        {
            return kept.1.clone();
        }
        let body = Bytes::from(render());
        self.0
            .store(Some(Arc::new((config_generation, body.clone()))));
        body
    }
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
