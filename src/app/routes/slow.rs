//! `GET /api/slow?ms=N`: answers after N milliseconds. The lifecycle tests use it to keep
//! requests in flight across a reload, an upgrade or a drain; it is also the smallest example
//! of a validated `Query`.

use std::time::Duration;

use axum::Json;
use serde::{Deserialize, Serialize};

use crate::app::error::AppError;
use crate::app::extract::AppQuery;

/// The longest sleep allowed. Longer than any sensible `server.request_timeout`, so the
/// timeout can be exercised; short enough that a typo cannot pin a connection for hours.
const MAX_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
pub(crate) struct SlowParams {
    ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Slept {
    slept_ms: u64,
}

pub(crate) async fn sleep(AppQuery(params): AppQuery<SlowParams>) -> Result<Json<Slept>, AppError> {
    if params.ms > MAX_MS {
        return Err(AppError::Invalid(format!(
            "ms must be between 0 and {MAX_MS}, got {}",
            params.ms
        )));
    }
    // Deliberately not cut short by a drain: in-flight requests must finish during one.
    tokio::time::sleep(Duration::from_millis(params.ms)).await;
    Ok(Json(Slept {
        slept_ms: params.ms,
    }))
}
