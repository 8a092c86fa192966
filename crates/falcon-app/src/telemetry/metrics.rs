//! The Prometheus metric contract (names and labels are used by the runbook, the alerts
//! and the dashboard), the recorder, and its upkeep.
//!
//! Every metric name is a constant here, described and registered once by `install`;
//! the rest of the code records through these constants only. The `metrics` facade has
//! one recorder per process: `install` sets it, once, at start-up, and the handle that
//! renders `/metrics` travels in the application state.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error_type::ErrorType;

pub const INFERENCE_REQUESTS: &str = "inference_requests_total";
pub const INFERENCE_ERRORS: &str = "inference_errors_total";
pub const INFERENCE_DURATION: &str = "inference_duration_seconds";
/// Same observations as `inference_duration_seconds`, rendered as a summary so that
/// `grep inference_duration_seconds | grep quantile` shows live p50/p95/p99.
pub const INFERENCE_DURATION_SUMMARY: &str = "inference_duration_seconds_summary";
pub const CACHE_HITS: &str = "cache_hits_total";
pub const CACHE_MISSES: &str = "cache_misses_total";
pub const DB_DURATION: &str = "db_operation_duration_seconds";
pub const MODEL_INFERENCE_BATCH_SIZE: &str = "model_inference_batch_size";
pub const MODEL_QUEUE_WAIT: &str = "model_queue_wait_seconds";
pub const MODEL_FORWARD: &str = "model_forward_seconds";
pub const MODEL_INPUT_TRUNCATED: &str = "model_input_truncated_total";
pub const MODEL_LOAD_DURATION: &str = "model_load_duration_seconds";
pub const MEMORY_USAGE: &str = "memory_usage_bytes";
pub const BUILD_INFO: &str = "falcon_build_info";
/// The Prometheus convention: seconds since the epoch when the process started. A change
/// between two scrapes is a restart (`falcon doctor`, runbook incident #3).
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
pub const CACHE_ERRORS: &str = "cache_errors_total";
pub const IDEMPOTENCY_HITS: &str = "idempotency_hits_total";
pub const IDEMPOTENCY_MISSES: &str = "idempotency_misses_total";
pub const IDEMPOTENCY_EVICTIONS: &str = "idempotency_evictions_total";
pub const HTTP_CONNECTIONS_OPEN: &str = "http_connections_open";
pub const HTTP_CONNECTIONS_REFUSED: &str = "http_connections_refused_total";
pub const HTTP_ACCEPT_ERRORS: &str = "http_accept_errors_total";
pub const RETRY_ATTEMPTS: &str = "retry_attempts_total";
pub const FALLBACK_TRIGGERED: &str = "fallback_triggered_total";
pub const BREAKER_STATE: &str = "circuit_breaker_state";
pub const BREAKER_FAILURES: &str = "circuit_breaker_failures_total";
pub const BREAKER_SUCCESSES: &str = "circuit_breaker_successes_total";
pub const DB_OPERATIONS: &str = "db_operations_total";
pub const DB_POOL_SIZE: &str = "db_connection_pool_size";
pub const DB_POOL_AVAILABLE: &str = "db_connection_pool_available";
pub const LOG_BUFFER_SIZE: &str = "log_buffer_size";
pub const LOG_SPOOL_BYTES: &str = "log_spool_bytes";
pub const LOG_SPOOLED: &str = "log_spooled_total";
pub const LOG_REPLAYED: &str = "log_replayed_total";
pub const LOG_DEAD_LETTER: &str = "log_dead_letter_total";
pub const DROPPED_LOGS: &str = "dropped_logs_total";
pub const REQUEST_LOG_PARTITIONS_DROPPED: &str = "request_log_partitions_dropped_total";
pub const REQUEST_LOG_ROWS_PRUNED: &str = "request_log_rows_pruned_total";
pub const REQUEST_LOG_RETENTION_DAYS: &str = "request_log_retention_days";
pub const REQUEST_LOG_MAINTAINED_AT: &str = "request_log_maintenance_last_success_timestamp_seconds";
pub const REQUEST_LOG_DATABASE_BYTES: &str = "request_log_database_bytes";
pub const MEMORY_GROWTH_ENABLED: &str = "debug_memory_growth_enabled";
pub const MEMORY_GROWTH_BYTES: &str = "debug_memory_growth_bytes";
pub const RATE_LIMITED: &str = "rate_limited_total";
pub const CONCURRENCY_LIMITED: &str = "concurrency_limited_total";
pub const REQUESTS_IN_PROGRESS: &str = "inference_requests_in_progress";
pub const API_KEY_REQUESTS: &str = "api_key_requests_total";
pub const BATCH_TEXTS: &str = "batch_texts_total";
pub const INFERENCE_TEXTS: &str = "inference_texts_total";
pub const LOG_ROWS_WRITTEN: &str = "log_rows_written_total";
pub const ERRORS_WITHOUT_ROW: &str = "http_errors_without_row_total";
pub const MODEL_INFO: &str = "model_info";
pub const MODEL_RELOADS: &str = "model_reloads_total";
pub const MODEL_PREDICTIONS: &str = "model_predictions_total";
pub const MODEL_CONFIDENCE: &str = "model_prediction_confidence";
pub const MODEL_INPUT_LENGTH: &str = "model_input_length_chars";
pub const MODEL_REFERENCE_SHARE: &str = "model_reference_class_share";
pub const SHADOW_PREDICTIONS: &str = "shadow_predictions_total";
pub const SHADOW_AGREEMENT: &str = "shadow_agreement_total";
pub const SHADOW_DURATION: &str = "shadow_inference_duration_seconds";
pub const SHADOW_DROPPED: &str = "shadow_dropped_total";
pub const SHADOW_ERRORS: &str = "shadow_errors_total";

/// Histogram buckets from 100 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Request-log database operation buckets, 1 ms to 10 s.
pub const DB_DURATION_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Confidence of the predicted class: from a three-way tie (1/3) to certainty.
pub const CONFIDENCE_BUCKETS: [f64; 8] = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];

/// Input length in characters, up to the 10,000-character limit.
pub const INPUT_LENGTH_BUCKETS: [f64; 10] = [10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// Jobs per inference-thread wake-up.
pub const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Every `operation` label of Redis calls.
pub const REDIS_OPERATIONS: [&str; 7] =
    ["get", "set", "decode", "idempotency_get", "idempotency_lock", "idempotency_set", "idempotency_unlock"];

/// Installs the process's recorder, labels every series with `worker_id`, and registers
/// and describes every metric so each exists at 0 from boot. `None` if a recorder was
/// already installed in this process (then `/metrics` of this worker stays empty).
pub fn install(worker_id: &str) -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .add_global_label("worker_id", worker_id)
        .set_buckets_for_metric(Matcher::Full(INFERENCE_DURATION.into()), &DURATION_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DB_DURATION.into()), &DB_DURATION_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_INFERENCE_BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_CONFIDENCE.into()), &CONFIDENCE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_INPUT_LENGTH.into()), &INPUT_LENGTH_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SHADOW_DURATION.into()), &DURATION_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_QUEUE_WAIT.into()), &DURATION_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_FORWARD.into()), &DURATION_BUCKETS))
        // Histograms without buckets of their own render as summaries: that is
        // `inference_duration_seconds_summary` alone.
        .and_then(|b| b.set_quantiles(&[0.5, 0.95, 0.99]));
    let builder = match builder {
        Ok(b) => b,
        // The bucket and quantile lists are constants; this cannot fail.
        Err(_) => PrometheusBuilder::new(),
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        return None;
    }
    register_all();
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    gauge!(PROCESS_START_TIME).set(started.as_secs_f64());
    Some(handle)
}

fn register_all() {
    describe_counter!(INFERENCE_REQUESTS, "Inference requests answered, by outcome and whether the cache served them.");
    describe_counter!(INFERENCE_ERRORS, "Requests that ended in an error, by stable error_type.");
    describe_histogram!(INFERENCE_DURATION, Unit::Seconds, "Time to answer POST /infer.");
    describe_histogram!(
        INFERENCE_DURATION_SUMMARY,
        Unit::Seconds,
        "Time to answer POST /infer, as sliding-window quantiles (60 s)."
    );
    describe_counter!(CACHE_HITS, "Predictions served from the response cache.");
    describe_counter!(CACHE_MISSES, "Cache look-ups that found nothing and ran the model.");
    describe_histogram!(
        MODEL_INFERENCE_BATCH_SIZE,
        "Texts the model classified in one call: what an inference thread took in one wake-up, or 1 for a text run in place."
    );
    describe_histogram!(
        MODEL_QUEUE_WAIT,
        Unit::Seconds,
        "Time a request waited in its model's inference queue before a thread took it (gathering a batch included)."
    );
    describe_histogram!(
        MODEL_FORWARD,
        Unit::Seconds,
        "Time of one model call on an inference thread: a batch's forward pass, for a transformer."
    );
    describe_counter!(
        MODEL_INPUT_TRUNCATED,
        "Texts the model cut to the length it reads (minilm: 256 tokens), since the model was loaded."
    );
    describe_gauge!(PROCESS_START_TIME, Unit::Seconds, "When this worker process started (seconds since the epoch).");
    describe_gauge!(MODEL_LOAD_DURATION, Unit::Seconds, "Time the model file took to load at start-up.");
    describe_gauge!(MEMORY_USAGE, Unit::Bytes, "Resident set size of the worker process.");
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the build and model version.");
    for status in ["success", "error"] {
        for hit in ["true", "false"] {
            counter!(INFERENCE_REQUESTS, "status" => status, "cache_hit" => hit).absolute(0);
        }
    }
    // Every `error_type` this build can return, so each series exists at 0 before traffic.
    for error_type in ErrorType::ALL {
        counter!(INFERENCE_ERRORS, "error_type" => error_type.as_str()).absolute(0);
    }
    describe_counter!(
        INFERENCE_TEXTS,
        "Texts answered, by status: one per request-log row the pipeline makes (a /infer request, each text of a batch, a request that failed as a whole)."
    );
    describe_counter!(
        ERRORS_WITHOUT_ROW,
        "Error answers that made no request-log row (refused before an inference handler, an unknown model, the admin endpoint), by error_type."
    );
    for status in ["success", "error"] {
        counter!(INFERENCE_TEXTS, "status" => status).absolute(0);
    }
    for error_type in ErrorType::ALL {
        counter!(ERRORS_WITHOUT_ROW, "error_type" => error_type.as_str()).absolute(0);
    }
    counter!(CACHE_HITS).absolute(0);
    counter!(CACHE_MISSES).absolute(0);
    describe_counter!(CACHE_ERRORS, "Failed cache/idempotency operations against Redis, by operation.");
    describe_counter!(IDEMPOTENCY_HITS, "Requests answered by replaying a stored idempotent response.");
    describe_counter!(IDEMPOTENCY_MISSES, "Requests with an idempotency key that computed a new response.");
    describe_counter!(RETRY_ATTEMPTS, "Retries of dependency operations (first attempts not counted), by operation.");
    describe_counter!(FALLBACK_TRIGGERED, "Requests served in a degraded way because a dependency failed.");
    describe_gauge!(BREAKER_STATE, "Circuit breaker per dependency: 0 closed, 1 open, 2 half-open.");
    describe_counter!(BREAKER_FAILURES, "Dependency calls that failed, per breaker.");
    describe_counter!(BREAKER_SUCCESSES, "Dependency calls that succeeded, per breaker.");
    for operation in REDIS_OPERATIONS {
        counter!(CACHE_ERRORS, "operation" => operation).absolute(0);
        counter!(RETRY_ATTEMPTS, "operation" => operation).absolute(0);
    }
    counter!(IDEMPOTENCY_HITS).absolute(0);
    describe_counter!(
        IDEMPOTENCY_EVICTIONS,
        "Unexpired idempotency records the in-process store evicted to stay within IDEMPOTENCY_MAX_ENTRIES."
    );
    counter!(IDEMPOTENCY_EVICTIONS).absolute(0);
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "HTTP connections open now.");
    describe_counter!(HTTP_CONNECTIONS_REFUSED, "Connections closed at once because HTTP_MAX_CONNECTIONS were open.");
    describe_counter!(HTTP_ACCEPT_ERRORS, "Failed accept() calls (e.g. out of file descriptors); each backs off.");
    gauge!(HTTP_CONNECTIONS_OPEN).set(0.0);
    counter!(HTTP_CONNECTIONS_REFUSED).absolute(0);
    counter!(HTTP_ACCEPT_ERRORS).absolute(0);
    counter!(FALLBACK_TRIGGERED, "dependency" => "memory", "fallback_type" => "idempotency_bypass").absolute(0);
    counter!(IDEMPOTENCY_MISSES).absolute(0);
    for fallback_type in ["cache_bypass", "cache_write_dropped", "idempotency_bypass"] {
        counter!(FALLBACK_TRIGGERED, "dependency" => "redis", "fallback_type" => fallback_type).absolute(0);
    }
    describe_counter!(DB_OPERATIONS, "Request-log database operations, by operation and status.");
    describe_histogram!(DB_DURATION, Unit::Seconds, "Request-log database operation time.");
    describe_gauge!(DB_POOL_SIZE, "Connections open in the request-log pool.");
    describe_gauge!(DB_POOL_AVAILABLE, "Idle connections in the request-log pool.");
    describe_gauge!(LOG_BUFFER_SIZE, "Request-log records waiting for the database (spool and memory).");
    describe_counter!(
        DROPPED_LOGS,
        "Request-log records lost: spool (LOG_SPOOL_MAX_BYTES) and memory buffer full, unwritable at shutdown without a spool, or unreadable in the spool."
    );
    describe_counter!(
        LOG_SPOOLED,
        "Request-log records kept on disk beyond LOG_BUFFER_SIZE while the database fell behind or was away."
    );
    describe_counter!(
        LOG_REPLAYED,
        "Spooled request-log records written to the database later (including those of an earlier run)."
    );
    describe_counter!(
        LOG_DEAD_LETTER,
        "Request-log rows the database rejected (a constraint, a bad value), moved to the dead-letter file."
    );
    counter!(LOG_SPOOLED).absolute(0);
    counter!(LOG_REPLAYED).absolute(0);
    counter!(LOG_DEAD_LETTER).absolute(0);
    describe_counter!(
        REQUEST_LOG_PARTITIONS_DROPPED,
        "Day partitions of inference_logs dropped past REQUEST_LOG_RETENTION_DAYS (Postgres)."
    );
    counter!(REQUEST_LOG_PARTITIONS_DROPPED).absolute(0);
    describe_counter!(
        REQUEST_LOG_ROWS_PRUNED,
        "Rows of the embedded (SQLite) request log deleted past REQUEST_LOG_RETENTION_DAYS."
    );
    counter!(REQUEST_LOG_ROWS_PRUNED).absolute(0);
    describe_gauge!(REQUEST_LOG_RETENTION_DAYS, "REQUEST_LOG_RETENTION_DAYS as configured (0: rows kept forever).");
    describe_gauge!(
        REQUEST_LOG_MAINTAINED_AT,
        Unit::Seconds,
        "When the request log's maintenance (partitions ahead, retention) last completed, Unix time; 0 before the first."
    );
    gauge!(REQUEST_LOG_MAINTAINED_AT).set(0.0);
    describe_gauge!(
        REQUEST_LOG_DATABASE_BYTES,
        Unit::Bytes,
        "Size of the request log's database (Postgres: the database; SQLite: the file), read at each maintenance run."
    );
    describe_counter!(LOG_ROWS_WRITTEN, "Request-log rows the database has accepted.");
    counter!(LOG_ROWS_WRITTEN).absolute(0);
    for status in ["success", "error"] {
        counter!(DB_OPERATIONS, "operation" => "insert", "status" => status).absolute(0);
    }
    let _ = histogram!(DB_DURATION, "operation" => "insert");
    gauge!(DB_POOL_SIZE).set(0.0);
    gauge!(DB_POOL_AVAILABLE).set(0.0);
    gauge!(LOG_BUFFER_SIZE).set(0.0);
    describe_gauge!(
        LOG_SPOOL_BYTES,
        Unit::Bytes,
        "Request-log records in the spool (LOG_SPOOL_DIR) not yet in the database, in bytes."
    );
    gauge!(LOG_SPOOL_BYTES).set(0.0);
    counter!(DROPPED_LOGS).absolute(0);
    gauge!(BREAKER_STATE, "dependency" => "postgres").set(0.0);
    counter!(BREAKER_FAILURES, "dependency" => "postgres").absolute(0);
    counter!(BREAKER_SUCCESSES, "dependency" => "postgres").absolute(0);
    gauge!(BREAKER_STATE, "dependency" => "redis").set(0.0);
    counter!(BREAKER_FAILURES, "dependency" => "redis").absolute(0);
    counter!(BREAKER_SUCCESSES, "dependency" => "redis").absolute(0);
    for hit in ["true", "false"] {
        let _ = histogram!(INFERENCE_DURATION, "cache_hit" => hit);
        let _ = histogram!(INFERENCE_DURATION_SUMMARY, "cache_hit" => hit);
    }
    describe_gauge!(
        MEMORY_GROWTH_ENABLED,
        "1 while the memory-growth drill (DEBUG_MEMORY_GROWTH) is on: memory grows with every request."
    );
    describe_gauge!(MEMORY_GROWTH_BYTES, Unit::Bytes, "Memory kept by the memory-growth drill.");
    gauge!(MEMORY_GROWTH_ENABLED).set(0.0);
    gauge!(MEMORY_GROWTH_BYTES).set(0.0);
    describe_gauge!(
        MODEL_INFO,
        "1 for the version each model of this worker serves (0 for versions it served before a reload, and for a model unloaded)."
    );
    describe_counter!(MODEL_RELOADS, "Model reloads (SIGHUP, POST /admin/reload) by outcome.");
    for status in ["success", "failure"] {
        counter!(MODEL_RELOADS, "status" => status).absolute(0);
    }
    describe_counter!(MODEL_PREDICTIONS, "Answers served, by predicted class (idempotent replays excluded).");
    describe_histogram!(MODEL_CONFIDENCE, "Probability of the predicted class, per answer.");
    describe_histogram!(MODEL_INPUT_LENGTH, "Length of the classified text in characters, per answer.");
    describe_gauge!(
        MODEL_REFERENCE_SHARE,
        "Share of each class the served model predicted on its held-out test set (from the model file): the baseline for drift."
    );
    // The shadow series exist (at 0) without a shadow model too, so dashboards and alerts
    // that use them always parse against a real worker.
    describe_counter!(SHADOW_PREDICTIONS, "Sampled texts the shadow (candidate) model scored, by its predicted class.");
    describe_counter!(SHADOW_AGREEMENT, "Sampled texts by whether the shadow model agreed with the live answer.");
    describe_histogram!(SHADOW_DURATION, Unit::Seconds, "Time the shadow model took per sampled text.");
    describe_counter!(SHADOW_DROPPED, "Sampled texts not scored because the shadow model's queue was full.");
    describe_counter!(SHADOW_ERRORS, "Sampled texts the shadow model failed on.");
    for outcome in ["agree", "disagree"] {
        counter!(SHADOW_AGREEMENT, "outcome" => outcome).absolute(0);
    }
    counter!(SHADOW_DROPPED).absolute(0);
    counter!(SHADOW_ERRORS).absolute(0);
    let _ = histogram!(SHADOW_DURATION);
    update_memory_usage();
}

/// Registers the access metrics: `api_key_requests_total` for each configured key id (a
/// bounded label set), the rate-limit and admission refusals at 0.
pub fn register_access(key_ids: &[std::sync::Arc<str>]) {
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429 rate_limited, by what the budget was keyed on (api_key, ip)."
    );
    describe_counter!(
        CONCURRENCY_LIMITED,
        "Requests refused with 503 overloaded because MAX_CONCURRENT_REQUESTS were in progress."
    );
    describe_counter!(API_KEY_REQUESTS, "Inference requests by API key id (only configured ids).");
    for kind in ["api_key", "ip"] {
        counter!(RATE_LIMITED, "key_type" => kind).absolute(0);
    }
    counter!(CONCURRENCY_LIMITED).absolute(0);
    describe_gauge!(
        REQUESTS_IN_PROGRESS,
        "Inference requests admitted and not yet answered (each holds a MAX_CONCURRENT_REQUESTS place)."
    );
    gauge!(REQUESTS_IN_PROGRESS).set(0.0);
    for id in key_ids {
        counter!(API_KEY_REQUESTS, "api_key_id" => id.to_string()).absolute(0);
    }
    describe_counter!(BATCH_TEXTS, "Texts in POST /infer/batch requests, by outcome (success, error).");
    for outcome in ["success", "error"] {
        counter!(BATCH_TEXTS, "outcome" => outcome).absolute(0);
    }
}

pub fn record_rate_limited(key_type: &'static str) {
    counter!(RATE_LIMITED, "key_type" => key_type).increment(1);
}

pub fn record_concurrency_limited() {
    counter!(CONCURRENCY_LIMITED).increment(1);
}

pub fn record_api_key_request(id: &str) {
    counter!(API_KEY_REQUESTS, "api_key_id" => id.to_owned()).increment(1);
}

/// One error answer that made no request-log row.
pub fn record_error_without_row(error_type: ErrorType) {
    counter!(ERRORS_WITHOUT_ROW, "error_type" => error_type.as_str()).increment(1);
}

/// `rows` request-log rows are in the database.
pub fn record_rows_written(rows: usize) {
    counter!(LOG_ROWS_WRITTEN).increment(rows as u64);
}

pub fn record_batch_text(success: bool) {
    counter!(BATCH_TEXTS, "outcome" => if success { "success" } else { "error" }).increment(1);
}

/// `model_info{model, model_version}`: 1 for the version `model` serves now, 0 for the one
/// it replaced.
pub fn record_model_info(model: &str, version: &str, previous: Option<&str>) {
    if let Some(previous) = previous.filter(|p| *p != version) {
        gauge!(MODEL_INFO, "model" => model.to_owned(), "model_version" => previous.to_owned()).set(0.0);
    }
    gauge!(MODEL_INFO, "model" => model.to_owned(), "model_version" => version.to_owned()).set(1.0);
}

/// `model_info` of a model no longer served: 0.
pub fn record_model_unloaded(model: &str, version: &str) {
    gauge!(MODEL_INFO, "model" => model.to_owned(), "model_version" => version.to_owned()).set(0.0);
}

/// `falcon_build_info{version, model_version}`: the build, and the default model's version.
pub fn record_build_info(version: &str, previous: Option<&str>) {
    if let Some(previous) = previous.filter(|p| *p != version) {
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "model_version" => previous.to_owned()).set(0.0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "model_version" => version.to_owned()).set(1.0);
}

/// A model's baseline class mix, and zeroed prediction counters for its labels.
pub fn record_reference_shares(model: &str, labels: &[String], shares: Option<&[f64]>) {
    for (i, label) in labels.iter().enumerate() {
        counter!(MODEL_PREDICTIONS, "model" => model.to_owned(), "class" => label.clone()).increment(0);
        if let Some(share) = shares.and_then(|s| s.get(i)) {
            gauge!(MODEL_REFERENCE_SHARE, "model" => model.to_owned(), "class" => label.clone()).set(*share);
        }
    }
}

pub fn record_reload(success: bool) {
    counter!(MODEL_RELOADS, "status" => if success { "success" } else { "failure" }).increment(1);
}

/// The per-answer prediction metrics, with their handles resolved once (a reload keeps the
/// labels, so the handles stay right): no registry lookup or label allocation per answer.
pub struct PredictionMetrics {
    model: String,
    by_class: Vec<(String, metrics::Counter)>,
    confidence: metrics::Histogram,
    length: metrics::Histogram,
}

impl PredictionMetrics {
    /// The handles of `model`'s answers, one counter per label.
    pub fn new(model: &str, labels: &[String]) -> Self {
        let class = |l: &String| counter!(MODEL_PREDICTIONS, "model" => model.to_owned(), "class" => l.clone());
        Self {
            model: model.to_owned(),
            by_class: labels.iter().map(|l| (l.clone(), class(l))).collect(),
            confidence: histogram!(MODEL_CONFIDENCE, "model" => model.to_owned()),
            length: histogram!(MODEL_INPUT_LENGTH, "model" => model.to_owned()),
        }
    }

    /// One answer's class, confidence and input length.
    pub fn record(&self, label: &str, confidence: f64, length_chars: Option<i32>) {
        match self.by_class.iter().find(|(l, _)| l == label) {
            Some((_, c)) => c.increment(1),
            None => {
                counter!(MODEL_PREDICTIONS, "model" => self.model.clone(), "class" => label.to_owned()).increment(1)
            }
        }
        self.confidence.record(confidence);
        if let Some(n) = length_chars {
            self.length.record(f64::from(n));
        }
    }
}

/// The shadow model's per-class series, at 0 (the rest exist from boot).
pub fn register_shadow(labels: &[String]) {
    for label in labels {
        counter!(SHADOW_PREDICTIONS, "class" => label.clone()).absolute(0);
    }
}

pub fn record_shadow(label: &str, agrees: bool, elapsed: Duration) {
    counter!(SHADOW_PREDICTIONS, "class" => label.to_owned()).increment(1);
    counter!(SHADOW_AGREEMENT, "outcome" => if agrees { "agree" } else { "disagree" }).increment(1);
    histogram!(SHADOW_DURATION).record(elapsed.as_secs_f64());
}

pub fn record_shadow_dropped() {
    counter!(SHADOW_DROPPED).increment(1);
}

pub fn record_shadow_error() {
    counter!(SHADOW_ERRORS).increment(1);
}

/// One model's request series, `inference_requests_total` and `inference_duration_seconds`
/// (with its summary) labelled `model`, their handles resolved once: no registry lookup or
/// label allocation per request. Index 0: answered by the model, 1: from the cache.
pub struct RequestMetrics {
    success: [metrics::Counter; 2],
    error: metrics::Counter,
    duration: [metrics::Histogram; 2],
    summary: [metrics::Histogram; 2],
}

impl RequestMetrics {
    pub fn new(model: &str) -> Self {
        let hit = |h: bool| if h { "true" } else { "false" };
        let m = || model.to_owned();
        Self {
            success: [false, true]
                .map(|h| counter!(INFERENCE_REQUESTS, "status" => "success", "cache_hit" => hit(h), "model" => m())),
            error: counter!(INFERENCE_REQUESTS, "status" => "error", "cache_hit" => "false", "model" => m()),
            duration: [false, true].map(|h| histogram!(INFERENCE_DURATION, "cache_hit" => hit(h), "model" => m())),
            summary: [false, true]
                .map(|h| histogram!(INFERENCE_DURATION_SUMMARY, "cache_hit" => hit(h), "model" => m())),
        }
    }

    /// One answered request of this model (a failed one is never a cache hit).
    pub fn record(&self, success: bool, cache_hit: bool, elapsed: Duration) {
        let i = usize::from(success && cache_hit);
        if success {
            self.success[i].increment(1);
        } else {
            self.error.increment(1);
        }
        let secs = elapsed.as_secs_f64();
        self.duration[i].record(secs);
        self.summary[i].record(secs);
    }
}

/// Records the answer to one request that failed before its model was known (the body,
/// the key, the limits, an unknown model): the series without a `model` label.
pub fn record_request(success: bool, cache_hit: bool, elapsed: Duration) {
    let hit = if cache_hit { "true" } else { "false" };
    let status = if success { "success" } else { "error" };
    counter!(INFERENCE_REQUESTS, "status" => status, "cache_hit" => hit).increment(1);
    let secs = elapsed.as_secs_f64();
    histogram!(INFERENCE_DURATION, "cache_hit" => hit).record(secs);
    histogram!(INFERENCE_DURATION_SUMMARY, "cache_hit" => hit).record(secs);
}

/// Counts one error response.
pub fn record_error(error_type: ErrorType) {
    counter!(INFERENCE_ERRORS, "error_type" => error_type.as_str()).increment(1);
}

/// The series every request touches that carry no model label, their handles resolved
/// once (after the recorder is installed): no registry look-up per request.
pub struct PathMetrics {
    in_progress: metrics::Gauge,
    /// `inference_texts_total`: `[error, success]`.
    texts: [metrics::Counter; 2],
    /// `[cache_misses_total, cache_hits_total]`.
    cache: [metrics::Counter; 2],
}

impl PathMetrics {
    pub fn new() -> Self {
        Self {
            in_progress: gauge!(REQUESTS_IN_PROGRESS),
            texts: ["error", "success"].map(|status| counter!(INFERENCE_TEXTS, "status" => status)),
            cache: [counter!(CACHE_MISSES), counter!(CACHE_HITS)],
        }
    }

    /// A request was admitted: it counts in `inference_requests_in_progress`.
    pub fn admitted(&self) {
        self.in_progress.increment(1.0);
    }

    /// An admitted request was answered.
    pub fn left(&self) {
        self.in_progress.decrement(1.0);
    }

    /// One text answered (or failed): one request-log row.
    pub fn text(&self, success: bool) {
        self.texts[usize::from(success)].increment(1);
    }

    /// One cache look-up.
    pub fn cache(&self, hit: bool) {
        self.cache[usize::from(hit)].increment(1);
    }
}

impl Default for PathMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn record_model_loaded(elapsed: Duration) {
    gauge!(MODEL_LOAD_DURATION).set(elapsed.as_secs_f64());
}

/// `model_inference_batch_size` of `model`: the handle its inference threads record into.
pub fn batch_size(model: &str) -> metrics::Histogram {
    histogram!(MODEL_INFERENCE_BATCH_SIZE, "model" => model.to_owned())
}

/// `model_queue_wait_seconds` of `model`.
pub fn queue_wait(model: &str) -> metrics::Histogram {
    histogram!(MODEL_QUEUE_WAIT, "model" => model.to_owned())
}

/// `model_forward_seconds` of `model`.
pub fn forward_time(model: &str) -> metrics::Histogram {
    histogram!(MODEL_FORWARD, "model" => model.to_owned())
}

/// Sets `model_input_truncated_total` of `model` to what its backend counted.
pub fn set_truncated_texts(model: &str, texts: u64) {
    counter!(MODEL_INPUT_TRUNCATED, "model" => model.to_owned()).absolute(texts);
}

/// Sets `memory_usage_bytes` to the current RSS (from /proc/self/statm; 0 elsewhere).
pub fn update_memory_usage() {
    gauge!(MEMORY_USAGE).set(rss_bytes() as f64);
}

fn rss_bytes() -> u64 {
    // statm: size resident shared ... in pages; the page size is 4 KiB on every Linux
    // platform we deploy to.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Keeps the summary quantiles current (without upkeep the exporter's quantiles go
/// stale), until the worker stops.
pub async fn run_upkeep(
    handle: std::sync::Arc<PrometheusHandle>,
    every: Duration,
    mut stopping: crate::shutdown::Stopping,
) {
    let mut ticks = crate::shutdown::every(every);
    while stopping.tick(&mut ticks).await {
        handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc() {
        assert!(rss_bytes() > 1024 * 1024, "a test process uses more than 1 MiB");
    }
}
