//! Request and response bodies of the HTTP API (shared with `falcon predict`).

use std::collections::BTreeMap;

use falcon_model::Prediction;
use serde::{Deserialize, Serialize};

/// Longest accepted text, in characters (not bytes).
pub const MAX_TEXT_CHARS: usize = 10_000;

/// POST /infer body. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub text: String,
}

/// POST /infer answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InferResponse {
    pub prediction: String,
    pub confidence: f64,
    pub probabilities: BTreeMap<String, f64>,
    pub cache_hit: bool,
    pub idempotency_hit: bool,
    pub worker_id: String,
    pub model_version: String,
    pub processing_time_ms: f64,
    pub request_id: String,
}

impl InferResponse {
    pub fn new(p: &Prediction, labels: &[String], model_version: &str, worker_id: &str, request_id: &str) -> Self {
        Self {
            prediction: labels.get(p.class).cloned().unwrap_or_default(),
            confidence: p.confidence,
            probabilities: labels.iter().cloned().zip(p.probabilities.iter().copied()).collect(),
            cache_hit: false,
            idempotency_hit: false,
            worker_id: worker_id.to_owned(),
            model_version: model_version.to_owned(),
            processing_time_ms: 0.0,
            request_id: request_id.to_owned(),
        }
    }
}

/// Checks a text against the API's rules; the error says what is wrong.
pub fn validate_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text must not be empty or only whitespace".into());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!("text has {chars} characters; the limit is {MAX_TEXT_CHARS}"));
    }
    Ok(())
}

/// A fresh request id (UUID v4).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether an incoming `X-Request-ID` is safe to propagate: 1–128 characters of
/// `A-Z a-z 0-9 - _ . :` (no spaces, quotes or control characters that could forge log lines).
pub fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits_count_characters_not_bytes() {
        assert!(validate_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok(), "10000 two-byte characters fit");
        assert!(validate_text(&"a".repeat(MAX_TEXT_CHARS + 1)).is_err());
        assert!(validate_text("").is_err());
        assert!(validate_text(" \n\t ").is_err());
        assert!(validate_text("x").is_ok());
    }

    #[test]
    fn request_id_sanity() {
        assert!(is_sane_request_id("abc-123_x.y:z"));
        assert!(is_sane_request_id(&new_request_id()));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("a b"));
        assert!(!is_sane_request_id("a\"b"));
        assert!(!is_sane_request_id(&"a".repeat(129)));
    }
}
