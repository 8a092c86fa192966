//! Every way an inference request can fail, in the application's own terms.
//!
//! Each variant has one `ErrorType` (`crate::error_type`), the table of the stable names,
//! their statuses and their metric series.

use std::time::Duration;

use crate::adapters::inference::QueueError;
use crate::error_type::ErrorType;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// The transport could not read a request from what the client sent (for HTTP: not
    /// JSON, too large, another media type); it names the error type and says why.
    #[error("{message}")]
    Unreadable { error_type: ErrorType, message: String },
    /// A well-formed request whose content breaks a rule (text, idempotency key).
    #[error("{0}")]
    Validation(String),
    #[error("worker is not ready: {0}")]
    NotReady(&'static str),
    /// The request names a model this worker does not serve (the name, as shown to the
    /// client, and the models it does serve).
    #[error("unknown model '{name}'; this worker serves: {served}")]
    ModelNotFound { name: String, served: String },
    /// The default model cannot be unloaded.
    #[error("'{0}' is the default model (it answers requests that name none); it cannot be unloaded")]
    DefaultModel(String),
    #[error("X-Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    #[error("worker is overloaded: {0}")]
    Overloaded(&'static str),
    #[error("inference did not finish within {:.3} s", .0.as_secs_f64())]
    InferenceTimeout(Duration),
    #[error("request did not finish within {:.3} s", .0.as_secs_f64())]
    RequestTimeout(Duration),
    /// The client did not send its whole body within the request's deadline: its delay,
    /// not the worker's.
    #[error("the request body did not arrive within {:.3} s", .0.as_secs_f64())]
    BodyTimeout(Duration),
    /// The client went away before its request was read.
    #[error("the client closed the connection before sending the whole request")]
    ClientClosed,
    /// The cause goes to the log; clients see only a generic message.
    #[error("internal error")]
    Internal(String),
    /// No API key, or one this worker does not know.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid API key that may not use this route (or an admin route from elsewhere).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The client's budget (RATE_LIMIT_PER_MINUTE, RATE_LIMIT_BURST) is spent for now.
    #[error("rate limit exceeded; retry in {:.3} s", .0.retry_after.as_secs_f64())]
    RateLimited(super::access::Limited),
}

impl InferError {
    /// Its stable name and status (`crate::error_type`, the one table).
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::Unreadable { error_type, .. } => *error_type,
            Self::Validation(_) => ErrorType::Validation,
            Self::NotReady(_) => ErrorType::NotReady,
            Self::ModelNotFound { .. } => ErrorType::ModelNotFound,
            Self::DefaultModel(_) => ErrorType::DefaultModel,
            Self::IdempotencyConflict => ErrorType::IdempotencyConflict,
            Self::Overloaded(_) => ErrorType::Overloaded,
            Self::InferenceTimeout(_) => ErrorType::InferenceTimeout,
            Self::RequestTimeout(_) => ErrorType::RequestTimeout,
            Self::BodyTimeout(_) => ErrorType::BodyTimeout,
            Self::ClientClosed => ErrorType::ClientClosed,
            Self::Internal(_) => ErrorType::Internal,
            Self::Unauthorized(_) => ErrorType::Unauthorized,
            Self::Forbidden(_) => ErrorType::Forbidden,
            Self::RateLimited(_) => ErrorType::RateLimited,
        }
    }
}

impl From<QueueError> for InferError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full => Self::Overloaded("inference queue is full"),
            QueueError::Stopped => Self::NotReady("inference threads stopped"),
            QueueError::Timeout(after) => Self::InferenceTimeout(after),
            QueueError::Panicked => Self::Internal("inference failed (model panicked)".into()),
            QueueError::Backend(falcon_backend::BackendError::InvalidInput(why)) => Self::Validation(why),
            QueueError::Backend(e @ falcon_backend::BackendError::Failed(_)) => Self::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = InferError::Internal("connection string postgres://secret".into());
        assert_eq!(e.to_string(), "internal error");
    }
}
