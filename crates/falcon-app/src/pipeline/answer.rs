//! What the application answers: facts (the model's prediction, the model snapshot it came
//! from, whether a cache or an idempotency record answered, how long it took), never a wire
//! format. `http/` shapes the JSON bodies and the OIP tensors from these.

use std::sync::Arc;
use std::time::Duration;

use falcon_backend::{Backend, Prediction};

use super::InferError;

/// One text's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Class index, confidence and every class's probability, in the model's label order.
    pub prediction: Arc<Prediction>,
    /// Answered from the response cache.
    pub cache_hit: bool,
    /// A replay of the answer stored under the request's idempotency key.
    pub idempotency_hit: bool,
}

impl Answer {
    /// The predicted class's name among `labels` (the answering model's).
    pub fn label<'a>(&self, labels: &'a [String]) -> &'a str {
        self.prediction.label(labels)
    }
}

/// The model an answer came from: the snapshot the request took (a hot reload does not
/// change it under the request).
#[derive(Clone)]
pub struct AnsweredBy {
    /// The model's name in the repository.
    pub name: Arc<str>,
    pub model: Arc<dyn Backend>,
}

impl AnsweredBy {
    pub fn labels(&self) -> &[String] {
        self.model.labels()
    }

    pub fn version(&self) -> &str {
        self.model.model_version()
    }
}

impl std::fmt::Debug for AnsweredBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnsweredBy").field("name", &self.name).field("version", &self.version()).finish()
    }
}

/// A served `POST /infer`.
#[derive(Debug, Clone)]
pub struct Inferred {
    pub answer: Answer,
    pub by: AnsweredBy,
    /// From arrival to the answer.
    pub processing_time: Duration,
}

impl Inferred {
    pub fn label(&self) -> &str {
        self.answer.label(self.by.labels())
    }
}

/// A served batch: one answer or error per text, in order, all from one model snapshot.
#[derive(Debug)]
pub struct BatchInferred {
    pub results: Vec<Result<Answer, InferError>>,
    pub by: AnsweredBy,
    pub processing_time: Duration,
}
