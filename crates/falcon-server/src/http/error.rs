//! The one mapping from failures to HTTP status codes and the stable JSON error body
//! `{error, error_type, request_id, worker_id}`.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

use falcon_app::error_type::ErrorType;
use falcon_app::pipeline::InferError;
use falcon_app::telemetry::throttle::LogLimiter;

/// What the HTTP layer cannot read: the wire format's own failures. The application sees
/// them only as `InferError::Unreadable` (its row and its answer need the type and the
/// message, nothing more).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The body could not be parsed as the request format.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// A `Content-Encoding` (gzip, br …) the server does not decode (the value, shown).
    #[error("Content-Encoding {0} is not supported; send the body uncompressed")]
    UnsupportedEncoding(String),
    /// The binary tensor data extension's framing is broken (where, never what the bytes hold).
    #[error("binary tensor data is malformed: {0}")]
    TensorData(String),
}

impl WireError {
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::InvalidJson(_) | Self::TensorData(_) => ErrorType::InvalidJson,
            Self::PayloadTooLarge { .. } => ErrorType::PayloadTooLarge,
            Self::UnsupportedMediaType | Self::UnsupportedEncoding(_) => ErrorType::UnsupportedMediaType,
        }
    }
}

impl From<WireError> for InferError {
    fn from(e: WireError) -> Self {
        InferError::Unreadable { error_type: e.error_type(), message: e.to_string() }
    }
}

pub use falcon_app::error_type::shown;

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
    ReloadFailed(#[from] falcon_app::lifecycle::ReloadError),
    /// An Open Inference Protocol path names a version the model does not serve.
    #[error("model '{name}' has no version '{version}'; it serves '{served}'")]
    UnknownVersion { name: String, version: String, served: String },
}

impl ApiError {
    /// The status of its error type (the one table, `falcon_app::error_type`).
    pub fn status(&self) -> StatusCode {
        status(self.error_type())
    }

    /// The stable name clients, metrics (`inference_errors_total{error_type}`) and alerts
    /// key on.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::Infer(e) => e.error_type(),
            Self::NotFound(_) | Self::UnknownVersion { .. } => ErrorType::NotFound,
            Self::MethodNotAllowed => ErrorType::MethodNotAllowed,
            Self::UriTooLong { .. } => ErrorType::UriTooLong,
            Self::HeadersTooLarge { .. } => ErrorType::HeadersTooLarge,
            Self::ReloadFailed(_) => ErrorType::ReloadFailed,
        }
    }
}

/// An error type's status as `http` spells it.
pub fn status(t: ErrorType) -> StatusCode {
    StatusCode::from_u16(t.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Counts one error in `inference_errors_total`. The HTTP layer counts every error once,
/// where it answers it: an error body, a batch text's error, an OIP error, or a client
/// that hung up before its answer (`HangUp`).
pub fn count(t: ErrorType) {
    falcon_app::telemetry::metrics::record_error(t);
}

/// Counts `client_closed` if the handler holding it is dropped before it answers (the
/// client went away and hyper dropped the request's future).
pub struct HangUp {
    armed: bool,
}

impl HangUp {
    pub fn watch() -> Self {
        Self { armed: true }
    }

    /// The handler answered.
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        if self.armed {
            count(ErrorType::ClientClosed);
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
    #[schema(value_type = ErrorTypeSchema)]
    error_type: &'a str,
    request_id: &'a str,
    worker_id: &'a str,
}

/// The stable `error_type` of an error body: one of `ErrorType::ALL`.
pub struct ErrorTypeSchema;

impl PartialSchema for ErrorTypeSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorType::ALL.iter().map(|t| t.as_str())))
            .description(Some("Stable error name; also the `error_type` label of `inference_errors_total`"))
            .into()
    }
}

impl ToSchema for ErrorTypeSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ErrorType".into()
    }
}

/// The errors every inference route can answer with, whatever its protocol (the OpenAPI
/// document lists them for each).
pub const INFERENCE_ERRORS: [ErrorType; 12] = [
    ErrorType::InvalidJson,
    ErrorType::Unauthorized,
    ErrorType::Forbidden,
    ErrorType::BodyTimeout,
    ErrorType::PayloadTooLarge,
    ErrorType::UnsupportedMediaType,
    ErrorType::Validation,
    ErrorType::RateLimited,
    ErrorType::Overloaded,
    ErrorType::NotReady,
    ErrorType::InferenceTimeout,
    ErrorType::RequestTimeout,
];

/// The headers an error of this type carries: the OpenAPI document lists them, and
/// `add_error_headers` sets each of them (its value from `header_value`).
fn error_headers(t: ErrorType) -> &'static [(&'static str, &'static str)] {
    match t {
        ErrorType::Unauthorized => &[("www-authenticate", "`Bearer realm=\"falcon\"`")],
        ErrorType::RateLimited => &[
            ("retry-after", "Seconds until a request will be admitted"),
            ("ratelimit-limit", "Requests allowed per window"),
            ("ratelimit-remaining", "Requests left in this window (0)"),
            ("ratelimit-reset", "Seconds until the limit resets"),
            ("ratelimit-policy", "`<limit>;w=<window seconds>`"),
        ],
        ErrorType::Overloaded | ErrorType::NotReady => &[("retry-after", "Seconds to wait")],
        _ => &[],
    }
}

/// One response per status for `types`, with the status `status` gives each and the body
/// schema `body` (the standard `ErrorBody`, or OIP's `OipError`).
pub fn error_responses(
    types: &[ErrorType],
    status: fn(ErrorType) -> StatusCode,
    body: &str,
) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorType>> = BTreeMap::new();
    for &t in types {
        by_status.entry(status(t).as_u16()).or_default().push(t);
    }
    by_status
        .into_iter()
        .map(|(status, types)| {
            let description =
                types.iter().map(|t| format!("`{t}`: {}", t.description())).collect::<Vec<_>>().join(" Or ");
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new().schema(Some(RefOr::Ref(Ref::from_schema_name(body)))).build(),
            );
            for (name, description) in types.iter().flat_map(|t| error_headers(*t)) {
                let schema = match *name {
                    "www-authenticate" | "ratelimit-policy" => String::schema(),
                    _ => u32::schema(),
                };
                let header = HeaderBuilder::new().schema(Some(schema)).description(Some(*description)).build();
                response = response.header(*name, header);
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
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

impl ErrorResponse<'_> {
    /// Counts the error and logs it (rate-limited) with the status it is answered with: what
    /// every error answer does, whatever the protocol's body. Returns its message.
    fn report(&self, status: StatusCode) -> String {
        let kind = self.error.error_type();
        count(kind);
        let error_type = kind.as_str();
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
        message
    }

    /// The Open Inference Protocol's answer: `{"error": …}`, with the protocol's status
    /// (its 4xx for a bad request are 400) and the same headers.
    pub fn into_oip_response(self) -> Response {
        let status = oip_status(self.error.error_type());
        let message = self.report(status);
        let mut response = (status, Json(OipError { error: message })).into_response();
        add_error_headers(&self.error, response.headers_mut());
        response.extensions_mut().insert(Answered(self.error.error_type()));
        response
    }
}

/// The Open Inference Protocol's error body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OipError {
    pub error: String,
}

/// The protocol answers a request it cannot take with 400; authentication, limits, a
/// missing model and overload keep their own codes.
pub fn oip_status(t: ErrorType) -> StatusCode {
    match t {
        ErrorType::InvalidJson
        | ErrorType::Validation
        | ErrorType::PayloadTooLarge
        | ErrorType::UnsupportedMediaType => StatusCode::BAD_REQUEST,
        other => status(other),
    }
}

impl IntoResponse for ErrorResponse<'_> {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let message = self.report(status);
        let kind = self.error.error_type();
        let body = ErrorBody {
            error: message,
            error_type: kind.as_str(),
            request_id: self.request_id,
            worker_id: self.worker_id,
        };
        let mut response = (status, Json(body)).into_response();
        add_error_headers(&self.error, response.headers_mut());
        response.extensions_mut().insert(Answered(kind));
        response
    }
}

/// On a response: it is this error's answer (counted in `inference_errors_total`). The
/// request-context middleware also counts it in `http_errors_without_row_total` unless
/// the pipeline made its row (`Piped`).
#[derive(Debug, Clone, Copy)]
pub struct Answered(pub ErrorType);

/// On a response: the pipeline served the request, so its rows are made and counted
/// (`inference_texts_total`).
#[derive(Debug, Clone, Copy)]
pub struct Piped;

/// Marks `response` as one the pipeline served.
pub fn piped(mut response: Response) -> Response {
    response.extensions_mut().insert(Piped);
    response
}

/// What a client needs to act on the error: how to authenticate, when to come back.
fn add_error_headers(error: &ApiError, headers: &mut axum::http::HeaderMap) {
    let limited = match error {
        ApiError::Infer(InferError::RateLimited(l)) => Some(l),
        _ => None,
    };
    for (name, _) in error_headers(error.error_type()) {
        if let Some(value) = header_value(name, limited) {
            headers.insert(*name, value);
        }
    }
}

/// The value of the error header `name` (one of `error_headers`); `limited` is the rate
/// limit that refused the request, if one did.
fn header_value(name: &str, limited: Option<&falcon_app::pipeline::access::Limited>) -> Option<HeaderValue> {
    let seconds = |d: std::time::Duration| HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64);
    Some(match (name, limited) {
        ("www-authenticate", _) => HeaderValue::from_static("Bearer realm=\"falcon\""),
        ("retry-after" | "ratelimit-reset", Some(l)) => seconds(l.retry_after),
        ("retry-after", None) => HeaderValue::from(1u32),
        ("ratelimit-limit", Some(l)) => HeaderValue::from(l.limit),
        ("ratelimit-remaining", Some(_)) => HeaderValue::from(0u32),
        ("ratelimit-policy", Some(l)) => {
            HeaderValue::from_str(&format!("{};w={}", l.limit, l.window.as_secs().max(1))).ok()?
        }
        _ => return None,
    })
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

    /// An error of each type. The match is exhaustive: a type added to the table without a
    /// way to reach it here does not compile.
    fn example(t: ErrorType) -> ApiError {
        let second = Duration::from_secs(1);
        match t {
            ErrorType::InvalidJson => InferError::from(WireError::InvalidJson(String::new())).into(),
            ErrorType::PayloadTooLarge => InferError::from(WireError::PayloadTooLarge { limit: 1 }).into(),
            ErrorType::UnsupportedMediaType => InferError::from(WireError::UnsupportedMediaType).into(),
            ErrorType::Validation => InferError::Validation(String::new()).into(),
            ErrorType::NotFound => ApiError::NotFound(String::new()),
            ErrorType::ModelNotFound => InferError::ModelNotFound { name: String::new(), served: String::new() }.into(),
            ErrorType::DefaultModel => InferError::DefaultModel(String::new()).into(),
            ErrorType::MethodNotAllowed => ApiError::MethodNotAllowed,
            ErrorType::UriTooLong => ApiError::UriTooLong { limit: 1 },
            ErrorType::HeadersTooLarge => ApiError::HeadersTooLarge { count: 1, bytes: 1 },
            ErrorType::Unauthorized => InferError::Unauthorized("").into(),
            ErrorType::Forbidden => InferError::Forbidden("").into(),
            ErrorType::RateLimited => InferError::RateLimited(falcon_app::pipeline::access::Limited {
                retry_after: second,
                limit: 1,
                window: second,
            })
            .into(),
            ErrorType::ReloadFailed => ApiError::ReloadFailed(falcon_app::lifecycle::ReloadError::NotConfigured),
            ErrorType::IdempotencyConflict => InferError::IdempotencyConflict.into(),
            ErrorType::NotReady => InferError::NotReady("").into(),
            ErrorType::Overloaded => InferError::Overloaded("").into(),
            ErrorType::InferenceTimeout => InferError::InferenceTimeout(second).into(),
            ErrorType::RequestTimeout => InferError::RequestTimeout(second).into(),
            ErrorType::BodyTimeout => InferError::BodyTimeout(second).into(),
            ErrorType::ClientClosed => InferError::ClientClosed.into(),
            ErrorType::Internal => InferError::Internal(String::new()).into(),
        }
    }

    #[test]
    fn client_strings_are_shown_bounded_and_without_control_characters() {
        assert_eq!(shown("/no-such-path"), "/no-such-path");
        let long = shown(&"x".repeat(200_000));
        assert_eq!(long.chars().count(), falcon_app::error_type::PATH_ECHO_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(shown("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\u{a}");
    }

    #[test]
    fn every_error_carries_the_headers_the_document_lists_for_it() {
        for &t in ErrorType::ALL {
            let mut headers = axum::http::HeaderMap::new();
            add_error_headers(&example(t), &mut headers);
            let documented: Vec<&str> = error_headers(t).iter().map(|(name, _)| *name).collect();
            let set: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(set.len(), documented.len(), "{t}: set {set:?}, documented {documented:?}");
            assert!(
                documented.iter().all(|name| headers.contains_key(*name)),
                "{t}: set {set:?}, documented {documented:?}"
            );
        }
        let mut headers = axum::http::HeaderMap::new();
        add_error_headers(&example(ErrorType::RateLimited), &mut headers);
        assert_eq!(headers["ratelimit-policy"], "1;w=1");
        assert_eq!(headers["retry-after"], "1");
    }

    #[test]
    fn every_error_answers_with_its_types_name_and_status() {
        for &t in ErrorType::ALL {
            let e = example(t);
            assert_eq!(e.error_type(), t);
            assert_eq!(e.status().as_u16(), t.status(), "{t}");
        }
        assert_eq!(example(ErrorType::ClientClosed).status().as_u16(), 499);
        assert_eq!(example(ErrorType::Validation).status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
