//! Request and response bodies of the HTTP API (shared with `falcon predict`).

use std::collections::BTreeMap;

use falcon_backend::Prediction;
use serde::{Deserialize, Serialize};

/// POST /infer body: a JSON object with a string `text`. Unknown fields are ignored. Only
/// an object is accepted: serde would otherwise read `["some text"]` as this struct too.
#[derive(Debug)]
pub struct InferRequest {
    pub text: String,
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
                let mut text = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "text" {
                        if text.is_some() {
                            return Err(serde::de::Error::duplicate_field("text"));
                        }
                        text = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                text.map(|text| InferRequest { text }).ok_or_else(|| serde::de::Error::missing_field("text"))
            }
        }
        d.deserialize_map(Object)
    }
}

/// POST /infer answer. Probabilities are written to 6 decimal places and the processing
/// time to the microsecond: `0.999078`, not `0.9990782994979556`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InferResponse {
    pub prediction: String,
    #[serde(serialize_with = "decimals::six")]
    pub confidence: f64,
    #[serde(serialize_with = "decimals::six_each")]
    pub probabilities: BTreeMap<String, f64>,
    pub cache_hit: bool,
    pub idempotency_hit: bool,
    pub worker_id: String,
    pub model_version: String,
    #[serde(serialize_with = "decimals::three")]
    pub processing_time_ms: f64,
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

/// POST /infer/batch body: `{"texts": [...]}`. Entries are checked one by one (a number
/// where a text should be is that entry's error, not the batch's).
#[derive(Debug, Deserialize)]
pub struct BatchRequest {
    pub texts: Vec<serde_json::Value>,
}

/// One answer of a batch, in the order of the texts: a prediction, or why this text got none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BatchItem {
    Answer {
        prediction: String,
        #[serde(serialize_with = "decimals::six")]
        confidence: f64,
        #[serde(serialize_with = "decimals::six_each")]
        probabilities: BTreeMap<String, f64>,
        cache_hit: bool,
    },
    Error {
        error: String,
        error_type: String,
    },
}

impl BatchItem {
    pub fn answer(p: &Prediction, labels: &[String], cache_hit: bool) -> Self {
        Self::Answer {
            prediction: labels.get(p.class).cloned().unwrap_or_default(),
            confidence: p.confidence,
            probabilities: labels.iter().cloned().zip(p.probabilities.iter().copied()).collect(),
            cache_hit,
        }
    }
}

/// POST /infer/batch answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
    pub worker_id: String,
    pub model_version: String,
    #[serde(serialize_with = "decimals::three")]
    pub processing_time_ms: f64,
    pub request_id: String,
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
        assert_eq!(ok.text, "hi");
        for bad in [
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
