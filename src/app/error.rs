//! The one error type handlers return. Each variant knows its status code; the client sees
//! `{"error": "<message>"}`, and an internal error shows only "internal error" while its
//! detail goes to the log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a request can fail with. Messages are lowercase, say what is wrong and, where
/// the client can fix it, how.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is well-formed but its content breaks a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// The item or route does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state, e.g. a full store (409).
    #[error("{0}")]
    Conflict(String),
    /// The API key is required and missing or wrong (401).
    #[error("missing or wrong api key: send `Authorization: Bearer <app.api_key>`")]
    Unauthorized,
    /// The handler did not finish within `server.request_timeout` (503).
    #[error("request timed out")]
    Timeout,
    /// The body is not the JSON the route expects (400, 415 or 422, as axum decides).
    #[error(transparent)]
    Json(#[from] JsonRejection),
    /// The query string does not match the route's parameters (400).
    #[error(transparent)]
    Query(#[from] QueryRejection),
    /// A path segment has the wrong type, e.g. `/api/items/abc` (400).
    #[error(transparent)]
    Path(#[from] PathRejection),
    /// A bug or an outside failure: logged in full, shown to the client as "internal error".
    #[error("{0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        AppError::Internal(error.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Json(rejection) => rejection.status(),
            AppError::Query(rejection) => rejection.status(),
            AppError::Path(rejection) => rejection.status(),
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error while serving a request");
                "internal error".to_owned()
            }
            // axum's rejections carry a client-facing text (e.g. "Failed to parse the request
            // body as JSON: ... at line 1 column 9"), which is what the client needs to fix it.
            AppError::Json(rejection) => rejection.body_text(),
            AppError::Query(rejection) => rejection.body_text(),
            AppError::Path(rejection) => rejection.body_text(),
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: &message })).into_response();
        if matches!(self, AppError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(error: AppError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("an in-memory body cannot fail")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).expect("error bodies are JSON");
        (status, json)
    }

    #[tokio::test]
    async fn internal_errors_hide_their_detail() {
        let (status, body) = body_of(AppError::internal("disk on fire at /var/secret")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, serde_json::json!({ "error": "internal error" }));
    }

    #[tokio::test]
    async fn client_errors_show_their_message() {
        let (status, body) = body_of(AppError::Conflict("store is full".to_owned())).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body, serde_json::json!({ "error": "store is full" }));
    }
}
