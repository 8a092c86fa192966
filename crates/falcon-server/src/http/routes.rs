//! Handlers.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{ApiError, ErrorResponse};
use super::{ClientIp, RequestId};
use crate::api::{InferRequest, InferResponse, validate_text};
use crate::idempotency::{Claim, Record, fingerprint, validate_key};
use crate::pipeline::Outcome;
use crate::request_log::LogRecord;
use crate::state::AppState;
use crate::telemetry::metrics;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub async fn root(State(s): State<AppState>) -> Json<serde_json::Value> {
    let status = if s.readiness.ready() {
        "ready"
    } else if s.readiness.draining() {
        "draining"
    } else {
        "starting"
    };
    Json(json!({
        "name": "falcon",
        "version": env!("CARGO_PKG_VERSION"),
        "worker_id": s.worker_id(),
        "status": status,
        "model_version": s.pipeline.classifier().model_version(),
    }))
}

/// Liveness: the process answers. Never depends on Redis, Postgres or readiness.
pub async fn healthz(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "healthy",
        "worker_id": s.worker_id(),
        "timestamp": now(),
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
    }))
}

/// Readiness: 200 only while the model is loaded and the worker is not draining.
pub async fn readyz(State(s): State<AppState>) -> Response {
    let ready = s.readiness.ready();
    let body = json!({
        "ready": ready,
        "worker_id": s.worker_id(),
        "draining": s.readiness.draining(),
        "checks": {
            "model_loaded": s.readiness.model_loaded(),
            // Redis down degrades (no shared cache) but never makes the worker unready.
            // Without Redis configured this is false and `backends` says what serves instead.
            "redis_available": s.redis.as_ref().is_some_and(|r| r.reachable()),
            // The request-log database (Postgres, or the embedded SQLite file).
            "database_available": s.database_available.as_ref().is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed)),
        },
        "backends": {
            "cache": s.pipeline.cache_backend(),
            "idempotency": s.idempotency.as_ref().map_or("disabled", |i| i.backend()),
            "request_log": if s.request_log.is_some() { "enabled" } else { "disabled" },
        },
        "model_version": s.pipeline.classifier().model_version(),
        "timestamp": now(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    metrics::update_memory_usage();
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

pub async fn not_found(State(s): State<AppState>, Extension(id): Extension<RequestId>, uri: Uri) -> Response {
    ErrorResponse { error: ApiError::NotFound(uri.path().to_owned()), request_id: &id.0, worker_id: s.worker_id() }
        .into_response()
}

pub async fn method_not_allowed(State(s): State<AppState>, Extension(id): Extension<RequestId>) -> Response {
    ErrorResponse { error: ApiError::MethodNotAllowed, request_id: &id.0, worker_id: s.worker_id() }.into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn parse(s: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: s.settings.max_body_bytes }
        } else {
            ApiError::InvalidJson(r.body_text())
        }
    })?;
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let req: InferRequest = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Validation(e.to_string()),
        _ => ApiError::InvalidJson(e.to_string()),
    })?;
    validate_text(&req.text).map_err(ApiError::Validation)?;
    Ok(req.text)
}

pub const IDEMPOTENCY_KEY_HEADER: &str = "x-idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let key = v.to_str().map_err(|_| ApiError::Validation("X-Idempotency-Key must be visible ASCII".into()))?;
    validate_key(key).map_err(ApiError::Validation)?;
    Ok(Some(key.to_owned()))
}

/// What the request log needs to know about a request besides its answer.
#[derive(Default)]
struct Facts {
    text_hash: Option<String>,
    text_length: Option<i32>,
    idempotency_key: Option<String>,
    inference_ms: Option<f64>,
}

/// Validates, applies idempotency, runs the pipeline. Returns the response and whether it
/// was replayed; fills `facts` as it learns them.
async fn handle(
    s: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    facts: &mut Facts,
) -> Result<(InferResponse, bool), ApiError> {
    if !s.readiness.model_loaded() {
        return Err(ApiError::NotReady("model not loaded"));
    }
    let text = parse(s, headers, body)?;
    let fp = fingerprint(&text);
    facts.text_hash = Some(fp.clone());
    facts.text_length = Some(i32::try_from(text.chars().count()).unwrap_or(i32::MAX));
    let key = idempotency_key(headers)?;
    facts.idempotency_key.clone_from(&key);
    let (Some(store), Some(key)) = (&s.idempotency, key) else {
        return Ok((compute(s, id, text, facts).await?, false));
    };
    match store.claim(&key, &fp, s.settings.idempotency_wait).await {
        Claim::Replay(stored) => Ok((stored, true)),
        Claim::Conflict => Err(ApiError::IdempotencyConflict),
        Claim::Unavailable => Ok((compute(s, id, text, facts).await?, false)),
        Claim::Fresh => match compute(s, id, text, facts).await {
            Ok(resp) => {
                store.complete(&key, Record { fingerprint: fp, response: resp.clone() }).await;
                Ok((resp, false))
            }
            Err(e) => {
                store.release(&key).await;
                Err(e)
            }
        },
    }
}

/// Runs the pipeline for `text` and builds the answer; notes the model time in `facts`.
async fn compute(s: &AppState, id: &str, text: String, facts: &mut Facts) -> Result<InferResponse, ApiError> {
    let outcome = s.pipeline.infer(text).await?;
    facts.inference_ms = outcome.inference_ms;
    Ok(respond(s, id, outcome))
}

fn respond(s: &AppState, id: &str, outcome: Outcome) -> InferResponse {
    let c = s.pipeline.classifier();
    let mut resp = InferResponse::new(&outcome.prediction, c.labels(), c.model_version(), s.worker_id(), id);
    resp.cache_hit = outcome.cache_hit;
    resp
}

/// A request-log row with the fields every outcome shares.
fn base_record(s: &AppState, id: &str, client_ip: Option<String>, elapsed: std::time::Duration) -> LogRecord {
    LogRecord {
        request_id: id.to_owned(),
        worker_id: s.worker_id().to_owned(),
        text_hash: None,
        text_length: None,
        prediction: None,
        confidence: None,
        probabilities: None,
        cache_hit: false,
        idempotency_hit: false,
        success: false,
        processing_time_ms: elapsed.as_secs_f64() * 1000.0,
        inference_time_ms: None,
        error_type: None,
        error_message: None,
        idempotency_key: None,
        client_ip,
        model_version: s.pipeline.classifier().model_version().to_owned(),
        created_at: chrono::Utc::now(),
    }
}

/// The row of a request that failed outside the handler (deadline, panic).
pub fn log_failure(s: &AppState, id: &str, client_ip: Option<String>, error: &ApiError, elapsed: std::time::Duration) {
    if let Some(log) = &s.request_log {
        let mut r = base_record(s, id, client_ip, elapsed);
        r.error_type = Some(error.error_type().to_owned());
        r.error_message = Some(error.to_string());
        log.record(r);
    }
}

pub async fn infer(
    State(s): State<AppState>,
    Extension(id): Extension<RequestId>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    if let Some(ballast) = &s.ballast {
        ballast.grow();
    }
    let mut facts = Facts::default();
    let result = handle(&s, &id.0, &headers, body, &mut facts).await;
    let elapsed = started.elapsed();
    let mut record = s.request_log.as_ref().map(|_| {
        let mut r = base_record(&s, &id.0, ip.0, elapsed);
        r.text_hash = facts.text_hash;
        r.text_length = facts.text_length;
        r.idempotency_key = facts.idempotency_key;
        r.inference_time_ms = facts.inference_ms;
        r
    });
    let response = match result {
        Ok((mut resp, replayed)) => {
            if replayed {
                // The stored answer, marked as a replay, under this request's own id.
                resp.idempotency_hit = true;
                resp.request_id.clone_from(&id.0);
                s.worker_id().clone_into(&mut resp.worker_id);
            }
            resp.processing_time_ms = elapsed.as_secs_f64() * 1000.0;
            metrics::record_request(true, resp.cache_hit, elapsed);
            tracing::debug!(request_id = %id.0, prediction = %resp.prediction, cache_hit = resp.cache_hit, idempotency_hit = resp.idempotency_hit, "Inference served");
            if let Some(r) = &mut record {
                r.success = true;
                r.prediction = Some(resp.prediction.clone());
                r.confidence = Some(resp.confidence);
                r.probabilities = serde_json::to_value(&resp.probabilities).ok();
                r.cache_hit = resp.cache_hit;
                r.idempotency_hit = resp.idempotency_hit;
            }
            Json(resp).into_response()
        }
        Err(error) => {
            metrics::record_request(false, false, elapsed);
            if let Some(r) = &mut record {
                r.error_type = Some(error.error_type().to_owned());
                r.error_message = Some(error.to_string());
            }
            ErrorResponse { error, request_id: &id.0, worker_id: s.worker_id() }.into_response()
        }
    };
    if let (Some(log), Some(r)) = (&s.request_log, record) {
        log.record(r);
    }
    response
}
