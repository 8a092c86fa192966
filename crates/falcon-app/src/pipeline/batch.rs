//! `POST /infer/batch` (and OIP): many texts in one request. Each text is validated and
//! looked up in the cache on its own; the rest go to the model as one batch; each gets its own
//! answer (or its own error) in order, and its own request-log row. A bad text fails only
//! itself, except in an all-or-nothing batch (OIP), where it fails the request.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use falcon_backend::Prediction;

use super::answer::{Answer, AnsweredBy, BatchInferred};
use super::row::{Answered, Outcome, TextFacts};
use super::{InferError, Model, Pipeline, RequestMeta, Subject, validate_text};
use crate::telemetry::metrics;

/// What the transport read of a batch request: its entries, unchecked.
#[derive(Debug)]
pub struct BatchCommand {
    /// Each entry's text; `None`: the entry is not a string (its own validation error).
    pub texts: Vec<Option<String>>,
    /// One failed text fails the request (the Open Inference Protocol answers a tensor or an
    /// error): it is then one row and one error, and no text's prediction is counted.
    /// Otherwise (`POST /infer/batch`) each text has its own answer or error.
    pub all_or_nothing: bool,
    /// The model the client named; `None`: the default model.
    pub model: Option<String>,
}

/// One text's way through the batch.
struct Slot {
    text: Option<String>,
    /// What its row keeps of the text (when the entry is a string).
    facts: Option<TextFacts>,
    result: Option<Result<Answer, InferError>>,
    cache_key: Option<String>,
    inference_ms: Option<f64>,
}

/// The first failed text's error (a validation error names its entry), if any.
fn first_failure<'a>(results: impl Iterator<Item = Option<&'a Result<Answer, InferError>>>) -> Result<(), InferError> {
    for (i, result) in results.enumerate() {
        match result {
            Some(Err(InferError::Validation(m))) => return Err(InferError::Validation(format!("entry {i}: {m}"))),
            Some(Err(e)) => return Err(e.clone()),
            _ => {}
        }
    }
    Ok(())
}

impl Pipeline {
    /// Runs one batch request: admission, API key and rate limit (once for the batch),
    /// then each text. The batch itself fails only for what concerns all of it (the body,
    /// the key, the limits, readiness); then it is one row.
    pub async fn infer_batch(
        &self,
        meta: &RequestMeta,
        command: impl Future<Output = Result<BatchCommand, InferError>>,
    ) -> Result<BatchInferred, InferError> {
        let (subject, result) = self.admitted(meta, command, async |c, s| self.run_batch(meta, c, s).await).await;
        let elapsed = meta.received.elapsed();
        match result {
            Ok(mut answer) => {
                // Served from the cache when the cache answered every text (the model was
                // not asked): as a single request whose answer came from the cache.
                let cache_hit = answer.results.iter().all(|r| r.as_ref().is_ok_and(|a| a.cache_hit));
                self.count_request(subject.model.as_deref(), Ok((cache_hit, !cache_hit)), elapsed);
                answer.processing_time = elapsed;
                Ok(answer)
            }
            // The whole batch failed: one row, as a single request would have.
            Err(e) => match self.finish(meta, subject, Err(e)) {
                Err(e) => Err(e),
                Ok(_) => Err(InferError::Internal("a failed batch was answered".into())),
            },
        }
    }

    async fn run_batch(
        &self,
        meta: &RequestMeta,
        command: BatchCommand,
        subject: &mut Subject,
    ) -> Result<BatchInferred, InferError> {
        let max = self.0.max_batch_texts;
        if command.texts.is_empty() || command.texts.len() > max {
            return Err(InferError::Validation(format!(
                "\"texts\" must hold 1 to {max} texts (MAX_BATCH_TEXTS); it holds {}",
                command.texts.len()
            )));
        }
        let served = self.resolve(command.model.as_deref(), subject)?;
        let backend = served.current();
        let model = Model { served: &served, backend: &backend };
        let mut slots: Vec<Slot> = command.texts.into_iter().map(|v| self.check(model, v)).collect();
        if command.all_or_nothing {
            // A bad entry fails the request before the cache or the model is asked.
            first_failure(slots.iter().map(|s| s.result.as_ref()))?;
        }
        self.answer_from_cache(&mut slots).await;
        let deadline = meta.received + self.0.request_timeout;
        let started = Instant::now();
        let todo: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].result.is_none()).collect();
        let texts: Vec<String> = todo.iter().filter_map(|&i| slots[i].text.clone()).collect();
        if !texts.is_empty() {
            let answers = tokio::time::timeout_at(
                deadline,
                served.queue().predict_many(&backend, texts, self.0.inference_timeout),
            )
            .await
            .map_err(|_| InferError::RequestTimeout(self.0.request_timeout))??;
            let inference_ms = started.elapsed().as_secs_f64() * 1000.0;
            for (&i, answer) in todo.iter().zip(answers) {
                let slot = &mut slots[i];
                slot.inference_ms = Some(inference_ms);
                slot.result = Some(match answer {
                    Ok(p) => {
                        let prediction = Arc::new(p);
                        if let (Some(cache), Some(key)) = (&self.0.cache, slot.cache_key.take()) {
                            cache.put(key, Arc::clone(&prediction)).await;
                        }
                        Ok(Answer { prediction, cache_hit: false, idempotency_hit: false })
                    }
                    Err(e) => Err(InferError::from(crate::adapters::inference::QueueError::Backend(e))),
                });
            }
        }
        let elapsed = meta.received.elapsed();
        // A text the model gave no answer for (it answered fewer than it was asked) fails alone.
        let results: Vec<Result<Answer, InferError>> = slots
            .iter_mut()
            .map(|s| s.result.take().unwrap_or_else(|| Err(InferError::Internal("no answer".into()))))
            .collect();
        if command.all_or_nothing {
            first_failure(results.iter().map(Some))?;
        }
        for (slot, result) in slots.iter().zip(&results) {
            self.log_text(meta, subject, model, slot, result, elapsed);
        }
        let by = AnsweredBy { name: Arc::clone(served.name()), model: backend };
        Ok(BatchInferred { results, by, processing_time: elapsed })
    }

    /// A text as the batch will treat it: its validation error, or ready for the cache.
    fn check(&self, model: Model<'_>, entry: Option<String>) -> Slot {
        let backend = model.backend;
        let mut slot = Slot { text: None, facts: None, result: None, cache_key: None, inference_ms: None };
        let Some(text) = entry else {
            slot.result = Some(Err(InferError::Validation("each entry of \"texts\" must be a string".into())));
            return slot;
        };
        slot.facts = Some(TextFacts::of(&text, &self.0.text_key));
        if let Err(e) = validate_text(&text, backend.max_input_chars()) {
            slot.result = Some(Err(e));
            slot.text = Some(text);
            return slot;
        }
        slot.cache_key = self.0.cache.as_ref().map(|_| self.cache_key(model.served, backend, &text));
        slot.text = Some(text);
        slot
    }

    async fn answer_from_cache(&self, slots: &mut [Slot]) {
        let Some(cache) = &self.0.cache else { return };
        for slot in slots.iter_mut().filter(|s| s.result.is_none()) {
            let Some(key) = &slot.cache_key else { continue };
            let hit: Option<Arc<Prediction>> = cache.get(key).await;
            self.0.path_metrics.cache(hit.is_some());
            if let Some(prediction) = hit {
                slot.result = Some(Ok(Answer { prediction, cache_hit: true, idempotency_hit: false }));
                slot.cache_key = None;
            }
        }
    }

    /// The text's row, counters and prediction metrics, for its `result`.
    fn log_text(
        &self,
        meta: &RequestMeta,
        subject: &Subject,
        model: Model<'_>,
        slot: &Slot,
        result: &Result<Answer, InferError>,
        elapsed: std::time::Duration,
    ) {
        metrics::record_batch_text(result.is_ok());
        self.0.path_metrics.text(result.is_ok());
        let backend = model.backend;
        let length = slot.facts.as_ref().map(|t| t.length);
        if let Ok(answer) = result {
            model.served.predictions().record(answer.label(backend.labels()), answer.prediction.confidence, length);
        }
        let Some(log) = &self.0.request_log else { return };
        let result = match result {
            Ok(answer) => Ok(Answered { labels: backend.labels(), answer }),
            Err(e) => Err((e.error_type(), e.to_string())),
        };
        Outcome {
            meta,
            worker_id: &self.0.worker_id,
            model_version: backend.model_version(),
            text: slot.facts.as_ref(),
            idempotency_key: None,
            api_key_id: subject.api_key_id.as_deref(),
            model_name: Some(model.served.name()),
            elapsed,
            inference_ms: slot.inference_ms,
            result,
        }
        .log_to(log);
    }
}
