//! The HTTP application: the public router, the admin router and the state they share.
//!
//! # Layout
//! - `state`: [`AppState`], shared by every handler.
//! - `repository`: data access, one file per table; the only place with SQL.
//! - `error`: [`AppError`], the one error type; it becomes `{"error": "..."}`.
//! - `extract`: the request's settings snapshot, the API key check, and `Json`/`Query`/`Path`
//!   rejecting with [`AppError`].
//! - `table`: the public route table, stated once for the router and the route labels.
//! - `middleware`: the public service: per-request settings snapshot, request timeout,
//!   metrics, access log, then the router.
//! - `access`: the access log line.
//! - `page`: pagination of list endpoints (`?limit=&after=`, a `Link` to the next page).
//! - `routes`: the public handlers, one file per resource.
//! - `admin`: `/-/status` and `/metrics`, and the admin token check.
//! - `metrics`: the prometheus-client registry behind `/metrics`.
//! - `carry`: what crosses to the next generation at an upgrade (every counter and histogram).
//!
//! # Long-lived responses
//! A response that may outlive a drain (a WebSocket, Server-Sent Events, a long download) is
//! written one way, as `routes/ws.rs` and `routes/events.rs` show:
//! 1. In the handler, before returning, take a lease: `state.long_lived()`
//!    ([`LongLived`](crate::lifecycle::LongLived)), and move it into whatever serves the
//!    response (the `on_upgrade` callback, the stream's state). The drain waits for every
//!    lease, so the process does not exit under the response; axum itself does not track
//!    upgraded connections.
//! 2. Select on `lease.wrap_up()` next to the response's own work. When it fires (the lame
//!    duck of an upgrade or a shutdown, or `limits.stream_lifetime` reached), tell the client
//!    to reconnect in the protocol's own words (WebSocket Close 1001, an SSE `draining` or
//!    `reconnect` event), finish what was already received, and end. The client reconnects to
//!    the same address and reaches the next generation.
//! 3. Drop the lease when the response is over. What still holds one at
//!    `lifecycle.shutdown_timeout` is cut, and counted in the log.

mod access;
mod admin;
mod carry;
mod error;
mod extract;
mod metrics;
mod middleware;
mod page;
mod repository;
mod routes;
mod state;
mod table;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::routing::get;

pub use access::TARGET as ACCESS_LOG_TARGET;
pub use carry::AppCarry;
pub use error::AppError;
pub use middleware::Public;
pub use state::AppState;

use routes::{events, items, root, settings, slow, ws};
use table::Table;

/// The public service: `/`, `/healthz`, `/readyz`, `/api/...`, each request through the
/// per-request work (see `middleware`).
pub fn router(state: AppState) -> Public {
    // Full paths rather than `nest("/api", ...)`: nesting rewrites the URI of every request
    // (`StripPrefix`), and a flat table is the easiest to grep.
    let (router, labels) = Table::new()
        .route("/", get(root::greet))
        .route("/healthz", get(root::healthz))
        .route("/readyz", get(root::readyz))
        .route("/api/settings", get(settings::show))
        .route("/api/items", get(items::list).post(items::create))
        .route("/api/items/{id}", get(items::show).delete(items::delete))
        .route("/api/slow", get(slow::sleep))
        .route("/api/events", get(events::stream))
        .route("/api/ws", get(ws::upgrade))
        .fallback(root::not_found)
        .finish(state.clone());
    // The per-request work in front of the router, not a `Router::layer`, which would wrap
    // every route once more (see `table`). A layer of your own (CORS, compression) goes on
    // `router` here: `router.layer(...)`.
    Public::new(router, labels, state)
}

/// The admin service: `/-/status`, `/metrics`, behind `admin.token` when it is set. Not
/// counted in `/metrics` nor in the access log, so scrapes do not show up as traffic.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/-/status", get(admin::status))
        .route("/metrics", get(admin::metrics))
        .fallback(root::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::authorize,
        ))
        .with_state(state)
}
