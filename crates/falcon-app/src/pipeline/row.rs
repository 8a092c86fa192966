//! The request-log row of one text's request, built in one place for `/infer`, the batch
//! routes and OIP alike.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;

use super::RequestMeta;
use super::answer::Answer;
use crate::adapters::request_log::{LogId, LogRecord, LogRow, RequestLog};
use crate::error_type::ErrorType;
use crate::text_key::TextKey;

/// What the row keeps of a text: never the text itself, its fingerprint and its length,
/// each computed once.
#[derive(Debug, Clone)]
pub(crate) struct TextFacts {
    pub hash: String,
    /// In characters (what the limit counts), saturated at `i32::MAX`.
    pub length: i32,
}

impl TextFacts {
    /// The text's keyed hash (`TextKey`) and length.
    pub fn of(text: &str, key: &TextKey) -> Self {
        Self { hash: key.hash(text), length: i32::try_from(text.chars().count()).unwrap_or(i32::MAX) }
    }
}

/// An answer, with the labels of the model that gave it.
pub(crate) struct Answered<'a> {
    pub labels: &'a [String],
    pub answer: &'a Answer,
}

/// Everything a row says about one text's request.
pub(crate) struct Outcome<'a> {
    pub meta: &'a RequestMeta,
    pub worker_id: &'a str,
    pub model_version: &'a str,
    /// `None` when the request failed before its text was read.
    pub text: Option<&'a TextFacts>,
    pub idempotency_key: Option<String>,
    pub api_key_id: Option<&'a str>,
    /// The model the request named (`None`: it failed before its model was known).
    pub model_name: Option<&'a str>,
    /// From arrival to the answer.
    pub elapsed: Duration,
    /// Time in the model, queue wait included; `None` when it did not run.
    pub inference_ms: Option<f64>,
    pub result: Result<Answered<'a>, (ErrorType, String)>,
}

impl Outcome<'_> {
    /// The one row of one text's request, borrowed from the outcome, handed to `f`: the
    /// request path encodes it into the journal as it is (no `LogRecord`, issue 34).
    fn with_row<T>(&self, f: impl FnOnce(LogRow<'_>) -> T) -> T {
        let log_id = LogId::new();
        let answered = self.result.as_ref().ok();
        let probabilities = answered.and_then(|a| {
            let by_label: BTreeMap<&str, f64> = a.answer.prediction.by_label(a.labels).collect();
            serde_json::to_string(&by_label).ok()
        });
        let (error_type, error_message) = match &self.result {
            Ok(_) => (None, None),
            Err((error_type, message)) => (Some(error_type.as_str()), Some(message.as_str())),
        };
        f(LogRow {
            log_id: log_id.as_str(),
            request_id: &self.meta.request_id,
            worker_id: self.worker_id,
            text_hash: self.text.map(|t| t.hash.as_str()),
            text_length: self.text.map(|t| t.length),
            prediction: answered.map(|a| a.answer.label(a.labels)),
            confidence: answered.map(|a| a.answer.prediction.confidence),
            probabilities: probabilities.as_deref(),
            cache_hit: answered.is_some_and(|a| a.answer.cache_hit),
            idempotency_hit: answered.is_some_and(|a| a.answer.idempotency_hit),
            success: answered.is_some(),
            processing_time_ms: self.elapsed.as_secs_f64() * 1000.0,
            inference_time_ms: self.inference_ms,
            error_type,
            error_message,
            idempotency_key: self.idempotency_key.as_deref(),
            client_ip: self.meta.client_ip.as_deref(),
            model_version: self.model_version,
            created_at: Utc::now(),
            api_key_id: self.api_key_id,
            model_name: self.model_name,
        })
    }

    /// Keeps the outcome's row in the request log.
    pub(crate) fn log_to(&self, log: &RequestLog) {
        self.with_row(|row| log.record_row(&row));
    }
}

impl LogRecord {
    /// The one row of one text's request, owned.
    #[cfg(test)]
    pub(crate) fn from_outcome(o: Outcome<'_>) -> Self {
        o.with_row(|row| row.to_record())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RequestMeta {
        RequestMeta {
            request_id: "req-1".into(),
            client_ip: Some("10.0.0.7".into()),
            received: tokio::time::Instant::now(),
            authorization: super::super::access::Credential::new(None),
        }
    }

    fn outcome<'a>(
        meta: &'a RequestMeta,
        text: &'a TextFacts,
        result: Result<Answered<'a>, (ErrorType, String)>,
    ) -> Outcome<'a> {
        Outcome {
            meta,
            worker_id: "w-1",
            model_version: "m-1",
            text: Some(text),
            idempotency_key: Some("k".into()),
            api_key_id: Some("billing"),
            model_name: Some("topics"),
            elapsed: Duration::from_millis(3),
            inference_ms: Some(1.5),
            result,
        }
    }

    #[test]
    fn an_answer_and_an_error_fill_their_own_columns_and_share_the_rest() {
        let meta = meta();
        let key = TextKey::new(&[7; 32]).unwrap();
        let text = TextFacts::of("héllo", &key);
        assert_eq!(text.length, 5, "characters, not bytes");
        let labels = ["negative".to_owned(), "positive".to_owned()];
        let answer = Answer {
            prediction: std::sync::Arc::new(falcon_backend::Prediction {
                class: 1,
                confidence: 0.75,
                probabilities: vec![0.25, 0.75],
            }),
            cache_hit: true,
            idempotency_hit: false,
        };
        let answered = Answered { labels: &labels, answer: &answer };
        let ok = LogRecord::from_outcome(outcome(&meta, &text, Ok(answered)));
        assert!(ok.success && ok.cache_hit && !ok.idempotency_hit);
        assert_eq!(ok.prediction.as_deref(), Some("positive"));
        assert_eq!(ok.probabilities.as_deref(), Some(r#"{"negative":0.25,"positive":0.75}"#));
        assert_eq!(ok.error_type, None);
        let failed = LogRecord::from_outcome(outcome(&meta, &text, Err((ErrorType::Validation, "bad".into()))));
        assert!(!failed.success);
        assert_eq!(
            (failed.error_type.as_deref(), failed.error_message.as_deref()),
            (Some("validation_error"), Some("bad"))
        );
        assert_eq!(failed.prediction, None);
        for row in [&ok, &failed] {
            assert_eq!(row.text_hash.as_deref(), Some(key.hash("héllo").as_str()));
            assert_eq!(row.text_length, Some(5));
            assert_eq!(
                (row.request_id.as_str(), row.worker_id.as_str(), row.model_version.as_str()),
                ("req-1", "w-1", "m-1")
            );
            assert_eq!(row.client_ip.as_deref(), Some("10.0.0.7"));
            assert_eq!(row.api_key_id.as_deref(), Some("billing"));
            assert_eq!(row.model_name.as_deref(), Some("topics"));
            assert_eq!(row.idempotency_key.as_deref(), Some("k"));
            assert_eq!((row.processing_time_ms, row.inference_time_ms), (3.0, Some(1.5)));
        }
        assert_ne!(ok.log_id, failed.log_id, "each row its own id");
    }
}
