//! Per-request middleware: load the settings snapshot once, enforce the request timeout in
//! force, count the response by status class.
//!
//! tower-http's `TimeoutLayer` fixes its duration when the router is built; this one reads
//! `server.request_timeout` from the current snapshot, so a reload changes it for the next
//! request. One function rather than one layer per job keeps the per-request overhead to a
//! single boxed future.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use super::extract::CurrentSettings;
use super::state::AppState;

pub(crate) async fn apply_settings(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let (settings, generation) = state.settings().snapshot();
    let timeout = settings.server.request_timeout;
    request
        .extensions_mut()
        .insert(CurrentSettings(settings, generation));

    // On timeout the handler's future is dropped, which cancels whatever it was awaiting.
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => AppError::Timeout.into_response(),
    };
    state.requests().record(response.status());
    response
}
