//! The HTTP application: the public router, the admin router and the state they share.
//!
//! # Layout
//! - `state`: [`AppState`], shared by every handler.
//! - `error`: [`AppError`], the one error type; it becomes `{"error": "..."}`.
//! - `extract`: the request's settings snapshot, the API key check, and `Json`/`Query`/`Path`
//!   rejecting with [`AppError`].
//! - `middleware`: per-request settings snapshot, request timeout, response counting.
//! - `routes`: the public handlers, one file per resource.
//! - `admin`: `/-/status` and `/metrics`.
//! - `metrics`: the request counters behind `/metrics`.

mod admin;
mod error;
mod extract;
mod metrics;
mod middleware;
mod routes;
mod state;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

pub use error::AppError;
pub use state::AppState;

use routes::{events, items, root, settings, slow};

/// The public service: `/`, `/healthz`, `/readyz`, `/api/...`.
pub fn router(state: AppState) -> Router {
    // Full paths rather than `nest("/api", ...)`: nesting rewrites the URI of every request
    // (`StripPrefix`), and a flat table is the easiest to grep.
    Router::new()
        .route("/", get(root::greet))
        .route("/healthz", get(root::healthz))
        .route("/readyz", get(root::readyz))
        .route("/api/settings", get(settings::show))
        .route("/api/items", get(items::list).post(items::create))
        .route("/api/items/{id}", get(items::show).delete(items::delete))
        .route("/api/slow", get(slow::sleep))
        .route("/api/events", get(events::stream))
        .fallback(root::not_found)
        // One `layer` call for both: each `Router::layer` wraps every route in another boxed
        // service that is cloned per request. Outermost first: the trace span covers
        // everything, including a timeout's 503.
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    middleware::apply_settings,
                )),
        )
        .with_state(state)
}

/// The admin service: `/-/status`, `/metrics`. Not counted in `baton_requests_total`, so
/// scrapes do not show up as traffic.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/-/status", get(admin::status))
        .route("/metrics", get(admin::metrics))
        .fallback(root::not_found)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
