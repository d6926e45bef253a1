//! Extractors: the settings snapshot of this request, the API key check, and axum's `Json`,
//! `Query` and `Path` with their rejections turned into [`AppError`], so a bad body or query
//! gets the same `{"error": ...}` shape as every other error.

use std::cell::RefCell;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

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

thread_local! {
    /// The snapshot of the request whose route future this thread is polling, lent by
    /// [`CurrentSettings::lend`]. A thread-local rather than a request extension: inserting
    /// one grew the extension map on every request, 6 % of the instructions of `GET /`
    /// (BENCHMARKS.md, "Instructions per request"). Not tokio's `task_local!`: its scope is a
    /// future wrapped around the route's, one more layer to move and poll per request, where
    /// this is lent inside the middleware's own poll.
    static REQUEST_SETTINGS: RefCell<Option<CurrentSettings>> = const { RefCell::new(None) };
}

impl CurrentSettings {
    /// Runs `poll` (one poll of the future that extracts and handles a request) with the
    /// snapshot in `lent` as the request's settings, and takes it back after, also if `poll`
    /// panics. Whatever this thread had lent before (a request polling another) is put back.
    pub(crate) fn lend<R>(lent: &mut Option<CurrentSettings>, poll: impl FnOnce() -> R) -> R {
        /// Swaps the snapshot back out when dropped.
        struct Return<'a>(&'a mut Option<CurrentSettings>);
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                swap(self.0);
            }
        }
        fn swap(lent: &mut Option<CurrentSettings>) -> bool {
            REQUEST_SETTINGS
                .try_with(|cell| match cell.try_borrow_mut() {
                    Ok(mut current) => {
                        std::mem::swap(&mut *current, lent);
                        true
                    }
                    Err(_) => false,
                })
                .unwrap_or(false)
        }
        // Not lent (the thread is shutting down): the extractor falls back to the store.
        if !swap(lent) {
            return poll();
        }
        let _return = Return(lent);
        poll()
    }

    fn of(state: &AppState) -> Self {
        REQUEST_SETTINGS
            .try_with(|cell| cell.try_borrow().ok().and_then(|lent| lent.clone()))
            .ok()
            .flatten()
            // Only on a router built without the middleware (e.g. a user's own test router).
            .unwrap_or_else(|| {
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
    use std::sync::Arc;

    use super::{CurrentSettings, REQUEST_SETTINGS, constant_time_eq};
    use crate::settings::Settings;

    fn lent_generation() -> Option<u64> {
        REQUEST_SETTINGS.with(|cell| cell.borrow().as_ref().map(|lent| lent.1))
    }

    #[test]
    fn a_lent_snapshot_is_seen_inside_only_and_comes_back_also_after_a_panic() {
        let settings = Arc::new(Settings::default());
        let mut outer = Some(CurrentSettings(settings.clone(), 1));
        let mut inner = Some(CurrentSettings(settings, 2));
        assert_eq!(lent_generation(), None);
        let seen = CurrentSettings::lend(&mut outer, || {
            let nested = CurrentSettings::lend(&mut inner, lent_generation);
            (lent_generation(), nested)
        });
        // The inner lend showed its own and put the outer one back.
        assert_eq!(seen, (Some(1), Some(2)));
        assert_eq!(lent_generation(), None);
        assert_eq!(outer.map(|s| s.1), Some(1));
        assert_eq!(inner.as_ref().map(|s| s.1), Some(2));

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            CurrentSettings::lend(&mut inner, || panic!("a handler panicked"))
        }));
        assert!(panicked.is_err());
        assert_eq!(lent_generation(), None);
        assert_eq!(inner.map(|s| s.1), Some(2));
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
