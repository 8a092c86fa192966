//! The Open Inference Protocol v2 (KServe, Triton, MLServer) over HTTP/JSON: a wire format
//! for the same application layer as `POST /infer/batch`. A `BYTES` input tensor of texts
//! (shape `[n]` or `[n, 1]`) in; `label` (`BYTES`, `[n]`) and `probabilities` (`FP32`,
//! `[n, labels]`) out. Errors are `{"error": "…"}`, as the protocol says.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::api::BatchItem;
use crate::app::{BatchCommand, InferError, RequestMeta};

/// The model's name in the protocol's paths.
pub const MODEL_NAME: &str = "sentiment";

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "falcon", "version": env!("CARGO_PKG_VERSION"), "extensions": [] }))
}

/// `GET /v2/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: as `/readyz`.
pub async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.pipeline.health().ready;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready }))).into_response()
}

/// The 404 for a model this server does not have; `None` for ours.
fn unknown(name: &str) -> Option<Response> {
    (name != MODEL_NAME)
        .then(|| error(StatusCode::NOT_FOUND, format!("unknown model '{name}'; this server has '{MODEL_NAME}'")))
}

/// `GET /v2/models/{name}`: what the model takes and gives.
pub async fn model_metadata(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    if let Some(r) = unknown(&name) {
        return r;
    }
    let backend = s.pipeline.backend();
    Json(json!({
        "name": MODEL_NAME,
        "versions": [backend.model_version()],
        "platform": format!("falcon_{}", backend.name()),
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [-1] }],
        "outputs": [
            { "name": "label", "datatype": "BYTES", "shape": [-1] },
            { "name": "probabilities", "datatype": "FP32", "shape": [-1, backend.labels().len()] },
        ],
        "parameters": { "labels": backend.labels() },
    }))
    .into_response()
}

/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    if let Some(r) = unknown(&name) {
        return r;
    }
    let ready = s.pipeline.health().ready;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "name": MODEL_NAME, "ready": ready }))).into_response()
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Tensor>,
}

#[derive(Deserialize)]
struct Tensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

/// The texts of the request's one `BYTES` input, checked against its shape.
fn texts(req: InferRequest) -> Result<(Option<String>, Vec<Value>), String> {
    let [input] =
        <[Tensor; 1]>::try_from(req.inputs).map_err(|v| format!("expected 1 input tensor, got {}", v.len()))?;
    if input.datatype != "BYTES" {
        return Err(format!("input '{}' must be BYTES, not {}", input.name, input.datatype));
    }
    let n = match input.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => *n as usize,
        other => return Err(format!("input '{}' must have shape [n] or [n, 1], not {other:?}", input.name)),
    };
    // Flat, or nested one level as [[t], [t], ...] for shape [n, 1].
    let data = match input.data {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Array(mut inner) if inner.len() == 1 => inner.pop().unwrap_or(Value::Null),
                other => other,
            })
            .collect::<Vec<_>>(),
        _ => return Err(format!("input '{}': data must be an array", input.name)),
    };
    if data.len() != n {
        return Err(format!("input '{}': shape says {n} texts, data has {}", input.name, data.len()));
    }
    Ok((req.id, data))
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    Path(name): Path<String>,
    _headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = unknown(&name) {
        return r;
    }
    let limit = s.max_body_bytes;
    let mut id = None;
    let command = async {
        let bytes = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|_| InferError::PayloadTooLarge { limit })?
            .to_bytes();
        let req: InferRequest = serde_json::from_slice(&bytes).map_err(|e| {
            InferError::InvalidJson(format!("not an inference request: line {} column {}", e.line(), e.column()))
        })?;
        let (req_id, texts) = texts(req).map_err(InferError::Validation)?;
        id = req_id;
        Ok(BatchCommand { texts })
    };
    let answer = s.pipeline.infer_batch(&meta, command).await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            // The protocol answers a bad request with 400; auth, limits and overload keep
            // their own codes.
            let status = match super::error::ApiError::from(e.clone()).status() {
                StatusCode::UNPROCESSABLE_ENTITY
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::BAD_REQUEST,
                other => other,
            };
            crate::telemetry::metrics::record_error(e.error_type());
            return error(status, e.to_string());
        }
    };
    let backend = s.pipeline.backend();
    let labels = backend.labels();
    let mut names = Vec::with_capacity(answer.results.len());
    let mut probabilities = Vec::with_capacity(answer.results.len() * labels.len());
    for item in &answer.results {
        match item {
            BatchItem::Answer { prediction, probabilities: p, .. } => {
                names.push(prediction.clone());
                probabilities.extend(labels.iter().map(|l| p.get(l).copied().unwrap_or(0.0) as f32));
            }
            BatchItem::Error { error: message, .. } => {
                return error(StatusCode::BAD_REQUEST, message.clone());
            }
        }
    }
    let n = names.len();
    Json(json!({
        "model_name": MODEL_NAME,
        "model_version": answer.model_version,
        "id": id.unwrap_or_else(|| answer.request_id.clone()),
        "outputs": [
            { "name": "label", "datatype": "BYTES", "shape": [n], "data": names },
            { "name": "probabilities", "datatype": "FP32", "shape": [n, labels.len()], "data": probabilities },
        ],
        "parameters": { "worker_id": answer.worker_id, "request_id": answer.request_id },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(shape: Value, data: Value) -> InferRequest {
        serde_json::from_value(
            json!({ "inputs": [{ "name": "text", "shape": shape, "datatype": "BYTES", "data": data }] }),
        )
        .unwrap()
    }

    #[test]
    fn texts_come_flat_or_nested_and_must_match_the_shape() {
        assert_eq!(texts(request(json!([2]), json!(["a", "b"]))).unwrap().1, [json!("a"), json!("b")]);
        assert_eq!(texts(request(json!([2, 1]), json!([["a"], ["b"]]))).unwrap().1, [json!("a"), json!("b")]);
        assert!(texts(request(json!([3]), json!(["a", "b"]))).unwrap_err().contains("shape says 3"));
        assert!(texts(request(json!([2, 2]), json!(["a", "b"]))).unwrap_err().contains("[n] or [n, 1]"));
        let fp32: InferRequest = serde_json::from_value(
            json!({ "inputs": [{ "name": "text", "shape": [1], "datatype": "FP32", "data": [1.0] }] }),
        )
        .unwrap();
        assert!(texts(fp32).unwrap_err().contains("BYTES"));
    }
}
