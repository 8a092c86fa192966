//! The model seam: the pipeline talks to a `Classifier`, the real one is the shipped
//! `SentimentModel`, tests plug in slow or failing ones.

use falcon_model::{Prediction, SentimentModel};

/// A loaded model. `predict` is synchronous and CPU-bound: call it off the reactor.
pub trait Classifier: Send + Sync + 'static {
    fn predict(&self, text: &str) -> Prediction;
    /// What the model sees of `text`; equal normal forms get equal predictions.
    fn normalize(&self, text: &str) -> String {
        falcon_model::normalize(text)
    }
    fn model_version(&self) -> &str;
    /// Label names, in class-index order.
    fn labels(&self) -> &[String];
}

impl Classifier for SentimentModel {
    fn predict(&self, text: &str) -> Prediction {
        SentimentModel::predict(self, text)
    }

    fn model_version(&self) -> &str {
        SentimentModel::model_version(self)
    }

    fn labels(&self) -> &[String] {
        SentimentModel::labels(self)
    }
}
