//! The one error type handlers return. Each variant knows its status code; the client sees
//! `{"error": "<message>"}`, and an internal error shows only "internal error" while its
//! detail goes to the log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::database::DbError;

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
    /// The request conflicts with the current state, e.g. a name already taken (409).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (the database) is unreachable or overloaded; retrying later may work
    /// (503 with `Retry-After`). The detail is logged, the client sees this message.
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable(String),
    /// The API key is required and missing or wrong (401).
    #[error("missing or wrong api key: send `Authorization: Bearer <app.api_key>`")]
    Unauthorized,
    /// The admin token is set and the admin request did not carry it (401).
    #[error("missing or wrong admin token: send `Authorization: Bearer <admin.token>`")]
    AdminUnauthorized,
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
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Unauthorized | AppError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
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
            AppError::Unavailable(detail) => {
                // Debug only: during an outage every request would log one line. The outage
                // itself is logged once (the database's health check) and counted on /metrics.
                tracing::debug!(error = %detail, "request refused: a dependency is unavailable");
                self.to_string()
            }
            // axum's rejections carry a client-facing text (e.g. "Failed to parse the request
            // body as JSON: ... at line 1 column 9"), which is what the client needs to fix it.
            AppError::Json(rejection) => rejection.body_text(),
            AppError::Query(rejection) => rejection.body_text(),
            AppError::Path(rejection) => rejection.body_text(),
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: &message })).into_response();
        match self {
            AppError::Unauthorized | AppError::AdminUnauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// Database errors a handler did not handle itself: a unique key taken is the client's
/// conflict, an unreachable or overloaded database is worth a retry, anything else is a bug.
impl From<DbError> for AppError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::UniqueViolation(_) => {
                AppError::Conflict("conflicts with an existing record".to_owned())
            }
            error if error.is_transient() => AppError::Unavailable(error.to_string()),
            error => AppError::internal(error),
        }
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
        let (status, body) = body_of(AppError::Conflict("name taken".to_owned())).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body, serde_json::json!({ "error": "name taken" }));
    }

    #[tokio::test]
    async fn database_errors_map_to_conflict_unavailable_or_internal() {
        let unique = AppError::from(DbError::UniqueViolation("items_name_key".into()));
        assert_eq!(unique.status(), StatusCode::CONFLICT);
        let timeout = AppError::from(DbError::PoolTimedOut);
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = timeout.into_response();
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let (_, body) = body_of(AppError::from(DbError::Busy("database is locked".into()))).await;
        assert!(
            !body.to_string().contains("locked"),
            "detail hidden: {body}"
        );
        let bug = AppError::from(DbError::Query(sqlx::Error::RowNotFound));
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
