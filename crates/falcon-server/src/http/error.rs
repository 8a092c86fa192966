//! The one mapping from failures to HTTP status codes and the stable JSON error body
//! `{error, error_type, request_id, worker_id}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every way a request can fail. `error_type` strings are a contract: clients, metrics
/// (`inference_errors_total{error_type}`) and alerts key on them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Validation(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("worker is not ready: {0}")]
    NotReady(&'static str),
    #[error("X-Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    #[error("worker is overloaded: {0}")]
    Overloaded(&'static str),
    #[error("inference did not finish within {0:.3} s")]
    InferenceTimeout(f64),
    #[error("request did not finish within {0:.3} s")]
    RequestTimeout(f64),
    /// The cause goes to the log; the client sees only a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyConflict => StatusCode::CONFLICT,
            Self::NotReady(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InferenceTimeout(_) | Self::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Validation(_) => "validation_error",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::NotReady(_) => "not_ready",
            Self::Overloaded(_) => "overloaded",
            Self::InferenceTimeout(_) => "inference_timeout",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Internal(_) => "internal_error",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    error_type: &'a str,
    request_id: &'a str,
    worker_id: &'a str,
}

/// An `ApiError` with the context its body needs. Logging and counting happen here,
/// once, for every error response.
pub struct ErrorResponse<'a> {
    pub error: ApiError,
    pub request_id: &'a str,
    pub worker_id: &'a str,
}

impl IntoResponse for ErrorResponse<'_> {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let error_type = self.error.error_type();
        crate::telemetry::metrics::record_error(error_type);
        let message = self.error.to_string();
        if let ApiError::Internal(cause) = &self.error {
            tracing::error!(request_id = self.request_id, error_type, status = status.as_u16(), cause = %cause, "Internal error");
        } else if status.is_server_error() {
            tracing::error!(request_id = self.request_id, error_type, status = status.as_u16(), "{message}");
        } else {
            tracing::warn!(request_id = self.request_id, error_type, status = status.as_u16(), "{message}");
        }
        let body = ErrorBody { error: message, error_type, request_id: self.request_id, worker_id: self.worker_id };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::Internal("connection string postgres://secret".into());
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn every_error_type_is_registered_as_a_metric_series() {
        let all = [
            ApiError::InvalidJson(String::new()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::Validation(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::IdempotencyConflict,
            ApiError::NotReady(""),
            ApiError::Overloaded(""),
            ApiError::InferenceTimeout(1.0),
            ApiError::RequestTimeout(1.0),
            ApiError::Internal(String::new()),
        ];
        for e in &all {
            assert!(crate::telemetry::metrics::ERROR_TYPES.contains(&e.error_type()), "{}", e.error_type());
        }
        assert_eq!(all.len(), crate::telemetry::metrics::ERROR_TYPES.len());
    }
}
