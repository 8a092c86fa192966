//! Redis: one connection manager shared by the response cache and the idempotency store,
//! behind the `redis` circuit breaker, retries, and a total per-operation deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use falcon_backend::Prediction;
use metrics::counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue};

use super::memory::MemoryCache;
use super::{BoxFuture, ResponseCache};
use crate::adapters::resilience::{CircuitBreaker, RetryPolicy};
use crate::telemetry::metrics::{CACHE_ERRORS, FALLBACK_TRIGGERED};
use crate::telemetry::throttle::Throttle;

/// Why a Redis operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("circuit breaker open; Redis not contacted")]
    CircuitOpen,
    #[error("Redis operation timeout: no answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unreadable value in Redis: {0}")]
    Decode(String),
}

/// Counts a degradation: the request goes on without Redis.
pub fn record_fallback(fallback_type: &'static str) {
    counter!(FALLBACK_TRIGGERED, "dependency" => "redis", "fallback_type" => fallback_type).increment(1);
}

/// A shared Redis connection with resilience around every call.
pub struct RedisStore {
    conn: ConnectionManager,
    breaker: Arc<CircuitBreaker>,
    retry: RetryPolicy,
    op_timeout: Duration,
    reachable: AtomicBool,
    warnings: Throttle,
}

/// How often "Redis unavailable" may be logged.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl RedisStore {
    /// Creates the connection lazily: no network until the first call, so a worker starts
    /// while Redis is down.
    pub fn new(
        url: &str,
        breaker: Arc<CircuitBreaker>,
        retry: RetryPolicy,
        op_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            // Our retry policy and breaker decide about retries; the manager only reconnects.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            breaker,
            retry,
            op_timeout,
            reachable: AtomicBool::new(false),
            warnings: Throttle::new(WARNING_INTERVAL),
        })
    }

    /// Whether the last health probe reached Redis (`/readyz` `checks.redis_available`).
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Runs one command through the breaker, with retries, within `op_timeout` in total.
    pub async fn call<T: FromRedisValue>(&self, operation: &'static str, cmd: &Cmd) -> Result<T, StoreError> {
        self.guarded(operation, || {
            let mut conn = self.conn.clone();
            async move { cmd.query_async::<T>(&mut conn).await }
        })
        .await
    }

    /// Runs a pipeline (one round trip) like `call`.
    pub async fn call_pipeline(&self, operation: &'static str, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        self.guarded(operation, || {
            let mut conn = self.conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
    }

    async fn guarded<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.try_acquire() {
            return Err(StoreError::CircuitOpen);
        }
        let result = tokio::time::timeout(self.op_timeout, self.retry.run(operation, is_transient, attempt)).await;
        match result {
            Ok(Ok(v)) => {
                self.breaker.record_success();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.breaker.record_failure();
                self.failed(operation, &e);
                Err(StoreError::Redis(e))
            }
            Err(_) => {
                self.breaker.record_failure();
                let e = StoreError::Timeout(self.op_timeout);
                self.failed(operation, &e);
                Err(e)
            }
        }
    }

    fn failed(&self, operation: &'static str, error: &dyn std::error::Error) {
        counter!(CACHE_ERRORS, "operation" => operation).increment(1);
        if self.warnings.ready() {
            tracing::warn!(operation, error = %error, "Redis unavailable; serving without cache and idempotency");
        }
    }

    /// PINGs Redis every `every`; a success closes the breaker at once, so the cache is
    /// back as soon as Redis is, not after the breaker's open period.
    pub async fn run_health_probe(self: Arc<Self>, every: Duration, mut stopping: crate::shutdown::Stopping) {
        let mut ticks = crate::shutdown::every(every);
        while stopping.tick(&mut ticks).await {
            let mut conn = self.conn.clone();
            let ping = tokio::time::timeout(self.op_timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
            let ok = matches!(ping, Ok(Ok(_)));
            let was = self.reachable.swap(ok, Ordering::Relaxed);
            if ok {
                self.breaker.probe_succeeded();
                if !was {
                    tracing::info!("Redis reachable");
                }
            } else if was {
                tracing::warn!("Redis unavailable: health probe failed");
            }
        }
    }
}

/// Drains the write queue in batches until every sender is gone (the cache is dropped).
async fn write_behind(store: Arc<RedisStore>, ttl: Duration, mut queue: tokio::sync::mpsc::Receiver<(String, String)>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (key, json) in batch.drain(..) {
            pipe.cmd("SET").arg(key).arg(json).arg("EX").arg(ttl.as_secs().max(1)).ignore();
        }
        if store.call_pipeline("set", &pipe).await.is_err() {
            record_fallback("cache_bypass");
        }
    }
}

fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Cache writes waiting for the writer; beyond this they are dropped (and counted).
const WRITE_QUEUE: usize = 4096;
/// Most `SET`s sent in one pipelined round trip.
const WRITE_BATCH: usize = 128;

/// The shared response cache: an in-process L1 (bounded, short TTL) in front of Redis.
///
/// Writes are behind the response: a request hands its entry to a writer task and answers
/// at once; the writer sends whatever has queued up as one pipeline of `SET … EX`. A
/// request never waits on a cache write, and Redis sees one round trip per batch.
pub struct RedisCache {
    store: Arc<RedisStore>,
    l1: Option<MemoryCache>,
    writes: tokio::sync::mpsc::Sender<(String, String)>,
}

impl RedisCache {
    /// `l1`: `None` disables the in-process layer. Returns the cache and its writer task,
    /// for the caller to run; the writer ends once the cache is dropped and its queue is
    /// written.
    pub fn new(
        store: Arc<RedisStore>,
        ttl: Duration,
        l1: Option<MemoryCache>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (writes, queue) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let writer = write_behind(Arc::clone(&store), ttl, queue);
        (Self { store, l1, writes }, writer)
    }

    async fn get_remote(&self, key: &str) -> Option<Arc<Prediction>> {
        match self.store.call::<Option<String>>("get", redis::cmd("GET").arg(key)).await {
            Ok(Some(json)) => match serde_json::from_str::<Prediction>(&json) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    counter!(CACHE_ERRORS, "operation" => "decode").increment(1);
                    tracing::warn!(key, error = %e, "Unreadable cache entry ignored");
                    None
                }
            },
            Ok(None) => None,
            Err(_) => {
                record_fallback("cache_bypass");
                None
            }
        }
    }
}

impl ResponseCache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Arc<Prediction>>> {
        Box::pin(async move {
            if let Some(hit) = self.l1.as_ref().and_then(|l1| l1.get_now(key, Instant::now())) {
                return Some(hit);
            }
            let hit = self.get_remote(key).await;
            if let (Some(l1), Some(p)) = (&self.l1, &hit) {
                l1.put_now(key, Arc::clone(p), Instant::now());
            }
            hit
        })
    }

    fn put(&self, key: String, value: Arc<Prediction>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(l1) = &self.l1 {
                l1.put_now(&key, Arc::clone(&value), Instant::now());
            }
            let Ok(json) = serde_json::to_string(value.as_ref()) else { return };
            if self.writes.try_send((key, json)).is_err() {
                record_fallback("cache_write_dropped");
            }
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
