//! Every `error_type` Falcon answers with, defined once.
//!
//! The names are a product contract: they are the `error` bodies' `error_type`, the
//! `error_type` label of `inference_errors_total` (each series registered at 0 from this
//! list), `inference_logs.error_type`, the OpenAPI document's `ErrorType` enum and its
//! responses, and what alerts and clients key on. Each name comes with its HTTP status and a
//! line for the document; the protocols map from here (OIP answers its 4xx as 400).

macro_rules! error_types {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:literal;)*) => {
        /// A stable error name and its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorType {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorType {
            /// Every error type, in the table's order.
            pub const ALL: &'static [ErrorType] = &[$(Self::$variant),*];

            /// The stable name (`invalid_json`, ...).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The HTTP status of the standard error body.
            pub const fn status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)*
                }
            }

            /// What it means, for the OpenAPI document.
            pub fn description(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($($doc),*).trim_ascii(),)*
                }
            }
        }
    };
}

error_types! {
    /// The body is not JSON (or, for OIP, not an inference request, or its binary tensor data is malformed).
    InvalidJson = "invalid_json", 400;
    /// The body is over `MAX_REQUEST_BODY_BYTES` (or its `Content-Length` says it will be).
    PayloadTooLarge = "payload_too_large", 413;
    /// The body is not `application/json`, or has a `Content-Encoding` (gzip …).
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// JSON of the wrong shape, a text out of bounds, a bad idempotency key, or a batch with no texts or more than `MAX_BATCH_TEXTS`.
    Validation = "validation_error", 422;
    /// No such route (or, for OIP, no such version of a model).
    NotFound = "not_found", 404;
    /// The request names a model this worker does not serve (not in its repository, or unloaded).
    ModelNotFound = "model_not_found", 404;
    /// The route does not take this method.
    MethodNotAllowed = "method_not_allowed", 405;
    /// The request target is over 8 KiB.
    UriTooLong = "uri_too_long", 414;
    /// Over 100 headers or 32 KiB of them.
    HeadersTooLarge = "headers_too_large", 431;
    /// API keys are on and the key is missing or unknown.
    Unauthorized = "unauthorized", 401;
    /// The key may not use this route (or, without keys, an admin route asked from elsewhere).
    Forbidden = "forbidden", 403;
    /// Over this client's rate limit.
    RateLimited = "rate_limited", 429;
    /// The new model did not load or failed its check; the old one serves on.
    ReloadFailed = "reload_failed", 422;
    /// The idempotency key was used with another text, or is in flight.
    IdempotencyConflict = "idempotency_conflict", 409;
    /// The default model cannot be unloaded (it answers every request that names no model).
    DefaultModel = "default_model", 409;
    /// The model is not loaded yet, or the worker is draining.
    NotReady = "not_ready", 503;
    /// The inference queue, `MAX_CONCURRENT_REQUESTS` or `MAX_BODY_BYTES_IN_FLIGHT` is full.
    Overloaded = "overloaded", 503;
    /// The model did not answer within `INFERENCE_TIMEOUT_SECONDS`.
    InferenceTimeout = "inference_timeout", 504;
    /// The request did not finish within `REQUEST_TIMEOUT_SECONDS`.
    RequestTimeout = "request_timeout", 504;
    /// The body did not arrive within the request's deadline.
    BodyTimeout = "request_body_timeout", 408;
    /// The client went away before its answer (nginx's 499: logged and counted, never read).
    ClientClosed = "client_closed", 499;
    /// A failure inside the worker; the cause goes to the log, never to the client.
    Internal = "internal_error", 500;
}

/// How much of an unknown path a 404 body and its log line repeat.
pub const PATH_ECHO_CHARS: usize = 64;

/// A client's string as an error body, a log line and a row repeat it: at most
/// `PATH_ECHO_CHARS` characters (then `…`), control characters escaped (`\u{1b}`), so a
/// client can neither grow what is stored nor put terminal sequences into it.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == PATH_ECHO_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

impl serde::Serialize for ErrorType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorType;

    #[test]
    fn names_are_unique_snake_case_and_every_type_has_a_description() {
        let mut names: Vec<&str> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')), "{names:?}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorType::ALL.len(), "a name is used twice");
        for e in ErrorType::ALL {
            assert!(e.description().ends_with('.') || e.description().ends_with(')'), "{e}: {}", e.description());
            assert!((400..600).contains(&e.status()), "{e} is an error status");
        }
    }
}
