//! The Open Inference Protocol v2 (KServe, Triton, MLServer) over HTTP/JSON: a wire format
//! for the same application layer as `POST /infer/batch`. A `BYTES` input tensor of texts
//! (shape `[n]` or `[n, 1]`) in; `label` (`BYTES`, `[n]`) and `probabilities` (`FP32`,
//! `[n, labels]`) out. Errors are `{"error": "…"}`, as the protocol says.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{BodyRules, read_json};
use super::entries::{Entries, Entry};
pub use super::error::OipError;
use super::error::{ApiError, HangUp, piped, shown};
use falcon_app::pipeline::{BatchCommand, BatchInferred, InferError, MODEL_NAME, RequestMeta};

/// The one model this server has.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the path segment is read as a String and checked
pub enum OipModelName {
    #[schema(rename = "sentiment")]
    Sentiment,
}

#[derive(Serialize, ToSchema)]
pub struct OipServerMetadata {
    name: &'static str,
    version: &'static str,
    extensions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OipLive {
    live: bool,
}

#[derive(Serialize, ToSchema)]
pub struct OipReady {
    ready: bool,
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "open-inference-protocol",
    responses((status = 200, description = "Server metadata", body = OipServerMetadata)))]
pub async fn server_metadata() -> Json<OipServerMetadata> {
    Json(OipServerMetadata { name: "falcon", version: env!("CARGO_PKG_VERSION"), extensions: Vec::new() })
}

/// Server liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "open-inference-protocol",
    responses((status = 200, description = "Alive", body = OipLive)))]
pub async fn live() -> Json<OipLive> {
    Json(OipLive { live: true })
}

/// Server readiness (as /readyz).
#[utoipa::path(get, path = "/v2/health/ready", tag = "open-inference-protocol", responses(
    (status = 200, description = "Ready", body = OipReady),
    (status = 503, description = "Not ready", body = OipReady),
))]
pub async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.pipeline.health().ready;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(OipReady { ready })).into_response()
}

/// The model name of the path, as the protocol's errors: 400 for a name that is not UTF-8
/// (axum's own answer would be plain text), 404 for a model this server does not have.
/// `None` for ours.
fn not_ours(s: &AppState, meta: &RequestMeta, name: Result<Path<String>, PathRejection>) -> Option<Response> {
    let error: ApiError = match name {
        Ok(Path(name)) if name == MODEL_NAME => return None,
        Ok(Path(name)) => ApiError::UnknownModel { name: super::error::shown(&name), served: MODEL_NAME },
        Err(e) => InferError::Validation(format!("invalid model name in the path: {}", e.body_text())).into(),
    };
    Some(s.oip_error_response(&meta.request_id, error))
}

/// A tensor's name, type and shape (`-1`: any length).
#[derive(Serialize, ToSchema)]
pub struct OipTensorMetadata {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct OipModelMetadata {
    name: &'static str,
    versions: Vec<String>,
    platform: String,
    inputs: Vec<OipTensorMetadata>,
    outputs: Vec<OipTensorMetadata>,
    parameters: OipModelParameters,
}

#[derive(Serialize, ToSchema)]
pub struct OipModelParameters {
    /// The classes, in the order of `probabilities`' columns.
    labels: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OipModelReady {
    name: &'static str,
    ready: bool,
}

/// What the model takes and gives.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "Model metadata", body = OipModelMetadata),
        (status = 404, description = "No such model", body = OipError),
    ))]
pub async fn model_metadata(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    if let Some(r) = not_ours(&s, &meta, name) {
        return r;
    }
    let backend = s.pipeline.backend();
    let tensor = |name, datatype, shape| OipTensorMetadata { name, datatype, shape };
    Json(OipModelMetadata {
        name: MODEL_NAME,
        versions: vec![backend.model_version().to_owned()],
        platform: format!("falcon_{}", backend.name()),
        inputs: vec![tensor("text", "BYTES", vec![-1])],
        outputs: vec![
            tensor("label", "BYTES", vec![-1]),
            tensor("probabilities", "FP32", vec![-1, backend.labels().len() as i64]),
        ],
        parameters: OipModelParameters { labels: backend.labels().to_vec() },
    })
    .into_response()
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "Ready", body = OipModelReady),
        (status = 503, description = "Not ready", body = OipModelReady),
        (status = 404, description = "No such model", body = OipError),
    ))]
pub async fn model_ready(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    if let Some(r) = not_ours(&s, &meta, name) {
        return r;
    }
    let ready = s.pipeline.health().ready;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(OipModelReady { name: MODEL_NAME, ready })).into_response()
}

/// An inference request: one `BYTES` input of texts.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["I love it", "meh"]}]}))]
pub struct OipInferRequest {
    /// Echoed in the answer's `id`.
    #[serde(default)]
    id: Option<String>,
    /// Exactly one: the texts.
    #[schema(min_items = 1, max_items = 1)]
    inputs: Vec<OipTensor>,
}

/// An input tensor: `BYTES`, shape `[n]` or `[n, 1]`, `data` the n texts (flat, or as
/// `[[text], ...]`).
#[derive(Deserialize, ToSchema)]
pub struct OipTensor {
    name: String,
    /// `[n]` or `[n, 1]`, n the number of texts in `data`.
    #[schema(min_items = 1, max_items = 2)]
    shape: Vec<i64>,
    /// `BYTES`.
    #[schema(pattern = "^BYTES$")]
    datatype: String,
    #[schema(value_type = Vec<serde_json::Value>)]
    data: Entries,
}

/// An output tensor.
#[derive(Serialize, ToSchema)]
pub struct OipOutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    /// `label`: the n predicted classes; `probabilities`: n × classes numbers, row by row.
    #[schema(value_type = Vec<Value>)]
    data: TensorData<'a>,
}

/// A tensor's elements: FP32 as `f32` (written in its shortest form: `0.9667709`, not the
/// `f64` widening `0.9667708873748779`), BYTES as strings.
#[derive(Serialize)]
#[serde(untagged)]
enum TensorData<'a> {
    Bytes(Vec<&'a str>),
    Fp32(Vec<f32>),
}

#[derive(Serialize, ToSchema)]
pub struct OipInferResponse<'a> {
    model_name: &'static str,
    model_version: String,
    id: String,
    outputs: Vec<OipOutputTensor<'a>>,
    parameters: OipInferParameters,
}

#[derive(Serialize, ToSchema)]
pub struct OipInferParameters {
    worker_id: String,
    request_id: String,
}

/// The texts of the request's one `BYTES` input, checked against its shape.
fn texts(req: OipInferRequest) -> Result<(Option<String>, Vec<Option<String>>), String> {
    let [input] =
        <[OipTensor; 1]>::try_from(req.inputs).map_err(|v| format!("expected 1 input tensor, got {}", v.len()))?;
    // The client's strings are echoed bounded and escaped (`shown`): they reach the error
    // body, the log line and the row.
    let name = shown(&input.name);
    if input.datatype != "BYTES" {
        return Err(format!("input '{name}' must be BYTES, not {}", shown(&input.datatype)));
    }
    let n = match input.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => *n as usize,
        other => {
            return Err(format!("input '{name}' must have shape [n] or [n, 1], not {}", shown(&format!("{other:?}"))));
        }
    };
    // Flat, or nested one level as [[t], [t], ...] for shape [n, 1].
    let data: Vec<Option<String>> = input
        .data
        .0
        .into_iter()
        .map(|e| match e {
            Entry::Text(t) | Entry::Wrapped(t) => Some(t),
            Entry::Other => None,
        })
        .collect();
    if data.len() != n {
        return Err(format!("input '{name}': shape says {n} texts, data has {}", data.len()));
    }
    Ok((req.id, data))
}

/// The errors of an Open Inference Protocol infer, in its `{"error"}` body and with its
/// statuses (`oip_status`: a request it cannot take is 400), from the same table.
pub struct OipInferErrors;

impl utoipa::IntoResponses for OipInferErrors {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        let mut types = super::error::INFERENCE_ERRORS.to_vec();
        types.push(falcon_app::error_type::ErrorType::NotFound);
        super::error::error_responses(&types, super::error::oip_status, "OipError")
    }
}

/// Classifies the texts of a BYTES input tensor.
///
/// Outputs `label` (`BYTES`, `[n]`) and `probabilities` (`FP32`, `[n, classes]`).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name")),
    request_body(content = OipInferRequest, content_type = "application/json"),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The predictions", body = OipInferResponse),
        OipInferErrors,
    ))]
pub async fn infer(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = not_ours(&s, &meta, name) {
        return r;
    }
    let hang_up = HangUp::watch();
    let mut id = None;
    let command = async {
        let req: OipInferRequest = read_json(&s, &meta, &headers, body, BODY).await?;
        let (req_id, texts) = texts(req).map_err(InferError::Validation)?;
        id = req_id;
        Ok(BatchCommand { texts, all_or_nothing: true })
    };
    let answer = s.pipeline.infer_batch(&meta, command).await;
    let response = match answer {
        Ok(answer) => respond(&s, &meta, id, answer),
        Err(e) => s.oip_error_response(&meta.request_id, e),
    };
    hang_up.answered();
    piped(response)
}

/// How OIP reads its body: the shared reader, JSON also without a Content-Type.
const BODY: BodyRules = BodyRules {
    shape: "the body must be an inference request: {\"inputs\": [{\"name\", \"shape\", \"datatype\": \"BYTES\", \"data\"}]}",
    absent_is_json: true,
    batch: Some("an input's data"),
};

/// The answer's tensors, read with the labels of the model snapshot that answered. (The
/// batch is all or nothing, so every text has an answer; were one missing, the request
/// would fail with its error.)
fn respond(s: &AppState, meta: &RequestMeta, id: Option<String>, served: BatchInferred) -> Response {
    let labels = served.by.labels();
    let n = served.results.len();
    let mut names = Vec::with_capacity(n);
    let mut probabilities = Vec::with_capacity(n * labels.len());
    for result in &served.results {
        match result {
            Ok(answer) => {
                names.push(answer.label(labels));
                probabilities.extend(answer.prediction.probabilities.iter().map(|&p| p as f32));
            }
            Err(e) => return s.oip_error_response(&meta.request_id, e.clone()),
        }
    }
    Json(OipInferResponse {
        model_name: served.by.name,
        model_version: served.by.version().to_owned(),
        id: id.unwrap_or_else(|| meta.request_id.clone()),
        outputs: vec![
            OipOutputTensor { name: "label", datatype: "BYTES", shape: vec![n], data: TensorData::Bytes(names) },
            OipOutputTensor {
                name: "probabilities",
                datatype: "FP32",
                shape: vec![n, labels.len()],
                data: TensorData::Fp32(probabilities),
            },
        ],
        parameters: OipInferParameters { worker_id: s.worker_id().to_owned(), request_id: meta.request_id.clone() },
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn request(shape: Value, data: Value) -> OipInferRequest {
        serde_json::from_value(
            json!({ "inputs": [{ "name": "text", "shape": shape, "datatype": "BYTES", "data": data }] }),
        )
        .unwrap()
    }

    /// Issue 30 item 9: a 200 KB datatype and an escape sequence in the name were echoed as
    /// they came into the error body and the row.
    #[test]
    fn a_request_s_own_strings_come_back_bounded_and_escaped() {
        let huge: OipInferRequest = serde_json::from_value(json!({ "inputs": [{
            "name": "te\u{1b}[2Jxt", "shape": [1], "datatype": "X".repeat(200_000), "data": ["a"] }] }))
        .unwrap();
        let message = texts(huge).unwrap_err();
        assert!(message.len() < 200, "{} bytes", message.len());
        assert!(!message.contains('\u{1b}'), "{message}");
        let shape: OipInferRequest = serde_json::from_value(json!({ "inputs": [{
            "name": "text", "shape": vec![2; 100_000], "datatype": "BYTES", "data": ["a"] }] }))
        .unwrap();
        assert!(texts(shape).unwrap_err().len() < 200);
    }

    #[test]
    fn texts_come_flat_or_nested_and_must_match_the_shape() {
        let ab = [Some("a".to_owned()), Some("b".to_owned())];
        assert_eq!(texts(request(json!([2]), json!(["a", "b"]))).unwrap().1, ab);
        assert_eq!(texts(request(json!([2, 1]), json!([["a"], ["b"]]))).unwrap().1, ab);
        assert_eq!(texts(request(json!([2]), json!([1, ["a", "b"]]))).unwrap().1, [None, None]);
        assert!(texts(request(json!([3]), json!(["a", "b"]))).unwrap_err().contains("shape says 3"));
        assert!(texts(request(json!([2, 2]), json!(["a", "b"]))).unwrap_err().contains("[n] or [n, 1]"));
        let fp32: OipInferRequest = serde_json::from_value(
            json!({ "inputs": [{ "name": "text", "shape": [1], "datatype": "FP32", "data": [1.0] }] }),
        )
        .unwrap();
        assert!(texts(fp32).unwrap_err().contains("BYTES"));
    }
}
