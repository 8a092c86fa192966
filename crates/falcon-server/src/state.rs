//! Shared state handed to every handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::ballast::MemoryBallast;
use crate::cache::redis::RedisStore;
use crate::idempotency::IdempotencyStore;
use crate::pipeline::Pipeline;
use crate::request_log::RequestLog;

/// Whether this worker should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    model_loaded: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_model_loaded(&self, loaded: bool) {
        self.model_loaded.store(loaded, Ordering::SeqCst);
    }

    pub fn model_loaded(&self) -> bool {
        self.model_loaded.load(Ordering::SeqCst)
    }

    /// Shutdown has begun: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn ready(&self) -> bool {
        self.model_loaded() && !self.draining()
    }
}

/// Per-worker settings the handlers need.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub worker_id: String,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// How long a request waits for a concurrent one with the same idempotency key.
    pub idempotency_wait: Duration,
}

/// Cloned into every request; everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<HttpSettings>,
    pub pipeline: Pipeline,
    /// `None`: `IDEMPOTENCY_ENABLED=false`.
    pub idempotency: Option<Arc<IdempotencyStore>>,
    /// `None`: Redis not configured.
    pub redis: Option<Arc<RedisStore>>,
    /// `None`: `REQUEST_LOG_ENABLED=false`.
    pub request_log: Option<RequestLog>,
    /// Whether the request-log database answered last time; `None` without a request log.
    pub database_available: Option<Arc<AtomicBool>>,
    pub readiness: Arc<Readiness>,
    pub started: Instant,
    /// `Some` only during the memory-growth drill (`DEBUG_MEMORY_GROWTH=true`).
    pub ballast: Option<Arc<MemoryBallast>>,
    /// `None` renders an empty /metrics (socket-less handler tests).
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    pub fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }
}
