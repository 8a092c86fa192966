//! Request and response bodies of the HTTP API (shared with `falcon predict`), built from
//! the application's answers (`app::Inferred`, `app::BatchInferred`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use falcon_app::error_type::ErrorType;
use falcon_app::pipeline::{Answer, BatchInferred, InferError, Inferred};
use falcon_backend::Prediction;

/// POST /infer body: a JSON object with a string `text`. Unknown fields are ignored. Only
/// an object is accepted: serde would otherwise read `["some text"]` as this struct too.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"text": "I love this product!"}))]
pub struct InferRequest {
    /// The text to classify: 1 to 10,000 characters (the model's limit), not only whitespace,
    /// control or invisible format characters.
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = "[^\\x00-\\x20\\x7f-\\xa0\\xad\\u1680\\u180e\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u2064\\u206a-\\u206f\\u3000\\ufeff]"
    )]
    pub text: String,
    /// The model to ask (a model of the worker's repository); without it, the default model
    /// (zero-config: `sentiment`).
    #[schema(example = "sentiment", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub model: Option<String>,
}

impl<'de> Deserialize<'de> for InferRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = InferRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with a string field \"text\"")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<InferRequest, A::Error> {
                let (mut text, mut model) = (None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "text" if text.is_some() => return Err(serde::de::Error::duplicate_field("text")),
                        "text" => text = Some(map.next_value::<String>()?),
                        "model" if model.is_some() => return Err(serde::de::Error::duplicate_field("model")),
                        "model" => model = Some(map.next_value::<Option<String>>()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let model = model.flatten();
                text.map(|text| InferRequest { text, model }).ok_or_else(|| serde::de::Error::missing_field("text"))
            }
        }
        d.deserialize_map(Object)
    }
}

/// POST /infer answer. Probabilities are written to 6 decimal places and the processing
/// time to the microsecond: `0.999078`, not `0.9990782994979556`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(example = json!({
    "prediction": "positive", "confidence": 0.973012,
    "probabilities": {"negative": 0.004211, "neutral": 0.022777, "positive": 0.973012},
    "cache_hit": false, "idempotency_hit": false, "worker_id": "worker-1",
    "model_version": "tfidf-lr-3f9c2a1b", "processing_time_ms": 0.094,
    "request_id": "0193a4b2-7c1e-7d3a-9f00-1b2c3d4e5f60"
}))]
pub struct InferResponse {
    /// The most likely class: `negative`, `neutral` or `positive`.
    pub prediction: String,
    /// The probability of `prediction`, 0 to 1.
    #[serde(serialize_with = "decimals::six")]
    pub confidence: f64,
    /// Every class's probability (they sum to 1).
    #[serde(serialize_with = "decimals::six_each")]
    pub probabilities: BTreeMap<String, f64>,
    /// Answered from the response cache.
    pub cache_hit: bool,
    /// A replay of the earlier answer to the same `X-Idempotency-Key`.
    pub idempotency_hit: bool,
    /// The worker that answered.
    pub worker_id: String,
    /// The model that answered, by name (the request's `model`, or the default).
    #[serde(default)]
    pub model: String,
    /// The model's version that answered (it changes when a reload swaps in another).
    pub model_version: String,
    /// Time spent in the worker, in milliseconds.
    #[serde(serialize_with = "decimals::three")]
    pub processing_time_ms: f64,
    /// The request's id: the client's sane `X-Request-ID`, else a new UUID v7.
    pub request_id: String,
}

/// Rounding of the floats a person reads in a response.
mod decimals {
    use std::collections::BTreeMap;

    use serde::Serializer;
    use serde::ser::SerializeMap;

    fn round(v: f64, places: i32) -> f64 {
        let scale = 10f64.powi(places);
        let r = (v * scale).round() / scale;
        if r.is_finite() { r } else { v }
    }

    pub fn six<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(round(*v, 6))
    }

    pub fn three<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(round(*v, 3))
    }

    pub fn six_each<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &round(*v, 6))?;
        }
        map.end()
    }
}

impl InferResponse {
    /// The answer to a served `POST /infer`.
    pub fn new(served: &Inferred, worker_id: &str, request_id: &str) -> Self {
        let p = &served.answer.prediction;
        Self {
            prediction: served.label().to_owned(),
            confidence: p.confidence,
            probabilities: by_label(p, served.by.labels()),
            cache_hit: served.answer.cache_hit,
            idempotency_hit: served.answer.idempotency_hit,
            worker_id: worker_id.to_owned(),
            model: served.by.name.to_string(),
            model_version: served.by.version().to_owned(),
            processing_time_ms: served.processing_time.as_secs_f64() * 1000.0,
            request_id: request_id.to_owned(),
        }
    }
}

/// Every class's probability, by its label.
fn by_label(p: &Prediction, labels: &[String]) -> BTreeMap<String, f64> {
    p.by_label(labels).map(|(l, v)| (l.to_owned(), v)).collect()
}

/// POST /infer/batch body: `{"texts": [...]}`. Entries are checked one by one (a number
/// where a text should be is that entry's error, not the batch's).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"texts": ["I love this product!", "Worst service ever.", "It arrived on Tuesday."]}))]
pub struct BatchRequest {
    /// 1 to `MAX_BATCH_TEXTS` (default 64) texts. Each should be a string under the same
    /// rules as `text` of `POST /infer`; an entry that is not gets its own error in the answer.
    #[schema(value_type = Vec<serde_json::Value>, min_items = 1, max_items = 64)]
    pub texts: super::entries::Entries,
    /// The model to ask; without it, the default model.
    #[serde(default)]
    #[schema(example = "sentiment", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub model: Option<String>,
}

/// One answer of a batch, in the order of the texts: a prediction, or why this text got none.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// The text's prediction.
    Answer {
        prediction: String,
        #[serde(serialize_with = "decimals::six")]
        confidence: f64,
        #[serde(serialize_with = "decimals::six_each")]
        probabilities: BTreeMap<String, f64>,
        /// Answered from the response cache.
        cache_hit: bool,
    },
    /// Why this text got no prediction (`validation_error`); the other texts are answered.
    Error {
        error: String,
        #[schema(value_type = String)]
        error_type: ErrorType,
    },
}

impl BatchItem {
    /// One text's answer or error, read with the answering model's `labels`.
    pub fn new(result: &Result<Answer, InferError>, labels: &[String]) -> Self {
        match result {
            Ok(answer) => Self::Answer {
                prediction: answer.label(labels).to_owned(),
                confidence: answer.prediction.confidence,
                probabilities: by_label(&answer.prediction, labels),
                cache_hit: answer.cache_hit,
            },
            Err(e) => Self::Error { error: e.to_string(), error_type: e.error_type() },
        }
    }
}

/// POST /infer/batch answer.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct BatchResponse {
    /// One entry per text, in the order of `texts`.
    pub results: Vec<BatchItem>,
    pub worker_id: String,
    /// The model that answered, by name.
    pub model: String,
    pub model_version: String,
    #[serde(serialize_with = "decimals::three")]
    pub processing_time_ms: f64,
    pub request_id: String,
}

impl BatchResponse {
    /// The answer to a served batch.
    pub fn new(served: &BatchInferred, worker_id: &str, request_id: &str) -> Self {
        Self {
            results: served.results.iter().map(|r| BatchItem::new(r, served.by.labels())).collect(),
            worker_id: worker_id.to_owned(),
            model: served.by.name.to_string(),
            model_version: served.by.version().to_owned(),
            processing_time_ms: served.processing_time.as_secs_f64() * 1000.0,
            request_id: request_id.to_owned(),
        }
    }
}

/// `GET /`: what this is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceInfo {
    /// Always `falcon`.
    pub name: &'static str,
    /// The worker's version.
    pub version: &'static str,
    pub worker_id: String,
    /// `ready`, `draining` or `starting`.
    #[schema(example = "ready")]
    pub status: &'static str,
    pub model_version: String,
}

/// `GET /healthz`: liveness. The process answers; nothing else is checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `healthy`.
    #[schema(example = "healthy")]
    pub status: &'static str,
    pub worker_id: String,
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    pub uptime_seconds: f64,
}

/// `GET /readyz`: whether to send this worker traffic (200) or not (503).
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub worker_id: String,
    /// Shutting down: finishing what it has, taking nothing new.
    pub draining: bool,
    pub checks: ReadinessChecks,
    pub backends: Backends,
    /// The default model's version.
    pub model_version: String,
    /// Every model this worker serves now, each ready (the default first).
    pub models: Vec<ReadyModel>,
    pub timestamp: String,
}

/// A model the worker serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyModel {
    #[schema(example = "sentiment")]
    pub name: String,
    pub model_version: String,
    /// The model that answers requests naming none.
    pub default: bool,
}

/// What readiness looked at. Redis and the database degrade the worker when down but never
/// make it unready.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    pub model_loaded: bool,
    pub redis_available: DependencyCheck,
    /// The request-log database that `backends.request_log` names.
    pub database_available: DependencyCheck,
}

/// A dependency's state: reachable or not, or not used by this worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DependencyCheck {
    Available(bool),
    NotConfigured(NotConfigured),
}

/// The dependency is not configured (`"not_configured"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotConfigured {
    NotConfigured,
}

impl From<Option<bool>> for DependencyCheck {
    fn from(up: Option<bool>) -> Self {
        up.map_or(Self::NotConfigured(NotConfigured::NotConfigured), Self::Available)
    }
}

/// Which implementation serves each role: `redis`, `memory`, `postgres`, `sqlite`, or
/// `disabled`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backends {
    #[schema(example = "memory")]
    pub cache: &'static str,
    #[schema(example = "memory")]
    pub idempotency: &'static str,
    #[schema(example = "sqlite")]
    pub request_log: &'static str,
}

/// `POST /admin/reload` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadAnswer {
    /// Always `reloaded`.
    pub status: &'static str,
    pub worker_id: String,
    pub reload: Reloaded,
}

/// What a successful reload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    pub previous_version: String,
    pub model_version: String,
    /// Where the model came from (the file, or the build).
    pub source: String,
    pub load_ms: f64,
    /// False when the file held the model already served (same version).
    pub changed: bool,
}

impl From<falcon_app::lifecycle::Reloaded> for Reloaded {
    fn from(r: falcon_app::lifecycle::Reloaded) -> Self {
        Self {
            previous_version: r.previous_version,
            model_version: r.model_version,
            source: r.source,
            load_ms: r.load_ms,
            changed: r.changed,
        }
    }
}

/// A fresh request id: a UUID v7, time-ordered, so the request log's index on it grows at
/// its right edge instead of touching a random page per row.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether an incoming `X-Request-ID` is safe to propagate: 1–128 characters of
/// `A-Z a-z 0-9 - _ . :` (no spaces, quotes or control characters that could forge log lines).
pub fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn a_response_writes_readable_floats() {
        let r = InferResponse {
            prediction: "positive".into(),
            confidence: 0.9990782994979556,
            probabilities: BTreeMap::from([
                ("negative".into(), 0.0006039481112732483),
                ("positive".into(), 0.9990782994979556),
            ]),
            cache_hit: false,
            idempotency_hit: false,
            worker_id: "w".into(),
            model: "sentiment".into(),
            model_version: "v".into(),
            processing_time_ms: 0.11732500000000001,
            request_id: "r".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""confidence":0.999078,"#), "{json}");
        assert!(json.contains(r#""negative":0.000604,"#), "{json}");
        assert!(json.contains(r#""processing_time_ms":0.117,"#), "{json}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_with_a_string_text_is_a_request() {
        let ok: InferRequest = serde_json::from_str(r#"{"text": "hi", "other": [1, {"a": 2}]}"#).unwrap();
        assert_eq!((ok.text.as_str(), ok.model), ("hi", None));
        let named: InferRequest = serde_json::from_str(r#"{"model": "topics", "text": "hi"}"#).unwrap();
        assert_eq!(named.model.as_deref(), Some("topics"));
        let null: InferRequest = serde_json::from_str(r#"{"text": "hi", "model": null}"#).unwrap();
        assert_eq!(null.model, None, "a null model is the default");
        for bad in [
            r#"{"text": "hi", "model": 5}"#,
            r#"{"text": "hi", "model": "a", "model": "b"}"#,
            r#"["I love this"]"#,
            r#""I love this""#,
            r#"{"text": 5}"#,
            r#"{}"#,
            r#"{"text":"a","text":"b"}"#,
            "null",
            "7",
        ] {
            let e = serde_json::from_str::<InferRequest>(bad).unwrap_err();
            assert_eq!(e.classify(), serde_json::error::Category::Data, "{bad}: {e}");
        }
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
