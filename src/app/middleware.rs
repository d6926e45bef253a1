//! Per-request middleware: load the settings snapshot once, enforce the request timeout in
//! force, measure the response for `/metrics` and write the access log line.
//!
//! tower-http's `TimeoutLayer` fixes its duration when the router is built; this one reads
//! `server.request_timeout` from the current snapshot, so a reload changes it for the next
//! request. One function rather than one layer per job keeps the per-request overhead to a
//! single boxed future.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access;
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
    // The route as the router matched it, never the raw path: a bounded label set.
    let matched = request.extensions().get::<MatchedPath>();
    let route = state.metrics().route(matched.map(MatchedPath::as_str));
    let access = settings
        .log
        .access
        .then(|| access::Entry::of(&request, matched));
    #[cfg(feature = "otel")]
    let span = crate::otel::request_span(
        request.method().as_str(),
        matched.map_or(super::metrics::UNMATCHED, MatchedPath::as_str),
        request.headers(),
    );
    request
        .extensions_mut()
        .insert(CurrentSettings(settings, generation));

    let in_flight = state.metrics().request_started(route);
    let run = next.run(request);
    #[cfg(feature = "otel")]
    let run = tracing::Instrument::instrument(run, span.clone());
    // On timeout the handler's future is dropped, which cancels whatever it was awaiting.
    let response = match tokio::time::timeout(timeout, run).await {
        Ok(response) => response,
        Err(_elapsed) => AppError::Timeout.into_response(),
    };
    #[cfg(feature = "otel")]
    crate::otel::record_status(&span, response.status());
    let took = in_flight.finish(response.status());
    if let Some(entry) = access {
        entry.write(&response, took, state.process().generation());
    }
    response
}
