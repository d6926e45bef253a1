//! `/` (who is serving), `/healthz` (alive) and `/readyz` (should get traffic).

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;

use crate::app::error::AppError;
use crate::app::extract::CurrentSettings;
use crate::app::state::AppState;
use crate::lifecycle::Phase;
use crate::settings::Settings;

/// `<greeting> (version <v>, pid <pid>, generation <g>)`: which build, process and binary
/// generation answered, so an upgrade is visible from `curl`.
pub(crate) async fn greet(Greeting(body): Greeting) -> Response {
    // Built here rather than by `(headers, body).into_response()`, which sets the body's
    // content type and then replaces it: one header insert instead of two and a drop.
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    response
}

/// What `String` responses get, so the cached body reads the same as a formatted one.
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// `GET /`'s body. Everything in it is fixed for the life of the process but the greeting, so
/// each worker thread renders it once per config generation: formatting it on every request
/// cost 8 % of the instructions of `GET /`, and one body shared by all threads made every
/// request add to and subtract from a reference count that the other cores write too
/// (BENCHMARKS.md, "Instructions per request"). Extracted from `&AppState` rather than by
/// `State`, whose clone is one more such count.
pub(crate) struct Greeting(Bytes);

/// A thread's rendered body, and what it was rendered from: the thread's own copy of the
/// settings (held, so its address cannot be reused by another store's copy) and the binary
/// generation of the process state that rendered it.
struct Rendered {
    settings: Arc<Settings>,
    generation: u64,
    body: Bytes,
}

thread_local! {
    static RENDERED: RefCell<Option<Rendered>> = const { RefCell::new(None) };
}

impl FromRequestParts<AppState> for Greeting {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let CurrentSettings(settings, _) =
            CurrentSettings::from_request_parts(parts, state).await?;
        let process = state.process();
        let kept = RENDERED
            .try_with(|rendered| match &*rendered.borrow() {
                Some(kept)
                    if Arc::ptr_eq(&kept.settings, &settings)
                        && kept.generation == process.generation() =>
                {
                    Some(kept.body.clone())
                }
                _ => None,
            })
            .ok()
            .flatten();
        if let Some(body) = kept {
            return Ok(Greeting(body));
        }
        let body = Bytes::from(format!(
            "{} (version {}, pid {}, generation {})\n",
            settings.app.greeting,
            crate::version(),
            process.pid(),
            process.generation()
        ));
        // Not kept while the thread shuts down: the next request renders it again.
        let _ = RENDERED.try_with(|rendered| {
            *rendered.borrow_mut() = Some(Rendered {
                settings,
                generation: process.generation(),
                body: body.clone(),
            });
        });
        Ok(Greeting(body))
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
