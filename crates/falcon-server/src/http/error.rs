//! The one mapping from failures to HTTP status codes and the stable JSON error body
//! `{error, error_type, request_id, worker_id}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::app::InferError;
use crate::telemetry::throttle::LogLimiter;

/// Every way an HTTP request can fail: the application's errors, and the two that only
/// exist at the HTTP layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request has more than {count} headers or {bytes} bytes of them")]
    HeadersTooLarge { count: usize, bytes: usize },
    #[error(transparent)]
    ReloadFailed(#[from] crate::lifecycle::ReloadError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Infer(e) => match e {
                InferError::InvalidJson(_) => StatusCode::BAD_REQUEST,
                InferError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                InferError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                InferError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
                InferError::IdempotencyConflict => StatusCode::CONFLICT,
                InferError::NotReady(_) | InferError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
                InferError::InferenceTimeout(_) | InferError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
                InferError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
                // nginx's "client closed request": nobody reads it, but logs and rows say it.
                InferError::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                InferError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                InferError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                InferError::Forbidden(_) => StatusCode::FORBIDDEN,
                InferError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            },
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::ReloadFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The stable name clients, metrics (`inference_errors_total{error_type}`) and alerts
    /// key on.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Infer(e) => e.error_type(),
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::ReloadFailed(_) => "reload_failed",
        }
    }
}

/// Every error of the API (except the Open Inference Protocol's own, `{"error": …}`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "error": "text must not be empty or only whitespace, control or invisible format characters",
    "error_type": "validation_error", "request_id": "0193a4b2-7c1e-7d3a-9f00-1b2c3d4e5f60", "worker_id": "worker-1"
}))]
pub struct ErrorBody<'a> {
    /// What went wrong, for a person. Never quotes the request's text.
    error: String,
    /// What went wrong, for a program: stable, and the `error_type` label of
    /// `inference_errors_total`.
    #[schema(value_type = super::openapi::ErrorType)]
    error_type: &'a str,
    request_id: &'a str,
    worker_id: &'a str,
}

/// An `ApiError` with the context its body needs. Logging and counting happen here,
/// once, for every error response: every error is counted, and its log line is
/// rate-limited per `error_type` (a flood of rejected requests does not flood the log).
pub struct ErrorResponse<'a> {
    pub error: ApiError,
    pub request_id: &'a str,
    pub worker_id: &'a str,
    pub log: &'a LogLimiter,
}

/// Error log lines of one `error_type` per second before the rest are only counted.
pub const ERROR_LINES_PER_SECOND: u32 = 20;

impl IntoResponse for ErrorResponse<'_> {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let error_type = self.error.error_type();
        crate::telemetry::metrics::record_error(error_type);
        let message = self.error.to_string();
        if let Some(suppressed) = self.log.admit(error_type) {
            let status = status.as_u16();
            let id = self.request_id;
            if let ApiError::Infer(InferError::Internal(cause)) = &self.error {
                tracing::error!(request_id = id, error_type, status, suppressed, cause = %cause, "Internal error");
            } else if status >= 500 {
                tracing::error!(request_id = id, error_type, status, suppressed, "{message}");
            } else {
                tracing::warn!(request_id = id, error_type, status, suppressed, "{message}");
            }
        }
        let body = ErrorBody { error: message, error_type, request_id: self.request_id, worker_id: self.worker_id };
        let mut response = (status, Json(body)).into_response();
        add_error_headers(&self.error, response.headers_mut());
        response
    }
}

/// What a client needs to act on the error: how to authenticate, when to come back.
fn add_error_headers(error: &ApiError, headers: &mut axum::http::HeaderMap) {
    use axum::http::HeaderValue;
    let seconds = |d: std::time::Duration| HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64);
    match error {
        ApiError::Infer(InferError::Unauthorized(_)) => {
            headers.insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"falcon\""));
        }
        ApiError::Infer(InferError::RateLimited(l)) => {
            headers.insert("retry-after", seconds(l.retry_after));
            headers.insert("ratelimit-limit", HeaderValue::from(l.limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
            headers.insert("ratelimit-reset", seconds(l.retry_after));
            headers.insert(
                "ratelimit-policy",
                HeaderValue::from_str(&format!("{};w={}", l.limit, l.window.as_secs().max(1)))
                    .unwrap_or(HeaderValue::from_static("")),
            );
        }
        ApiError::Infer(InferError::Overloaded(_) | InferError::NotReady(_)) => {
            headers.insert("retry-after", HeaderValue::from(1u32));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::from(InferError::Internal("connection string postgres://secret".into()));
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn every_error_type_is_registered_as_a_metric_series() {
        let all: Vec<ApiError> = vec![
            InferError::InvalidJson(String::new()).into(),
            InferError::PayloadTooLarge { limit: 1 }.into(),
            InferError::UnsupportedMediaType.into(),
            InferError::Validation(String::new()).into(),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::UriTooLong { limit: 1 },
            ApiError::HeadersTooLarge { count: 1, bytes: 1 },
            InferError::Forbidden("").into(),
            InferError::Unauthorized("").into(),
            InferError::RateLimited(crate::app::access::Limited {
                retry_after: Duration::from_secs(1),
                limit: 1,
                window: Duration::from_secs(1),
            })
            .into(),
            ApiError::ReloadFailed(crate::lifecycle::ReloadError::NotConfigured),
            InferError::IdempotencyConflict.into(),
            InferError::NotReady("").into(),
            InferError::Overloaded("").into(),
            InferError::InferenceTimeout(Duration::from_secs(1)).into(),
            InferError::RequestTimeout(Duration::from_secs(1)).into(),
            InferError::BodyTimeout(Duration::from_secs(1)).into(),
            InferError::ClientClosed.into(),
            InferError::Internal(String::new()).into(),
        ];
        for e in &all {
            assert!(crate::telemetry::metrics::ERROR_TYPES.contains(&e.error_type()), "{}", e.error_type());
        }
        assert_eq!(all.len(), crate::telemetry::metrics::ERROR_TYPES.len());
    }
}
