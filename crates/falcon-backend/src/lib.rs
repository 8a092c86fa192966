//! The seam between the worker and its models.
//!
//! The worker runs every model through [`Backend`]: batched, fallible, and honest about
//! what it sees of a text (`normalize`, which the response cache keys on). A model lives
//! in its own crate and implements this trait; the worker depends on this crate alone, so
//! a new model is one new crate plus one arm in the factory that `MODEL_BACKEND` selects
//! from (`falcon-cli`'s `backends` module).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index into [`Backend::labels`].
    pub class: usize,
    /// Probability of the predicted class.
    pub confidence: f64,
    /// Probabilities in label order; they sum to 1.
    pub probabilities: Vec<f64>,
}

impl Prediction {
    /// The prediction for these probabilities: the most probable class (the first on a tie).
    pub fn from_probabilities(probabilities: Vec<f64>) -> Self {
        let (class, confidence) = probabilities
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, p)| if p > best.1 { (i, p) } else { best });
        Self { class, confidence, probabilities }
    }

    /// The predicted class's name among `labels` (the answering model's, in its order); empty
    /// if the model gave a class it has no label for.
    pub fn label<'a>(&self, labels: &'a [String]) -> &'a str {
        labels.get(self.class).map_or("", String::as_str)
    }

    /// Every class's probability with its name, in label order.
    pub fn by_label<'a>(&'a self, labels: &'a [String]) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        labels.iter().map(String::as_str).zip(self.probabilities.iter().copied())
    }
}

/// Why a backend could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The batch was malformed for this model (the caller's mistake, not the model's).
    #[error("input rejected by the model: {0}")]
    InvalidInput(String),
    /// The model failed to compute an answer.
    #[error("model failed: {0}")]
    Failed(String),
}

/// A loaded model, ready to serve. Calls are synchronous and CPU-bound: the worker makes
/// them on its inference threads, or, for a text the backend calls cheap (`runs_in_place`),
/// on the runtime thread that holds the request when no request is queued.
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, as `MODEL_BACKEND` spells it (`tfidf`).
    fn name(&self) -> &'static str;

    /// Classifies a batch; the answer has one prediction per text, in order. The worker
    /// calls this once per batch its inference threads gather.
    fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError>;

    /// Label names, in class-index order.
    fn labels(&self) -> &[String];

    /// Identifies the weights; derived from the model's content, so equal weights have
    /// equal versions. Part of every cache key.
    fn model_version(&self) -> &str;

    /// What the model sees of `text`: two texts with the same normal form get the same
    /// prediction, so the response cache keys on it.
    fn normalize(&self, text: &str) -> String;

    /// Longest text, in characters, that the model accepts.
    fn max_input_chars(&self) -> usize;

    /// Whether `text` costs this backend a few microseconds, so that handing it to an
    /// inference thread (a queue, a wake-up, a reply) would cost more than running it: the
    /// worker then runs it in place on the request's runtime thread when no request is
    /// waiting for the inference threads. A heavy backend (a transformer) answers `false`
    /// and always goes through the inference threads and their batching.
    fn runs_in_place(&self, text: &str) -> bool {
        let _ = text;
        false
    }

    /// Whether a batch of texts costs this backend much less per text than the same texts
    /// one call at a time (a transformer's forward pass): its inference threads then wait
    /// up to `MAX_BATCH_WAIT_MS` to gather a batch. A backend of a few microseconds a text
    /// answers `false` and never waits.
    fn prefers_batches(&self) -> bool {
        false
    }

    /// Texts this model has cut to the length it reads since it was loaded (a transformer
    /// keeps its first `max_seq_length` tokens): `model_input_truncated_total`.
    fn truncated_texts(&self) -> u64 {
        0
    }

    /// The share of each class (in label order) this model predicts on the data it was
    /// evaluated on, if its file records it: the baseline that drift monitoring compares
    /// live traffic with.
    fn reference_class_shares(&self) -> Option<Vec<f64>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_reads_by_its_model_s_labels() {
        let labels = ["negative".to_owned(), "positive".to_owned()];
        let p = Prediction::from_probabilities(vec![0.25, 0.75]);
        assert_eq!(p.label(&labels), "positive");
        assert_eq!(p.by_label(&labels).collect::<Vec<_>>(), [("negative", 0.25), ("positive", 0.75)]);
        assert_eq!(Prediction { class: 5, ..p }.label(&labels), "");
    }

    #[test]
    fn the_most_probable_class_wins_and_ties_go_to_the_first() {
        let p = Prediction::from_probabilities(vec![0.2, 0.5, 0.3]);
        assert_eq!((p.class, p.confidence), (1, 0.5));
        assert_eq!(Prediction::from_probabilities(vec![0.5, 0.5]).class, 0);
    }
}
