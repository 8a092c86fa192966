//! Handlers.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::RequestId;
use super::error::{ApiError, ErrorResponse};
use crate::api::{InferRequest, InferResponse, validate_text};
use crate::idempotency::{Claim, Record, fingerprint, validate_key};
use crate::pipeline::Outcome;
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
            // No Postgres request log in this build yet.
            "database_available": false,
        },
        "backends": {
            "cache": s.pipeline.cache_backend(),
            "idempotency": s.idempotency.as_ref().map_or("disabled", |i| i.backend()),
            "request_log": "none",
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

/// Validates, applies idempotency, runs the pipeline. Returns the response and whether it
/// was replayed.
async fn handle(
    s: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(InferResponse, bool), ApiError> {
    if !s.readiness.model_loaded() {
        return Err(ApiError::NotReady("model not loaded"));
    }
    let text = parse(s, headers, body)?;
    let key = idempotency_key(headers)?;
    let (Some(store), Some(key)) = (&s.idempotency, key) else {
        return Ok((respond(s, id, s.pipeline.infer(text).await?), false));
    };
    let fp = fingerprint(&text);
    match store.claim(&key, &fp, s.settings.idempotency_wait).await {
        Claim::Replay(stored) => Ok((stored, true)),
        Claim::Conflict => Err(ApiError::IdempotencyConflict),
        Claim::Unavailable => Ok((respond(s, id, s.pipeline.infer(text).await?), false)),
        Claim::Fresh => match s.pipeline.infer(text).await {
            Ok(outcome) => {
                let resp = respond(s, id, outcome);
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

fn respond(s: &AppState, id: &str, outcome: Outcome) -> InferResponse {
    let c = s.pipeline.classifier();
    let mut resp = InferResponse::new(&outcome.prediction, c.labels(), c.model_version(), s.worker_id(), id);
    resp.cache_hit = outcome.cache_hit;
    resp
}

pub async fn infer(
    State(s): State<AppState>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    match handle(&s, &id.0, &headers, body).await {
        Ok((mut resp, replayed)) => {
            if replayed {
                // The stored answer, marked as a replay, under this request's own id.
                resp.idempotency_hit = true;
                resp.request_id.clone_from(&id.0);
                s.worker_id().clone_into(&mut resp.worker_id);
            }
            let elapsed = started.elapsed();
            resp.processing_time_ms = elapsed.as_secs_f64() * 1000.0;
            metrics::record_request(true, resp.cache_hit, elapsed);
            tracing::debug!(request_id = %id.0, prediction = %resp.prediction, cache_hit = resp.cache_hit, idempotency_hit = resp.idempotency_hit, "Inference served");
            Json(resp).into_response()
        }
        Err(error) => {
            metrics::record_request(false, false, started.elapsed());
            ErrorResponse { error, request_id: &id.0, worker_id: s.worker_id() }.into_response()
        }
    }
}
