//! Building and running a worker: assemble the pipeline from the configuration, bind the
//! listener, serve until a shutdown signal, drain within the grace period, then stop every
//! background task in order.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use falcon_backend::Backend;
use tokio::net::TcpListener;

use crate::http::server;
use crate::http::{AppState, router};
use falcon_app::adapters::cache::redis::{RedisCache, RedisStore};
use falcon_app::adapters::cache::{MemoryCache, ResponseCache};
use falcon_app::adapters::idempotency::IdempotencyStore;
use falcon_app::adapters::request_log::{self, RequestLog, Sink, WriterConfig};
use falcon_app::adapters::resilience::retry::RETRY_WARNING_INTERVAL;
use falcon_app::adapters::resilience::{CircuitBreaker, RetryPolicy};
use falcon_app::ballast::MemoryBallast;
use falcon_app::config::Config;
use falcon_app::config::ConnectionLimits;
use falcon_app::lifecycle::Shadow;
use falcon_app::models::{ModelLoader, QueueShape, Registry, Repository};
use falcon_app::pipeline::access::{Admission, ApiKeys, RateLimits};
use falcon_app::pipeline::{Parts, Pipeline, Readiness};
use falcon_app::tasks::Background;
use falcon_app::telemetry::metrics;
use falcon_app::telemetry::throttle::{LogLimiter, Throttle};
use falcon_app::text_key::TextKey;

pub use falcon_app::lifecycle::{LoadedBackend, Reloader};

/// The models a worker starts with: its repository, each model loaded, how to load them
/// again (hot reload, the repository's load), and an optional candidate to shadow-score
/// against the default model.
pub struct Models {
    pub repository: Repository,
    /// One loaded model per model of the repository, by name.
    pub loaded: BTreeMap<String, LoadedBackend>,
    pub loader: Option<ModelLoader>,
    /// The backends this build knows (the repository file is checked against them when it
    /// is read again).
    pub backends: Vec<String>,
    pub shadow: Option<LoadedBackend>,
}

impl From<LoadedBackend> for Models {
    /// The zero-config worker: this one model, named `sentiment`, not reloadable.
    fn from(serving: LoadedBackend) -> Self {
        let backend = serving.backend.name().to_owned();
        let repository = Repository::single(&backend, None);
        let loaded = BTreeMap::from([(repository.default.clone(), serving)]);
        Self { repository, loaded, loader: None, backends: vec![backend], shadow: None }
    }
}

/// A worker with its listener bound, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
    drain_delay: Duration,
    limits: ConnectionLimits,
    background: Background,
}

impl Application {
    /// Installs the metrics recorder (once per process), assembles the worker around
    /// `model` and binds `HOST:PORT`. Fails, with the cause, on bad dependency settings or
    /// an address in use.
    pub async fn build(config: &Config, models: impl Into<Models>) -> anyhow::Result<Self> {
        let models = models.into();
        let handle = metrics::install(&config.worker_id());
        for (name, model) in &models.loaded {
            let backend = &model.backend;
            tracing::info!(
                model = %name,
                model_path = %model.source,
                backend = backend.name(),
                model_version = backend.model_version(),
                load_ms = model.load_time.as_secs_f64() * 1000.0,
                "Model loaded"
            );
        }
        let load_time = models.loaded.values().map(|m| m.load_time).sum();
        metrics::record_model_loaded(load_time);
        // Bound before anything that leaves state behind (the spool) is opened: a port in
        // use fails the start with nothing to clean up. Nothing is accepted until `run`.
        let addr = SocketAddr::new(config.server.host, config.server.port);
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (PORT/HOST)"))?;
        let (state, background) = build_state_with(config, models, handle).await?;
        let limits = config.connection_limits();
        Ok(Self {
            listener,
            state,
            shutdown_timeout: config.shutdown_timeout(),
            drain_delay: config.shutdown_drain_delay(),
            limits,
            background,
        })
    }

    /// The bound address (tests bind port 0 and read the real port here).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains: `/readyz` turns 503 (and the worker
    /// keeps serving for `SHUTDOWN_DRAIN_DELAY_SECONDS`), the listener closes, in-flight
    /// requests finish. Waits at most the grace period for them, then
    /// stops the background tasks (the request log flushes last).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let Self { listener, state, shutdown_timeout: grace, drain_delay, limits, background } = self;
        let readiness = Arc::clone(state.pipeline.readiness());
        let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            readiness.start_draining();
            tracing::info!(
                grace_seconds = grace.as_secs_f64(),
                drain_delay_seconds = drain_delay.as_secs_f64(),
                "Shutdown signal received, draining in-flight requests"
            );
            // Still accepting, /readyz 503: load balancers that poll readiness see the
            // worker leave before its listener closes.
            if !drain_delay.is_zero() {
                tokio::time::sleep(drain_delay).await;
            }
            let _ = drain_tx.send(true);
        };
        tracing::info!(
            address = %addr,
            max_connections = limits.max_connections,
            header_read_timeout_seconds = limits.header_read_timeout.as_secs_f64(),
            cache = state.pipeline.cache_backend(),
            model_version = state.pipeline.backend().model_version(),
            model_path = %state.pipeline.model().source(),
            models = state.pipeline.models().served().len(),
            "Worker listening"
        );
        let closing = Arc::clone(state.pipeline.readiness());
        let server = server::serve(listener, router(state), limits, signal, move || closing.listener_closed());
        let grace_expired = async move {
            let _ = drain_rx.wait_for(|draining| *draining).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = server => {}
            () = grace_expired => {
                tracing::warn!(grace_seconds = grace.as_secs_f64(), "Graceful shutdown timed out; exiting with requests still in flight");
            }
        }
        // The server and its handles on the pipeline are gone: the cache writer sees its
        // queue close, the probes see the stop signal, the request log flushes.
        background.shutdown(grace).await;
        tracing::info!("Worker stopped");
        Ok(())
    }
}

/// Assembles the pipeline and its background tasks from the configuration: the one
/// builder for the binary and for tests (which pass their own backend and no metrics).
pub async fn build_state(
    config: &Config,
    backend: Arc<dyn Backend>,
    metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<(AppState, Background)> {
    let serving = LoadedBackend { backend, source: "built-in".into(), load_time: Duration::ZERO };
    build_state_with(config, serving.into(), metrics_handle).await
}

/// `build_state` with a reloader and a shadow model.
pub async fn build_state_with(
    config: &Config,
    models: Models,
    metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<(AppState, Background)> {
    let mut background = Background::new();
    match assemble(config, models, metrics_handle, &mut background).await {
        Ok(state) => Ok((state, background)),
        Err(e) => {
            // What started is stopped before the error is returned: the request log's
            // writer closes its spool, so a failed start leaves no segment behind.
            background.shutdown(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

async fn assemble(
    config: &Config,
    models: Models,
    metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    background: &mut Background,
) -> anyhow::Result<AppState> {
    let worker_id = config.worker_id();
    // The checks that can fail come before anything that starts.
    let a = &config.access;
    let api_keys = ApiKeys::load(a.api_keys_file.as_deref(), a.api_keys.as_ref().map(|k| k.expose()))
        .map_err(|e| anyhow::anyhow!("{e} (API_KEYS_FILE / API_KEYS)"))?;
    let text_key = match a.text_hash_key.as_ref().map(|k| k.expose()).filter(|k| !k.is_empty()) {
        Some(key) => TextKey::new(key.as_bytes()),
        None => TextKey::load_or_create(&a.text_hash_key_file),
    }
    .map_err(|e| anyhow::anyhow!("{e} (TEXT_HASH_KEY / TEXT_HASH_KEY_FILE)"))?;
    let metrics_handle = metrics_handle.map(Arc::new);
    if let Some(h) = &metrics_handle {
        background
            .spawn("metrics_upkeep", metrics::run_upkeep(Arc::clone(h), Duration::from_secs(5), background.stopping()));
    }
    let (redis, cache, idempotency) = build_stores(config, background)?;
    let (request_log, database_available) = build_request_log(config, background).await?;
    let shape = QueueShape {
        threads: config.inference_threads(),
        capacity: config.server.inference_queue_capacity as usize,
        max_batch: config.server.max_batch_size as usize,
        max_wait: Duration::from_millis(config.server.max_batch_wait_ms),
    };
    let Models { repository, loaded, loader, backends, shadow } = models;
    let reloadable = loader.is_some();
    let reload_timeout = Duration::from_secs_f64(config.server.model_reload_timeout_seconds);
    let models = Arc::new(Registry::start(repository, loaded, loader, backends, shape, reload_timeout)?);
    let readiness = Arc::new(Readiness::default());
    readiness.set_model_loaded(true);
    let shadow = match shadow {
        Some(candidate) => Some(
            Shadow::start(candidate.backend, &candidate.source, config.server.shadow_sample_rate)
                .context("cannot start the shadow model's thread")?,
        ),
        None => None,
    };
    if reloadable {
        background.spawn("model_reload_signal", reload_on_sighup(Arc::clone(&models), background.stopping()));
    }
    metrics::register_access(&api_keys.ids());
    if api_keys.is_empty() && !config.server.host.is_loopback() {
        tracing::warn!(host = %config.server.host, "No API keys configured (API_KEYS_FILE): the inference routes are open to anyone who can reach this address");
    } else if !api_keys.is_empty() {
        tracing::info!(keys = api_keys.ids().len(), "API keys required on the inference routes");
    }
    let rate_limited = a.rate_limit_enabled;
    let rate_limits = rate_limited.then(|| RateLimits::new(a.rate_limit_per_minute, a.rate_limit_burst));
    let pipeline = Pipeline::new(Parts {
        worker_id,
        models,
        shadow,
        cache,
        idempotency,
        request_log,
        database_available,
        redis,
        ballast: config
            .debug
            .debug_memory_growth
            .then(|| MemoryBallast::start(config.debug.debug_memory_growth_mb_per_request)),
        readiness,
        inference_timeout: config.inference_timeout(),
        request_timeout: config.request_timeout(),
        idempotency_wait: config.inference_timeout() + 2 * config.redis_operation_timeout(),
        closed_log: LogLimiter::new(crate::http::error::ERROR_LINES_PER_SECOND, Duration::from_secs(1)),
        api_keys,
        rate_limits,
        admission: (a.max_concurrent_requests > 0).then(|| Admission::new(a.max_concurrent_requests as usize)),
        max_batch_texts: a.max_batch_texts as usize,
        text_key,
        path_metrics: falcon_app::telemetry::metrics::PathMetrics::new(),
    });
    if rate_limited {
        background.spawn("rate_limit_upkeep", forget_idle_clients(pipeline.clone(), background.stopping()));
    }
    let state = AppState::new(crate::http::Shared {
        pipeline,
        max_body_bytes: config.server.max_request_body_bytes as usize,
        body_budget: crate::http::body::BodyBudget::new(config.server.max_body_bytes_in_flight),
        started: Instant::now(),
        metrics: metrics_handle,
        error_log: Arc::new(LogLimiter::new(crate::http::error::ERROR_LINES_PER_SECOND, Duration::from_secs(1))),
        trusted_proxies: Arc::new(config.access.trusted_proxies.clone()),
    });
    Ok(state)
}

/// The request-log writer: Postgres when configured, else the embedded SQLite file.
async fn build_request_log(
    config: &Config,
    background: &mut Background,
) -> anyhow::Result<(Option<RequestLog>, Option<Arc<std::sync::atomic::AtomicBool>>)> {
    let d = &config.database;
    if !d.request_log_enabled {
        return Ok((None, None));
    }
    let timeout = config.postgres_operation_timeout();
    let sink = match config.postgres_url() {
        Some(url) => Sink::postgres(url.expose(), d.postgres_pool_size, timeout)
            .context("invalid Postgres settings (DATABASE_URL / POSTGRES_*)")?,
        None => Sink::sqlite(&d.request_log_sqlite_path, d.log_writer_nice, timeout).await.with_context(|| {
            format!("cannot open the request log {} (REQUEST_LOG_SQLITE_PATH)", d.request_log_sqlite_path.display())
        })?,
    };
    let backend = sink.backend();
    let breaker = Arc::new(CircuitBreaker::new("postgres", config.breaker()));
    let writer_config = WriterConfig {
        buffer_size: d.log_buffer_size as usize,
        batch_size: d.log_batch_size as usize,
        batch_window: d.log_batch_window_ms.map_or_else(|| sink.default_batch_window(), Duration::from_millis),
        op_timeout: timeout,
        concurrency: d.log_writer_concurrency as usize,
        priority: d.log_writer_nice,
        retention: request_log::Retention::days(d.request_log_retention_days),
    };
    let spool = config.log_spool_dir().and_then(|dir| open_spool(dir, config));
    let spooled = spool.is_some();
    let (log, writer, probe) = request_log::start(sink, breaker, writer_config, spool, background.stopping());
    let available = writer.availability();
    background.spawn("database_probe", probe);
    background.set_writer(writer);
    tracing::info!(backend, buffer_size = d.log_buffer_size, spool = spooled, "Request log enabled");
    Ok((Some(log), Some(available)))
}

/// Opens the request-log spool. A worker serves without one rather than not at all: an
/// unusable directory is an `ERROR` line, and records then wait in memory.
fn open_spool(dir: &std::path::Path, config: &Config) -> Option<request_log::Spooling> {
    match request_log::open_spool(dir, &config.worker_id(), config.database.log_spool_max_bytes) {
        Ok((spooling, leftover)) => {
            if leftover.journal_bytes > 0 || leftover.imported > 0 {
                tracing::info!(path = %dir.display(), bytes = leftover.journal_bytes, imported = leftover.imported, "Log spool from an earlier run will be replayed");
            }
            Some(spooling)
        }
        Err(error) => {
            tracing::error!(path = %dir.display(), error = %error, "Cannot open the log spool (LOG_SPOOL_DIR); request-log records wait in memory only (LOG_BUFFER_SIZE) and a crash loses them");
            None
        }
    }
}

type Stores = (Option<Arc<RedisStore>>, Option<Arc<dyn ResponseCache>>, Option<Arc<IdempotencyStore>>);

/// Redis when configured (shared cache and idempotency, breaker, retries), else the
/// in-process cache and idempotency store.
/// How often each worker deletes the idempotency records and locks that are due: they live
/// at most this much past their TTL.
const IDEMPOTENCY_SWEEP_EVERY: Duration = Duration::from_secs(5);

fn build_stores(config: &Config, background: &mut Background) -> anyhow::Result<Stores> {
    let ttl = Duration::from_secs(config.cache.cache_ttl_seconds);
    let idem_ttl = Duration::from_secs(config.idempotency.idempotency_ttl_seconds);
    let Some(url) = config.redis_url() else {
        let cache = config
            .cache
            .cache_enabled
            .then(|| Arc::new(MemoryCache::new(config.cache.cache_max_entries, ttl)) as Arc<dyn ResponseCache>);
        let max = config.idempotency.idempotency_max_entries as usize;
        let idem = config
            .idempotency
            .idempotency_enabled
            .then(|| Arc::new(IdempotencyStore::memory(idem_ttl, max, config.idempotency_claim_ttl())));
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
        warnings: Arc::new(Throttle::new(RETRY_WARNING_INTERVAL)),
    };
    let store = Arc::new(
        RedisStore::new(url.expose(), breaker, retry, config.redis_operation_timeout())
            .context("invalid Redis settings (REDIS_URL / REDIS_HOST)")?,
    );
    background.spawn("redis_probe", Arc::clone(&store).run_health_probe(Duration::from_secs(1), background.stopping()));
    let l1_ttl = Duration::from_secs(config.redis.cache_l1_ttl_seconds.min(config.cache.cache_ttl_seconds));
    let cache = config.cache.cache_enabled.then(|| {
        let l1 = (!l1_ttl.is_zero()).then(|| MemoryCache::new(config.redis.cache_l1_max_entries, l1_ttl));
        let (cache, writer) = RedisCache::new(Arc::clone(&store), ttl, l1);
        background.spawn("redis_cache_writer", writer);
        Arc::new(cache) as Arc<dyn ResponseCache>
    });
    let idem = config
        .idempotency
        .idempotency_enabled
        .then(|| Arc::new(IdempotencyStore::redis(Arc::clone(&store), idem_ttl, config.idempotency_claim_ttl())));
    if let Some(idem) = &idem {
        // Records carry no Redis TTL (so `volatile-lru` never evicts them): the workers
        // delete them when they are due.
        background
            .spawn("idempotency_sweeper", Arc::clone(idem).run_sweeper(IDEMPOTENCY_SWEEP_EVERY, background.stopping()));
    }
    tracing::info!(l1_ttl_seconds = l1_ttl.as_secs(), "Using Redis for the response cache and idempotency keys");
    Ok((Some(store), cache, idem))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
/// Rate-limit state of clients that have been idle long enough is dropped every minute,
/// so the limiter's memory follows the active clients, not every address ever seen.
async fn forget_idle_clients(pipeline: Pipeline, mut stopping: falcon_app::shutdown::Stopping) {
    let mut ticks = falcon_app::shutdown::every(Duration::from_secs(60));
    while stopping.tick(&mut ticks).await {
        pipeline.forget_idle_clients();
    }
}

/// SIGHUP reloads every served model (each as `POST /admin/reload` does the default one; a
/// model that fails keeps its old version), until the worker stops.
async fn reload_on_sighup(models: Arc<Registry>, mut stopping: falcon_app::shutdown::Stopping) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => {
                // Each outcome is logged and counted by its model's reload.
                let _ = models.reload_all("SIGHUP").await;
            }
            () = stopping.wait() => return,
        }
    }
}

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
