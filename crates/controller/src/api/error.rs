//! The one error type of the HTTP API. Each variant owns its status code, its `kind` and its
//! message; caller errors explain themselves, internal ones say only "internal error" and keep
//! the detail for the log. Bodies are always `{"error":{"kind","message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::RETRY_AFTER;
use crate::controller::SubmitError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such execution")]
    NotFound,
    #[error("no such route")]
    NoRoute,
    #[error(
        "this execution's events are no longer retained; GET /v1/executions/{{id}} has its outcome"
    )]
    Gone,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request body must be JSON: send Content-Type: application/json")]
    UnsupportedMediaType,
    #[error(
        "Host {0:?} is not this controller's: without an API token it answers loopback names only"
    )]
    ForeignHost(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the controller is at capacity; retry later")]
    AtCapacity,
    #[error("this user has too many active executions (at most {0}); retry when one ends")]
    UserLimit(usize),
    #[error("too many open event streams; retry later")]
    TooManyStreams,
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("the backend cannot start runtimes right now; retry later")]
    Unavailable,
    /// Detail for the log only.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound | AppError::NoRoute => StatusCode::NOT_FOUND,
            AppError::Gone => StatusCode::GONE,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::AtCapacity | AppError::UserLimit(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::TooManyStreams | AppError::ShuttingDown | AppError::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AppError::Unauthorized => "unauthorized",
            AppError::BadRequest(_) => "bad_request",
            AppError::NotFound | AppError::NoRoute => "not_found",
            AppError::Gone => "expired",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::ForeignHost(_) => "misdirected_request",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::BodyTimeout => "request_timeout",
            AppError::AtCapacity => "at_capacity",
            AppError::UserLimit(_) => "user_limit",
            AppError::TooManyStreams => "too_many_streams",
            AppError::ShuttingDown => "shutting_down",
            AppError::Unavailable => "unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> bool {
        matches!(
            self,
            AppError::AtCapacity
                | AppError::UserLimit(_)
                | AppError::TooManyStreams
                | AppError::ShuttingDown
                | AppError::Unavailable
        )
    }

    pub fn from_submit(e: SubmitError, max_per_user: usize) -> AppError {
        match e {
            SubmitError::Invalid(m) => AppError::BadRequest(m),
            SubmitError::AtCapacity => AppError::AtCapacity,
            SubmitError::UserLimit => AppError::UserLimit(max_per_user),
            SubmitError::ShuttingDown => AppError::ShuttingDown,
            SubmitError::Unavailable => AppError::Unavailable,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = json!({"error": {"kind": self.kind(), "message": self.to_string()}});
        let mut res = (self.status(), Json(body)).into_response();
        if self.retry_after() {
            let secs = RETRY_AFTER.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if matches!(self, AppError::Unauthorized) {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}
