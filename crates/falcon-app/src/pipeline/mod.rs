//! The application layer: the whole story of one inference request, and nothing of HTTP.
//!
//! `Pipeline::infer` takes what the transport made of a request (a command, or why it
//! could not make one) and runs it: readiness, validation, the idempotency protocol
//! (claim, replay, release), the response cache, the model, the response, the request-log
//! row and the request metrics. Each of those happens here and only here; the HTTP layer
//! extracts, calls, and maps the error.

pub mod access;
mod answer;
mod batch;
mod error;
mod row;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use falcon_backend::Backend;
use futures_util::FutureExt;
use tokio::time::Instant;

pub use self::answer::{Answer, AnsweredBy, BatchInferred, Inferred};
pub use self::batch::BatchCommand;
pub use self::error::InferError;
use self::row::TextFacts;
use crate::adapters::cache::ResponseCache;
use crate::adapters::cache::redis::RedisStore;
use crate::adapters::idempotency::{Claim, ClaimGuard, IdempotencyStore, Record, StoredAnswer};
use crate::adapters::request_log::RequestLog;
use crate::ballast::MemoryBallast;
use crate::error_type::shown;
use crate::lifecycle::{ModelSlot, Shadow};
use crate::models::{Registry, ServedModel};
use crate::telemetry::metrics;
use crate::telemetry::throttle::LogLimiter;

/// What identifies a request, whatever it asks.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    /// The client's address, as the transport saw it (or as a trusted proxy reported it).
    pub client_ip: Option<String>,
    /// When the request arrived; the whole-request deadline counts from here.
    pub received: Instant,
    /// The `Authorization` header, for the API-key check (redacted in `Debug`).
    pub authorization: access::Credential,
}

/// A request to classify one text.
#[derive(Debug, Clone)]
pub struct InferCommand {
    pub text: String,
    /// The model the client named; `None`: the default model.
    pub model: Option<String>,
    /// The client's idempotency key, unchecked (the pipeline validates it).
    pub idempotency_key: Option<String>,
}

/// Whether this worker should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    model_loaded: AtomicBool,
    draining: AtomicBool,
    /// The listener has closed (after the drain delay): requests still waiting on their
    /// client (a half-sent body) are answered 503 from then on.
    closed: AtomicBool,
    /// Fires once when the listener closes, for whoever waits on a client.
    drain_started: tokio::sync::Notify,
}

impl Readiness {
    pub fn set_model_loaded(&self, loaded: bool) {
        self.model_loaded.store(loaded, Ordering::SeqCst);
    }

    pub fn model_loaded(&self) -> bool {
        self.model_loaded.load(Ordering::SeqCst)
    }

    /// Shutdown has begun: readiness turns false from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The listener has closed: no new connection reaches this worker, and requests still
    /// waiting on their client are let go (a load balancer retries them elsewhere).
    pub fn listener_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.drain_started.notify_waiters();
    }

    /// Completes once the listener has closed (at once if it already has).
    pub async fn drained(&self) {
        let started = self.drain_started.notified();
        tokio::pin!(started);
        // Registered before the check, so a close in between still wakes it.
        started.as_mut().enable();
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        started.await;
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn ready(&self) -> bool {
        self.model_loaded() && !self.draining()
    }
}

/// What `/readyz` and `/` report.
#[derive(Debug, Clone)]
pub struct Health {
    pub ready: bool,
    pub model_loaded: bool,
    pub draining: bool,
    /// `None` when no Redis is configured.
    pub redis_available: Option<bool>,
    /// `None` when the request log is off.
    pub database_available: Option<bool>,
    pub cache_backend: &'static str,
    pub idempotency_backend: &'static str,
    pub request_log: &'static str,
    /// The default model's version.
    pub model_version: String,
    /// Every model served, by name, with its version.
    pub models: Vec<(Arc<str>, String)>,
}

/// Checks a text against the API's rules; the error says what is wrong.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), InferError> {
    if text.chars().all(invisible) {
        return Err(InferError::Validation(
            "text must not be empty or only whitespace, control or invisible format characters".into(),
        ));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(InferError::Validation(format!("text has {chars} characters; the limit is {max_chars}")));
    }
    Ok(())
}

/// Characters that show nothing: whitespace, control characters (NUL included), the
/// Unicode format characters a text can be padded with (zero-width space and joiners,
/// soft hyphen, bidirectional marks, word joiner, byte-order mark, tags), variation
/// selectors, and the letters that are blank by design (Hangul fillers, the blank braille
/// pattern, the combining grapheme joiner).
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}')
}

/// Checks a client's idempotency key: 1–128 visible ASCII characters.
pub fn validate_key(key: &str) -> Result<(), InferError> {
    if (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(InferError::Validation("X-Idempotency-Key must be 1-128 visible ASCII characters".into()))
    }
}

/// Everything the pipeline runs on; `startup` assembles it from the configuration.
pub struct Parts {
    pub worker_id: String,
    /// The served models, each with its queue: a request takes one snapshot of its model
    /// (hot reload swaps it; unloading it lets the request finish).
    pub models: Arc<Registry>,
    /// A candidate model scoring a sample of the default model's live texts
    /// (`SHADOW_MODEL_PATH`).
    pub shadow: Option<Shadow>,
    /// `None`: `CACHE_ENABLED=false`.
    pub cache: Option<Arc<dyn ResponseCache>>,
    /// `None`: `IDEMPOTENCY_ENABLED=false`.
    pub idempotency: Option<Arc<IdempotencyStore>>,
    /// `None`: `REQUEST_LOG_ENABLED=false`.
    pub request_log: Option<RequestLog>,
    /// Whether the request-log database answered last time.
    pub database_available: Option<Arc<AtomicBool>>,
    /// `None`: Redis not configured.
    pub redis: Option<Arc<RedisStore>>,
    /// `Some` only during the memory-growth drill (`DEBUG_MEMORY_GROWTH=true`).
    pub ballast: Option<MemoryBallast>,
    pub readiness: Arc<Readiness>,
    pub inference_timeout: Duration,
    pub request_timeout: Duration,
    /// How long a request waits for a concurrent one with the same idempotency key.
    pub idempotency_wait: Duration,
    /// Rate limit of "client closed" log lines.
    pub closed_log: LogLimiter,
    /// API keys (`API_KEYS_FILE`, `API_KEYS`); empty: the API is open.
    pub api_keys: access::ApiKeys,
    /// `None`: `RATE_LIMIT_ENABLED=false`.
    pub rate_limits: Option<access::RateLimits>,
    /// `None`: `MAX_CONCURRENT_REQUESTS=0`.
    pub admission: Option<access::Admission>,
    /// `MAX_BATCH_TEXTS`.
    pub max_batch_texts: usize,
    /// The deployment's key for every stored hash of a text (`TEXT_HASH_KEY`).
    pub text_key: crate::text_key::TextKey,
    /// The per-request series without a model label (resolved after the recorder).
    pub path_metrics: metrics::PathMetrics,
}

/// The application layer. Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct Pipeline(Arc<Parts>);

/// What serving a request produced.
struct Served {
    answer: Answer,
    /// The model snapshot the request ran on.
    model: Arc<dyn Backend>,
    /// The served model it belongs to.
    served: Arc<ServedModel>,
    /// Time in the model, queue wait included; `None` when it did not run.
    inference_ms: Option<f64>,
}

/// The model one request runs on: the served model and the snapshot taken of it.
#[derive(Clone, Copy)]
struct Model<'a> {
    served: &'a Arc<ServedModel>,
    backend: &'a Arc<dyn Backend>,
}

/// Records a request whose future was dropped before it finished.
struct Unfinished<'a> {
    pipeline: &'a Pipeline,
    meta: &'a RequestMeta,
    armed: bool,
}

impl Unfinished<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Counted by the HTTP layer, which counts every error once; this writes the row.
        let error = InferError::ClientClosed;
        let error_type = error.error_type().as_str();
        if let Some(suppressed) = self.pipeline.0.closed_log.admit(error_type) {
            tracing::warn!(request_id = %self.meta.request_id, error_type, suppressed, "Client closed the connection before the answer");
        }
        let _ = self.pipeline.finish(self.meta, Subject::default(), Err(error));
    }
}

/// What the request log keeps of the request's text: never the text itself.
#[derive(Default)]
struct Subject {
    text: Option<TextFacts>,
    idempotency_key: Option<String>,
    /// The model the request named (once it is known to be served).
    model: Option<Arc<ServedModel>>,
    /// A name the request gave for a model this worker does not serve (as shown to a
    /// client), for the row.
    unknown_model: Option<String>,
    /// The model the request ran on (its snapshot), for the row.
    model_version: Option<String>,
    /// The API key the request was made with (its id).
    api_key_id: Option<Arc<str>>,
}

impl Pipeline {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    pub fn worker_id(&self) -> &str {
        &self.0.worker_id
    }

    /// The default model being served now (a snapshot: a reload does not change it under
    /// you).
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.0.models.default_model().current()
    }

    /// The default model's slot: `POST /admin/reload` goes through it.
    pub fn model(&self) -> &Arc<ModelSlot> {
        self.0.models.default_model().slot()
    }

    /// The served models.
    pub fn models(&self) -> &Arc<Registry> {
        &self.0.models
    }

    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.0.readiness
    }

    pub fn request_timeout(&self) -> Duration {
        self.0.request_timeout
    }

    /// Most texts a batch may hold (`MAX_BATCH_TEXTS`).
    pub fn max_batch_texts(&self) -> usize {
        self.0.max_batch_texts
    }

    /// How the inference threads batch: (threads, the most queued requests one thread takes
    /// at a wake-up). They take what is waiting and never wait for more.
    pub fn inference_threads(&self) -> (usize, usize) {
        self.0.models.default_model().queue().shape()
    }

    pub fn cache_backend(&self) -> &'static str {
        self.0.cache.as_ref().map_or("disabled", |c| c.backend())
    }

    pub fn health(&self) -> Health {
        let p = &self.0;
        Health {
            ready: p.readiness.ready(),
            model_loaded: p.readiness.model_loaded(),
            draining: p.readiness.draining(),
            redis_available: p.redis.as_ref().map(|r| r.reachable()),
            database_available: p.database_available.as_ref().map(|a| a.load(Ordering::Relaxed)),
            cache_backend: self.cache_backend(),
            idempotency_backend: p.idempotency.as_ref().map_or("disabled", |i| i.backend()),
            request_log: p.request_log.as_ref().map_or("disabled", RequestLog::backend),
            model_version: self.backend().model_version().to_owned(),
            models: p
                .models
                .served()
                .iter()
                .map(|m| (Arc::clone(m.name()), m.current().model_version().to_owned()))
                .collect(),
        }
    }

    /// Runs one inference request. `command` is how the transport reads it: it yields the
    /// command, or why it could not read one (that outcome is logged and counted too).
    /// Every call ends in exactly one request-log row and one `inference_requests_total`,
    /// also when the call is dropped half-way (the client hung up): then as `client_closed`.
    pub async fn infer(
        &self,
        meta: &RequestMeta,
        command: impl Future<Output = Result<InferCommand, InferError>>,
    ) -> Result<Inferred, InferError> {
        let (subject, result) = self.admitted(meta, command, async |c, s| self.run(meta, c, s).await).await;
        self.finish(meta, subject, result)
    }

    /// The scaffold every request shares, whatever it asks and whatever its protocol:
    /// admission (the place, the API key, the rate limit) before the body is read, so a
    /// refused request costs microseconds; then the transport's command; then, with a model
    /// loaded, `work`. A request dropped on the way (the client hung up) still ends in one
    /// `client_closed` row.
    async fn admitted<C, T>(
        &self,
        meta: &RequestMeta,
        command: impl Future<Output = Result<C, InferError>>,
        work: impl AsyncFnOnce(C, &mut Subject) -> Result<T, InferError>,
    ) -> (Subject, Result<T, InferError>) {
        let unfinished = Unfinished { pipeline: self, meta, armed: true };
        let mut subject = Subject::default();
        let result = match self.admit(meta, &mut subject) {
            Err(e) => Err(e),
            Ok(_place) => {
                if let Some(ballast) = &self.0.ballast {
                    ballast.grow();
                }
                let command = command.await;
                // Not ready outranks a bad command: the client should try another worker.
                if !self.0.readiness.model_loaded() {
                    Err(InferError::NotReady("model not loaded"))
                } else {
                    match command {
                        Ok(command) => work(command, &mut subject).await,
                        Err(e) => Err(e),
                    }
                }
            }
        };
        unfinished.disarm();
        (subject, result)
    }

    /// Admission (`MAX_CONCURRENT_REQUESTS`), the API key, the client's rate limit. The
    /// place keeps the request's permit, and its count in progress, until it is dropped.
    fn admit(&self, meta: &RequestMeta, subject: &mut Subject) -> Result<access::Place<'_>, InferError> {
        let place = access::Place::take(self.0.admission.as_ref(), &self.0.path_metrics)?;
        let caller = match self.0.api_keys.authenticate(meta.authorization.expose(), access::Scope::Infer) {
            Ok(caller) => caller,
            Err(refused) => {
                // A wrong or missing key spends the client address's budget, so guessing
                // keys is throttled like any other traffic (past it: 429, not 401).
                if let Some(limits) = &self.0.rate_limits {
                    Self::check_address(limits, meta)?;
                }
                return Err(refused);
            }
        };
        subject.api_key_id = caller.key_id().map(Arc::from);
        if let Some(limits) = &self.0.rate_limits {
            match caller.key_id() {
                Some(id) => limits.check(&format!("key:{id}"), "api_key").map(drop)?,
                None => Self::check_address(limits, meta)?,
            }
        }
        Ok(place)
    }

    /// Spends one of the client address's budget.
    fn check_address(limits: &access::RateLimits, meta: &RequestMeta) -> Result<(), InferError> {
        let ip = meta.client_ip.as_deref().unwrap_or("unknown");
        limits.check(&format!("ip:{ip}"), "ip").map(drop)
    }

    /// May this request reload the model? With API keys: a key with the `admin` scope.
    /// Without: only a direct request from this host (`local`).
    pub fn authorize_admin(&self, meta: &RequestMeta, local: bool) -> Result<(), InferError> {
        if self.0.api_keys.is_empty() {
            return if local {
                Ok(())
            } else {
                Err(InferError::Forbidden(
                    "admin endpoints answer only direct requests from this host (or an admin API key)",
                ))
            };
        }
        self.0.api_keys.authenticate(meta.authorization.expose(), access::Scope::Admin).map(|_| ())
    }

    /// Forgets rate-limit state of clients idle long enough (called now and then).
    pub fn forget_idle_clients(&self) {
        if let Some(limits) = &self.0.rate_limits {
            limits.forget_idle();
        }
    }

    async fn run(
        &self,
        meta: &RequestMeta,
        command: InferCommand,
        subject: &mut Subject,
    ) -> Result<Served, InferError> {
        let InferCommand { text, model, idempotency_key } = command;
        // One model for the whole request: its cache key, inference, answer and row.
        let served = self.resolve(model.as_deref(), subject)?;
        let backend = served.current();
        subject.model_version = Some(backend.model_version().to_owned());
        validate_text(&text, backend.max_input_chars())?;
        let facts = TextFacts::of(&text, &self.0.text_key);
        let fp = facts.hash.clone();
        subject.text = Some(facts);
        if let Some(key) = &idempotency_key {
            validate_key(key)?;
        }
        subject.idempotency_key.clone_from(&idempotency_key);
        let deadline = meta.received + self.0.request_timeout;
        // With API keys, each key has its own idempotency keys: another client's `k` is not
        // this one's (neither a conflict nor a replay of its answer).
        let store_key = idempotency_key.map(|key| match &subject.api_key_id {
            Some(id) => format!("{id}:{key}"),
            None => key,
        });
        let model = Model { served: &served, backend: &backend };
        let serve = AssertUnwindSafe(self.serve(meta, model, text, store_key, fp)).catch_unwind();
        match crate::deadline::within(deadline, serve).await {
            Ok(Ok(served)) => served,
            Ok(Err(_)) => Err(InferError::Internal("request handling panicked".into())),
            Err(_) => Err(InferError::RequestTimeout(self.0.request_timeout)),
        }
    }

    /// The idempotency protocol around `compute`.
    async fn serve(
        &self,
        meta: &RequestMeta,
        model: Model<'_>,
        text: String,
        key: Option<String>,
        fp: String,
    ) -> Result<Served, InferError> {
        let backend = model.backend;
        let (Some(store), Some(key)) = (&self.0.idempotency, key) else {
            return self.compute(model, text).await;
        };
        match store.claim(&key, &fp, self.0.idempotency_wait).await {
            // The same key and text for another model is another request.
            Claim::Replay(stored) if !stored.made_by(model.served.name()) => Err(InferError::IdempotencyConflict),
            // A record made by another version (before a reload) is not replayed: the new
            // version answers (the record stays as it was; the key is not reused for storing).
            Claim::Replay(stored) if stored.model_version != backend.model_version() => self.compute(model, text).await,
            // The stored answer, marked as a replay (a record that does not fit the model's
            // labels is not replayed either).
            Claim::Replay(stored) => match stored.prediction(backend.labels()) {
                Some(prediction) => Ok(Served {
                    answer: Answer {
                        prediction: Arc::new(prediction),
                        cache_hit: stored.cache_hit,
                        idempotency_hit: true,
                    },
                    model: Arc::clone(backend),
                    served: Arc::clone(model.served),
                    inference_ms: None,
                }),
                None => self.compute(model, text).await,
            },
            Claim::Conflict => Err(InferError::IdempotencyConflict),
            Claim::Unavailable => self.compute(model, text).await,
            Claim::Fresh => {
                // Released on drop if this future never gets to settle the claim (the
                // client went away, or the handler panicked).
                let guard = ClaimGuard::new(Arc::clone(store), &key);
                let served = self.compute(model, text).await;
                match &served {
                    Ok(s) => {
                        let mut stored = StoredAnswer::new(
                            &s.answer.prediction,
                            backend.labels(),
                            backend.model_version(),
                            &self.0.worker_id,
                            &meta.request_id,
                        );
                        stored.cache_hit = s.answer.cache_hit;
                        stored.model = Some(model.served.name().to_string());
                        store.complete(&key, Record { fingerprint: fp, response: stored }).await;
                    }
                    Err(_) => store.release(&key).await,
                }
                guard.settled();
                served
            }
        }
    }

    /// Cache, then the model, then the cache again; then, for a sampled request to the
    /// default model, the shadow model (which never holds up the answer).
    async fn compute(&self, model: Model<'_>, text: String) -> Result<Served, InferError> {
        let shadow = self.0.shadow.as_ref().filter(|_| Arc::ptr_eq(model.served, self.0.models.default_model()));
        let shadow_text = shadow.filter(|s| s.sampled()).map(|_| text.clone());
        let served = self.compute_live(model, text).await;
        if let (Some(shadow), Some(text), Ok(s)) = (shadow, shadow_text, &served) {
            shadow.score(text, s.answer.label(model.backend.labels()));
        }
        served
    }

    async fn compute_live(&self, model: Model<'_>, text: String) -> Result<Served, InferError> {
        let Model { served, backend } = model;
        let key = self.0.cache.as_ref().map(|_| self.cache_key(served, backend, &text));
        if let (Some(cache), Some(key)) = (&self.0.cache, &key) {
            let hit = cache.get(key).await;
            self.0.path_metrics.cache(hit.is_some());
            if let Some(prediction) = hit {
                let answer = Answer { prediction, cache_hit: true, idempotency_hit: false };
                return Ok(Served {
                    answer,
                    model: Arc::clone(backend),
                    served: Arc::clone(served),
                    inference_ms: None,
                });
            }
        }
        let started = Instant::now();
        let prediction = Arc::new(served.queue().predict(backend, text, self.0.inference_timeout).await?);
        let inference_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        if let (Some(cache), Some(key)) = (&self.0.cache, key) {
            cache.put(key, Arc::clone(&prediction)).await;
        }
        let answer = Answer { prediction, cache_hit: false, idempotency_hit: false };
        Ok(Served { answer, model: Arc::clone(backend), served: Arc::clone(served), inference_ms })
    }

    /// A text's response-cache key: the model's name and version and the normalised text.
    fn cache_key(&self, served: &ServedModel, backend: &Arc<dyn Backend>, text: &str) -> String {
        self.0.text_key.cache_key(served.name(), backend.model_version(), &backend.normalize(text))
    }

    /// The served model `name` names (`None`: the default) for `subject`; a name this worker
    /// does not serve is kept, as shown to a client (bounded, control characters escaped),
    /// for the row.
    fn resolve(&self, name: Option<&str>, subject: &mut Subject) -> Result<Arc<ServedModel>, InferError> {
        let served = self.0.models.get(name).inspect_err(|_| subject.unknown_model = name.map(shown))?;
        subject.model = Some(Arc::clone(&served));
        Ok(served)
    }

    /// Counts one request: `inference_requests_total` and its duration, under its model's
    /// label (without one when it failed before its model was known), and its model's
    /// statistics. `outcome`: whether the cache answered, and whether the model ran.
    fn count_request(&self, model: Option<&ServedModel>, outcome: Result<(bool, bool), ()>, elapsed: Duration) {
        let cache_hit = outcome.is_ok_and(|(hit, _)| hit);
        let Some(model) = model else {
            return metrics::record_request(outcome.is_ok(), cache_hit, elapsed);
        };
        model.requests().record(outcome.is_ok(), cache_hit, elapsed);
        let stats = model.stats();
        match outcome {
            Ok((cache_hit, ran)) => {
                stats.success.add(1, elapsed);
                if cache_hit {
                    stats.cache_hit.add(1, elapsed);
                } else if self.0.cache.is_some() && ran {
                    stats.cache_miss.add(1, elapsed);
                }
            }
            Err(()) => stats.fail.add(1, elapsed),
        }
    }

    /// Stamps the time taken, writes the one row, counts the one request.
    fn finish(
        &self,
        meta: &RequestMeta,
        subject: Subject,
        result: Result<Served, InferError>,
    ) -> Result<Inferred, InferError> {
        let elapsed = meta.received.elapsed();
        let outcome = result.as_ref().map(|s| (s.answer.cache_hit, s.inference_ms.is_some())).map_err(drop);
        self.count_request(subject.model.as_deref(), outcome, elapsed);
        self.0.path_metrics.text(result.is_ok());
        let subject_key = subject.api_key_id.clone();
        if let Some(id) = &subject_key {
            metrics::record_api_key_request(id);
        }
        if let Ok(Served { answer, model, served, .. }) = &result
            && !answer.idempotency_hit
        {
            let length = subject.text.as_ref().map(|t| t.length);
            served.predictions().record(answer.label(model.labels()), answer.prediction.confidence, length);
        }
        if let Some(log) = &self.0.request_log {
            let model_version = subject.model_version.unwrap_or_else(|| self.backend().model_version().to_owned());
            let (inference_ms, outcome) = match &result {
                Ok(Served { answer, model, inference_ms, .. }) => {
                    (*inference_ms, Ok(row::Answered { labels: model.labels(), answer }))
                }
                Err(e) => (None, Err((e.error_type(), e.to_string()))),
            };
            row::Outcome {
                meta,
                worker_id: &self.0.worker_id,
                model_version: &model_version,
                text: subject.text.as_ref(),
                idempotency_key: subject.idempotency_key,
                api_key_id: subject.api_key_id.as_deref(),
                model_name: subject.model.as_ref().map(|m| &**m.name()).or(subject.unknown_model.as_deref()),
                elapsed,
                inference_ms,
                result: outcome,
            }
            .log_to(log);
        }
        result.map(|Served { answer, model, served, .. }| {
            let by = AnsweredBy { name: Arc::clone(served.name()), model };
            let served = Inferred { answer, by, processing_time: elapsed };
            tracing::debug!(request_id = %meta.request_id, prediction = served.label(), cache_hit = served.answer.cache_hit, idempotency_hit = served.answer.idempotency_hit, api_key_id = subject_key.as_deref(), "Inference served");
            served
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits_count_characters_not_bytes() {
        assert!(validate_text(&"é".repeat(10_000), 10_000).is_ok(), "10000 two-byte characters fit");
        assert!(validate_text(&"a".repeat(10_001), 10_000).is_err());
        assert!(validate_text("", 10).is_err());
        assert!(validate_text(" \n\t ", 10).is_err());
        for blank in [
            "\u{200B}\u{200B}",
            "\0\0",
            "\u{FEFF} \u{2060}",
            "\u{202E}\u{00AD}",
            "\u{E0041}\u{E007F}",
            "\u{3164}\u{115F}\u{1160}\u{FFA0}",
            "\u{2800}",
            "\u{FE0F}\u{E0100}\u{034F}",
        ] {
            assert!(validate_text(blank, 10).is_err(), "{blank:?} looks blank");
        }
        assert!(validate_text("\u{200B}ok", 10).is_ok());
        assert!(validate_text("x", 10).is_ok());
    }

    #[test]
    fn keys_are_visible_ascii_up_to_128() {
        assert!(validate_key("order-42_x:y/z").is_ok());
        assert!(validate_key(&"k".repeat(128)).is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(129)).is_err());
        assert!(validate_key("has space").is_err());
        assert!(validate_key("é").is_err());
    }
}
