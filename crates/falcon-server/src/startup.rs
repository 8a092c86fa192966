//! Building and running a worker: load the model, bind the listener, serve until a
//! shutdown signal, drain within the grace period.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use falcon_model::SentimentModel;
use tokio::net::TcpListener;

use crate::ballast::MemoryBallast;
use crate::cache::redis::{RedisCache, RedisStore};
use crate::cache::{MemoryCache, ResponseCache};
use crate::classifier::Classifier;
use crate::config::Config;
use crate::http::router;
use crate::idempotency::IdempotencyStore;
use crate::inference::InferenceQueue;
use crate::pipeline::Pipeline;
use crate::request_log::{self, RequestLog, Sink, Spool, Writer, WriterConfig};
use crate::resilience::{CircuitBreaker, RetryPolicy};
use crate::state::{AppState, HttpSettings, Readiness};
use crate::telemetry::metrics;

/// A worker with its listener bound, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
    writer: Option<Writer>,
}

/// Loads and validates the model file, timing it.
pub fn load_model(path: &Path) -> anyhow::Result<(SentimentModel, Duration)> {
    let started = Instant::now();
    let model = SentimentModel::load(path)
        .context("cannot load the model (set MODEL_PATH to a model file made by `falcon train`)")?;
    Ok((model, started.elapsed()))
}

impl Application {
    /// Loads the model from `MODEL_PATH` and binds `HOST:PORT`. Fails, with the cause,
    /// on a missing or broken model or an address in use: there is no fallback model.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // The recorder first, so the model's load time and version are recorded.
        metrics::install(&config.worker_id());
        let path = config.server.model_path.clone();
        let (model, took) = tokio::task::spawn_blocking(move || load_model(&path)).await??;
        tracing::info!(
            model_path = %config.server.model_path.display(),
            model_version = model.model_version(),
            features = model.n_features(),
            load_ms = took.as_secs_f64() * 1000.0,
            "Model loaded"
        );
        metrics::record_model_loaded(took, model.model_version());
        Self::build_with_classifier(config, Arc::new(model)).await
    }

    /// Like `build`, with a given classifier (tests use slow or failing ones).
    pub async fn build_with_classifier(config: &Config, classifier: Arc<dyn Classifier>) -> anyhow::Result<Self> {
        let worker_id = config.worker_id();
        let handle = metrics::install(&worker_id);
        for (variable, consequence) in config.planned.inert_requests() {
            tracing::warn!(variable, "{variable} is set, but {consequence}");
        }
        let (redis, cache, idempotency) = build_stores(config)?;
        let (request_log, writer) = build_request_log(config).await?;
        let queue = Arc::new(
            InferenceQueue::start(
                Arc::clone(&classifier),
                config.inference_threads(),
                config.server.inference_queue_capacity as usize,
                config.server.inference_max_batch as usize,
            )
            .context("cannot start the inference threads")?,
        );
        let addr = SocketAddr::new(config.server.host, config.server.port);
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (PORT/HOST)"))?;
        let readiness = Arc::new(Readiness::default());
        readiness.set_model_loaded(true);
        let state = AppState {
            settings: Arc::new(HttpSettings {
                worker_id,
                max_body_bytes: config.server.max_request_body_bytes as usize,
                request_timeout: config.request_timeout(),
                idempotency_wait: config.inference_timeout() + 2 * config.redis_operation_timeout(),
            }),
            pipeline: Pipeline::new(classifier, queue, cache, config.inference_timeout()),
            idempotency,
            redis,
            request_log,
            database_available: writer.as_ref().map(Writer::availability),
            readiness,
            started: Instant::now(),
            ballast: config
                .debug
                .debug_memory_growth
                .then(|| Arc::new(MemoryBallast::start(config.debug.debug_memory_growth_mb_per_request))),
            metrics: Some(handle),
        };
        Ok(Self { listener, state, shutdown_timeout: config.shutdown_timeout(), writer })
    }

    /// The bound address (tests bind port 0 and read the real port here).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains: `/readyz` turns 503, the listener
    /// closes, in-flight requests finish. Waits at most the grace period for them.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let writer = self.writer.take();
        let readiness = Arc::clone(&self.state.readiness);
        let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
        let grace = self.shutdown_timeout;
        let signal = async move {
            shutdown.await;
            readiness.start_draining();
            tracing::info!(
                grace_seconds = grace.as_secs_f64(),
                "Shutdown signal received, draining in-flight requests"
            );
            let _ = drain_tx.send(true);
        };
        let upkeep = self.state.metrics.clone().map(|h| tokio::spawn(metrics::run_upkeep(h, Duration::from_secs(5))));
        let probe = self.state.redis.clone().map(|r| tokio::spawn(r.run_health_probe(Duration::from_secs(1))));
        tracing::info!(
            address = %addr,
            cache = self.state.pipeline.cache_backend(),
            model_version = self.state.pipeline.classifier().model_version(),
            "Worker listening"
        );
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(signal).into_future();
        let grace_expired = async move {
            let _ = drain_rx.wait_for(|draining| *draining).await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            r = server => r.context("HTTP server failed"),
            () = grace_expired => {
                tracing::warn!(grace_seconds = grace.as_secs_f64(), "Graceful shutdown timed out; exiting with requests still in flight");
                Ok(())
            }
        };
        for task in [upkeep, probe].into_iter().flatten() {
            task.abort();
        }
        // The server and every request-log handle are gone: let the writer flush.
        if let Some(writer) = writer {
            writer.finish(grace).await;
        }
        tracing::info!("Worker stopped");
        result
    }
}

/// The request-log writer: Postgres when configured, else the embedded SQLite file.
async fn build_request_log(config: &Config) -> anyhow::Result<(Option<RequestLog>, Option<Writer>)> {
    let d = &config.database;
    if !d.request_log_enabled {
        return Ok((None, None));
    }
    let timeout = config.postgres_operation_timeout();
    let sink = match config.postgres_url() {
        Some(url) => Sink::postgres(url.expose(), d.postgres_pool_size, timeout)
            .context("invalid Postgres settings (DATABASE_URL / POSTGRES_*)")?,
        None => Sink::sqlite(&d.request_log_sqlite_path).await.with_context(|| {
            format!("cannot open the request log {} (REQUEST_LOG_SQLITE_PATH)", d.request_log_sqlite_path.display())
        })?,
    };
    let backend = sink.backend();
    let breaker = Arc::new(CircuitBreaker::new("postgres", config.breaker()));
    let writer_config = WriterConfig {
        buffer_size: d.log_buffer_size as usize,
        batch_size: d.log_batch_size as usize,
        batch_window: Duration::from_millis(d.log_batch_window_ms),
        op_timeout: timeout,
    };
    let spool = match &d.log_spool_dir {
        Some(dir) => Some(
            Spool::open(dir, &config.worker_id(), d.log_spool_max_bytes)
                .with_context(|| format!("cannot open the log spool in {} (LOG_SPOOL_DIR)", dir.display()))?,
        ),
        None => None,
    };
    if let Some(s) = spool.as_ref().filter(|s| !s.is_empty()) {
        tracing::info!(path = %s.path().display(), bytes = s.bytes(), "Log spool from an earlier run will be replayed");
    }
    let (log, writer) = request_log::start(sink, breaker, writer_config, spool);
    tracing::info!(backend, buffer_size = d.log_buffer_size, "Request log enabled");
    Ok((Some(log), Some(writer)))
}

type Stores = (Option<Arc<RedisStore>>, Option<Arc<dyn ResponseCache>>, Option<Arc<IdempotencyStore>>);

/// Redis when configured (shared cache and idempotency, breaker, retries), else the
/// in-process cache and idempotency store.
fn build_stores(config: &Config) -> anyhow::Result<Stores> {
    let ttl = Duration::from_secs(config.cache.cache_ttl_seconds);
    let idem_ttl = Duration::from_secs(config.idempotency.idempotency_ttl_seconds);
    let Some(url) = config.redis_url() else {
        let cache = config
            .cache
            .cache_enabled
            .then(|| Arc::new(MemoryCache::new(config.cache.cache_max_entries, ttl)) as Arc<dyn ResponseCache>);
        let idem =
            config.idempotency.idempotency_enabled.then(|| Arc::new(IdempotencyStore::memory(idem_ttl, 100_000)));
        return Ok((None, cache, idem));
    };
    let r = &config.resilience;
    let breaker = Arc::new(CircuitBreaker::new("redis", config.breaker()));
    let retry = RetryPolicy {
        enabled: r.retry_enabled,
        max_attempts: r.retry_max_attempts,
        base_delay: Duration::from_millis(r.retry_base_delay_ms),
        max_delay: Duration::from_millis(r.retry_max_delay_ms),
        jitter: true,
    };
    let store = Arc::new(
        RedisStore::new(url.expose(), breaker, retry, config.redis_operation_timeout())
            .context("invalid Redis settings (REDIS_URL / REDIS_HOST)")?,
    );
    let l1_ttl = Duration::from_secs(config.redis.cache_l1_ttl_seconds.min(config.cache.cache_ttl_seconds));
    let cache = config.cache.cache_enabled.then(|| {
        let l1 = (!l1_ttl.is_zero()).then(|| MemoryCache::new(config.redis.cache_l1_max_entries, l1_ttl));
        Arc::new(RedisCache::new(Arc::clone(&store), ttl, l1)) as Arc<dyn ResponseCache>
    });
    let lock_ttl = config.inference_timeout() + Duration::from_secs(5);
    let idem = config
        .idempotency
        .idempotency_enabled
        .then(|| Arc::new(IdempotencyStore::redis(Arc::clone(&store), idem_ttl, lock_ttl)));
    tracing::info!(l1_ttl_seconds = l1_ttl.as_secs(), "Using Redis for the response cache and idempotency keys");
    Ok((Some(store), cache, idem))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
