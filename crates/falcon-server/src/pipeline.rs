//! POST /infer after validation: cache → model (off the reactor, under a deadline) → cache.

use std::sync::Arc;
use std::time::Duration;

use falcon_model::Prediction;

use crate::cache::{ResponseCache, cache_key};
use crate::classifier::Classifier;
use crate::http::error::ApiError;
use crate::inference::InferenceQueue;
use crate::telemetry::metrics;

/// What the pipeline decided for one text.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub prediction: Arc<Prediction>,
    pub cache_hit: bool,
    /// Time in the model, queue wait included; `None` for a cache hit.
    pub inference_ms: Option<f64>,
}

/// The request pipeline. Cheap to share: everything inside is behind an `Arc`.
#[derive(Clone)]
pub struct Pipeline {
    classifier: Arc<dyn Classifier>,
    queue: Arc<InferenceQueue>,
    cache: Option<Arc<dyn ResponseCache>>,
    inference_timeout: Duration,
}

impl Pipeline {
    /// `cache: None` disables caching (`CACHE_ENABLED=false`).
    pub fn new(
        classifier: Arc<dyn Classifier>,
        queue: Arc<InferenceQueue>,
        cache: Option<Arc<dyn ResponseCache>>,
        inference_timeout: Duration,
    ) -> Self {
        Self { classifier, queue, cache, inference_timeout }
    }

    pub fn classifier(&self) -> &dyn Classifier {
        self.classifier.as_ref()
    }

    pub fn cache_backend(&self) -> &'static str {
        self.cache.as_ref().map_or("disabled", |c| c.backend())
    }

    /// Classifies a validated text.
    pub async fn infer(&self, text: String) -> Result<Outcome, ApiError> {
        let key =
            self.cache.as_ref().map(|_| cache_key(self.classifier.model_version(), &self.classifier.normalize(&text)));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            let hit = cache.get(key).await;
            metrics::record_cache(hit.is_some());
            if let Some(prediction) = hit {
                return Ok(Outcome { prediction, cache_hit: true, inference_ms: None });
            }
        }
        let started = std::time::Instant::now();
        let prediction = Arc::new(self.queue.predict(text, self.inference_timeout).await?);
        let inference_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.put(key, Arc::clone(&prediction)).await;
        }
        Ok(Outcome { prediction, cache_hit: false, inference_ms })
    }
}
