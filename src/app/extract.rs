//! Extractors: the settings snapshot of this request, the API key check, and axum's `Json`,
//! `Query` and `Path` with their rejections turned into [`AppError`], so a bad body or query
//! gets the same `{"error": ...}` shape as every other error.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tokio::task::futures::TaskLocalFuture;

use super::error::AppError;
use super::state::AppState;
use crate::settings::Settings;

/// `axum::Json`, rejecting with [`AppError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub(crate) struct AppJson<T>(pub(crate) T);

/// `axum::extract::Query`, rejecting with [`AppError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub(crate) struct AppQuery<T>(pub(crate) T);

/// `axum::extract::Path`, rejecting with [`AppError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub(crate) struct AppPath<T>(pub(crate) T);

/// The settings in force when this request arrived, with their config generation. The middleware loads the snapshot once
/// and keeps it for the request, so everything that serves one request (timeout, auth,
/// handler) sees the same settings even if a reload lands half-way through.
#[derive(Debug, Clone)]
pub(crate) struct CurrentSettings(pub(crate) Arc<Settings>, pub(crate) u64);

tokio::task_local! {
    /// The snapshot of the request whose route future is being polled. A task-local rather
    /// than a request extension: inserting one grew the extension map on every request, 6 % of
    /// the instructions of `GET /` (BENCHMARKS.md, "Instructions per request").
    static REQUEST_SETTINGS: CurrentSettings;
}

impl CurrentSettings {
    /// Runs `route` (the future that extracts and handles one request) with this snapshot as
    /// the request's settings.
    pub(crate) fn scope<F: Future>(self, route: F) -> TaskLocalFuture<CurrentSettings, F> {
        REQUEST_SETTINGS.scope(self, route)
    }

    fn of(state: &AppState) -> Self {
        REQUEST_SETTINGS
            .try_with(CurrentSettings::clone)
            // Only on a router built without the middleware (e.g. a user's own test router).
            .unwrap_or_else(|_| {
                let (settings, generation) = state.settings().snapshot();
                CurrentSettings(settings, generation)
            })
    }
}

impl FromRequestParts<AppState> for CurrentSettings {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(CurrentSettings::of(state))
    }
}

/// Proof that the request may change data: `app.api_key` is unset, or the request sent
/// `Authorization: Bearer <app.api_key>`. Put it before the body extractor so an
/// unauthorised request is refused before its body is read.
#[derive(Debug)]
pub(crate) struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let settings = CurrentSettings::of(state).0;
        let Some(key) = &settings.app.api_key else {
            return Ok(Authorized);
        };
        if bearer_matches(&parts.headers, key.expose()) {
            Ok(Authorized)
        } else {
            Err(AppError::Unauthorized)
        }
    }
}

/// Whether the request sent `Authorization: Bearer <secret>`.
pub(crate) fn bearer_matches(headers: &HeaderMap, secret: &str) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|token| constant_time_eq(token, secret.as_bytes()))
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// key was right. (The length may show; keys are long random strings, so that tells nothing.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
