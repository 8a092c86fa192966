//! Request and response bodies of the HTTP API (shared with `falcon predict`).

use std::collections::BTreeMap;

use falcon_backend::Prediction;
use serde::{Deserialize, Serialize};

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
    fn request_id_sanity() {
        assert!(is_sane_request_id("abc-123_x.y:z"));
        assert!(is_sane_request_id(&new_request_id()));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("a b"));
        assert!(!is_sane_request_id("a\"b"));
        assert!(!is_sane_request_id(&"a".repeat(129)));
    }
}
