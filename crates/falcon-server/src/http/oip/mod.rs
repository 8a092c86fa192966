//! The Open Inference Protocol v2 (KServe, Triton, MLServer) over HTTP: a wire format for the
//! same application layer as `POST /infer/batch`. A `BYTES` input tensor of texts (shape `[n]`
//! or `[n, 1]`) in; `label` (`BYTES`, `[n]`) and `probabilities` (`FP32`, `[n, labels]`) out.
//! Errors are `{"error": "…"}`, as the protocol says. With Triton's extensions: binary tensor
//! data both ways (`binary`), the model configuration (`config`), classification (the top
//! classes of `probabilities` as `"score:index:label"`), and versioned paths.

mod binary;
mod config;
pub mod repository;

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{self, BodyRules};
use super::entries::{Entries, Entry};
pub use super::error::OipError;
use super::error::{ApiError, HangUp, WireError, piped, shown};
pub use config::OipModelConfig;
use falcon_app::models::ServedModel;
use falcon_app::pipeline::{BatchCommand, BatchInferred, InferError, RequestMeta};
use falcon_backend::Backend;

/// A model of the worker's repository (zero-config: `sentiment`).
#[derive(ToSchema)]
#[schema(example = "sentiment", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
#[allow(dead_code)] // a schema only: the path segment is read as a String and looked up
pub struct OipModelName(String);

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
    let extensions = EXTENSIONS.iter().map(|&e| e.to_owned()).collect();
    Json(OipServerMetadata { name: "falcon", version: env!("CARGO_PKG_VERSION"), extensions })
}

/// The protocol extensions this server implements, by Triton's names.
pub const EXTENSIONS: &[&str] =
    &["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"];

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

/// A model's path: its name, and the version when the path names one.
#[derive(Deserialize)]
pub struct ModelPath {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

/// The model of the path and the snapshot taken of it, or the protocol's error: 400 for a
/// path that is not UTF-8 (axum's own answer would be plain text), 404 `model_not_found` for
/// a model this worker does not serve, 404 `not_found` for a version it does not serve.
fn resolve(
    s: &AppState,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Result<(Arc<ServedModel>, Arc<dyn Backend>), ApiError> {
    let error: ApiError = match path {
        Ok(Path(ModelPath { name, version })) => match s.pipeline.models().get(Some(&name)) {
            Ok(model) => {
                let backend = model.current();
                match version {
                    Some(v) if v != backend.model_version() => ApiError::UnknownVersion {
                        name: model.name().to_string(),
                        version: shown(&v),
                        served: backend.model_version().to_owned(),
                    },
                    _ => return Ok((model, backend)),
                }
            }
            Err(e) => e.into(),
        },
        Err(e) => {
            InferError::Validation(format!("invalid model name or version in the path: {}", e.body_text())).into()
        }
    };
    Err(error)
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
    name: String,
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
    name: String,
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
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    let (model, backend) = match resolve(&s, path) {
        Ok(m) => m,
        Err(e) => return s.oip_error_response(&meta.request_id, e),
    };
    let tensor = |name, datatype, shape| OipTensorMetadata { name, datatype, shape };
    Json(OipModelMetadata {
        name: model.name().to_string(),
        versions: vec![backend.model_version().to_owned()],
        platform: format!("falcon_{}", backend.name()),
        // The batch dimension first, then each element's dims as the configuration says ([1]:
        // one text); perf_analyzer reads the shape to send from here.
        inputs: vec![tensor("text", "BYTES", vec![-1, 1])],
        outputs: vec![
            tensor("label", "BYTES", vec![-1]),
            tensor("probabilities", "FP32", vec![-1, backend.labels().len() as i64]),
        ],
        parameters: OipModelParameters { labels: backend.labels().to_vec() },
    })
    .into_response()
}

/// What a version of the model takes and gives (the version served now; any other is 404).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name"),
           ("version" = String, Path, description = "The model version served (`model_version`)")),
    responses(
        (status = 200, description = "Model metadata", body = OipModelMetadata),
        (status = 404, description = "No such model or version", body = OipError),
    ))]
pub async fn version_metadata(
    state: State<AppState>,
    meta: Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    model_metadata(state, meta, path).await
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
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    let (model, _) = match resolve(&s, path) {
        Ok(m) => m,
        Err(e) => return s.oip_error_response(&meta.request_id, e),
    };
    let ready = s.pipeline.health().ready;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(OipModelReady { name: model.name().to_string(), ready })).into_response()
}

/// Readiness of a version of the model.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name"),
           ("version" = String, Path, description = "The model version served (`model_version`)")),
    responses(
        (status = 200, description = "Ready", body = OipModelReady),
        (status = 503, description = "Not ready", body = OipModelReady),
        (status = 404, description = "No such model or version", body = OipError),
    ))]
pub async fn version_ready(
    state: State<AppState>,
    meta: Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    model_ready(state, meta, path).await
}

/// The model's configuration (Triton's model configuration extension), as `perf_analyzer`
/// and tritonclient's `get_model_config` read it.
#[utoipa::path(get, path = "/v2/models/{name}/config", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "Model configuration", body = OipModelConfig),
        (status = 404, description = "No such model", body = OipError),
    ))]
pub async fn model_config(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    let (model, backend) = match resolve(&s, path) {
        Ok(m) => m,
        Err(e) => return s.oip_error_response(&meta.request_id, e),
    };
    let (threads, max_batch_size) = model.queue().shape();
    let max_wait = model.queue().max_wait();
    Json(OipModelConfig::of(&config::Served {
        name: model.name(),
        backend: backend.name(),
        version: backend.model_version(),
        labels: backend.labels(),
        max_batch_texts: s.pipeline.max_batch_texts(),
        threads,
        max_batch_size,
        max_wait,
    }))
    .into_response()
}

/// The configuration of a version of the model.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/config", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name"),
           ("version" = String, Path, description = "The model version served (`model_version`)")),
    responses(
        (status = 200, description = "Model configuration", body = OipModelConfig),
        (status = 404, description = "No such model or version", body = OipError),
    ))]
pub async fn version_config(
    state: State<AppState>,
    meta: Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    model_config(state, meta, path).await
}

/// An inference request: one `BYTES` input of texts; with the binary tensor data extension,
/// this is the JSON header and the texts follow it.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["I love it", "meh"]}]}))]
pub struct OipInferRequest {
    /// Echoed in the answer's `id`.
    #[serde(default)]
    id: Option<String>,
    /// Exactly one: the texts.
    #[schema(min_items = 1, max_items = 1)]
    inputs: Vec<OipTensor>,
    /// The outputs to answer, and how; without it, every output.
    #[serde(default)]
    outputs: Option<Vec<OipRequestedOutput>>,
    #[serde(default)]
    parameters: Option<OipRequestParameters>,
}

#[derive(Deserialize, ToSchema)]
pub struct OipRequestParameters {
    /// Every output not asked otherwise comes as binary tensor data.
    #[serde(default)]
    binary_data_output: Option<bool>,
}

/// An output the client asks for.
#[derive(Deserialize, ToSchema)]
pub struct OipRequestedOutput {
    /// `label` or `probabilities`.
    name: String,
    #[serde(default)]
    parameters: Option<OipOutputParameters>,
}

#[derive(Deserialize, ToSchema)]
pub struct OipOutputParameters {
    /// As binary tensor data (after the JSON header) rather than in `data`.
    #[serde(default)]
    binary_data: Option<bool>,
    /// `probabilities` only: the top k classes of each text, as `BYTES` `"score:index:label"`.
    #[serde(default)]
    classification: Option<u64>,
}

/// An input tensor: `BYTES`, shape `[n]` or `[n, 1]`; its texts in `data` (flat, or as
/// `[[text], ...]`), or, with the binary tensor data extension, `binary_data_size` bytes
/// after the JSON header.
#[derive(Deserialize, ToSchema)]
pub struct OipTensor {
    name: String,
    /// `[n]` or `[n, 1]`, n the number of texts.
    #[schema(min_items = 1, max_items = 2)]
    shape: Vec<i64>,
    /// `BYTES`.
    #[schema(pattern = "^BYTES$")]
    datatype: String,
    #[serde(default)]
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    data: Option<Entries>,
    #[serde(default)]
    parameters: Option<OipTensorParameters>,
}

#[derive(Deserialize, ToSchema)]
pub struct OipTensorParameters {
    /// The input's bytes after the JSON header (the binary tensor data extension).
    #[serde(default)]
    binary_data_size: Option<u64>,
}

/// An output tensor: its elements in `data`, or, as binary tensor data, `binary_data_size`
/// bytes after the JSON header.
#[derive(Serialize, ToSchema)]
pub struct OipOutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    /// `label`: the n predicted classes; `probabilities`: n × classes numbers, row by row.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<TensorData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OipOutputTensorParameters>,
}

#[derive(Serialize, ToSchema)]
pub struct OipOutputTensorParameters {
    binary_data_size: usize,
}

/// A tensor's elements: FP32 as `f32` (written in its shortest form: `0.9667709`, not the
/// `f64` widening `0.9667708873748779`), BYTES as strings.
#[derive(Serialize)]
#[serde(untagged)]
enum TensorData<'a> {
    Bytes(Vec<&'a str>),
    Strings(Vec<String>),
    Fp32(Vec<f32>),
}

impl TensorData<'_> {
    /// The elements as the binary tensor data extension frames them.
    fn binary(&self) -> Vec<u8> {
        match self {
            Self::Bytes(v) => binary::encode_bytes(v),
            Self::Strings(v) => binary::encode_bytes(v),
            Self::Fp32(v) => binary::encode_fp32(v),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OipInferResponse<'a> {
    model_name: &'a str,
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

/// The model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Label,
    Probabilities,
}

/// One output the answer carries, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    output: Output,
    binary: bool,
    /// The top k classes instead of every probability.
    classification: Option<usize>,
}

/// What the client asked of the answer: its id and outputs.
#[derive(Debug, Default)]
struct Asked {
    id: Option<String>,
    outputs: Vec<Wanted>,
}

/// The outputs the request asks for, checked: known names, each once, classification only of
/// `probabilities`.
fn wanted(
    outputs: Option<Vec<OipRequestedOutput>>,
    parameters: Option<&OipRequestParameters>,
) -> Result<Vec<Wanted>, String> {
    let all_binary = parameters.and_then(|p| p.binary_data_output).unwrap_or(false);
    let Some(outputs) = outputs else {
        return Ok([Output::Label, Output::Probabilities]
            .map(|output| Wanted { output, binary: all_binary, classification: None })
            .to_vec());
    };
    let mut wanted: Vec<Wanted> = Vec::with_capacity(outputs.len());
    for asked in outputs {
        let output = match asked.name.as_str() {
            "label" => Output::Label,
            "probabilities" => Output::Probabilities,
            other => {
                return Err(format!(
                    "unknown output '{}'; the model's outputs are 'label' and 'probabilities'",
                    shown(other)
                ));
            }
        };
        if wanted.iter().any(|w| w.output == output) {
            return Err(format!("output '{}' is asked for twice", asked.name));
        }
        let p = asked.parameters.as_ref();
        let classification = p.and_then(|p| p.classification).filter(|&k| k > 0);
        if classification.is_some() && output == Output::Label {
            return Err("classification is for numeric outputs: ask it of 'probabilities', not 'label'".into());
        }
        wanted.push(Wanted {
            output,
            binary: p.and_then(|p| p.binary_data).unwrap_or(all_binary),
            classification: classification.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
        });
    }
    if wanted.is_empty() {
        return Err("\"outputs\" asks for none of the model's outputs".into());
    }
    Ok(wanted)
}

/// The request's texts (one `BYTES` input, checked against its shape and `max` texts), taken
/// from its JSON `data` or from the binary data after the JSON header, and what it asks of
/// the answer.
fn texts(req: OipInferRequest, binary: Option<&[u8]>, max: usize) -> Result<(Asked, Vec<Option<String>>), InferError> {
    let outputs = wanted(req.outputs, req.parameters.as_ref()).map_err(InferError::Validation)?;
    let [input] = <[OipTensor; 1]>::try_from(req.inputs)
        .map_err(|v| InferError::Validation(format!("expected 1 input tensor, got {}", v.len())))?;
    // The client's strings are echoed bounded and escaped (`shown`): they reach the error
    // body, the log line and the row.
    let name = shown(&input.name);
    let size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
    let framing = |m: String| InferError::from(WireError::TensorData(m));
    // The framing first: the body is read as the extension says, whatever the tensor holds.
    let section = match (binary, size) {
        (None, Some(_)) => {
            return Err(framing(format!(
                "input '{name}' has a binary_data_size, and the request no Inference-Header-Content-Length"
            )));
        }
        (Some(data), Some(size)) => {
            let mut sections = binary::Sections::new(data);
            let section = sections.take(&name, size).map_err(framing)?;
            sections.finish().map_err(framing)?;
            Some(section)
        }
        (Some(data), None) => {
            binary::Sections::new(data).finish().map_err(framing)?;
            None
        }
        (None, None) => None,
    };
    if let (Some(section), Some(width)) = (section, binary::element_width(&input.datatype)) {
        let elements = input.shape.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok()?.checked_mul(n));
        if elements.and_then(|n| n.checked_mul(width)) != Some(section.len()) {
            return Err(framing(format!(
                "input '{name}': {} bytes of {} do not fill its shape {}",
                section.len(),
                shown(&input.datatype),
                shown(&format!("{:?}", input.shape))
            )));
        }
    }
    if input.datatype != "BYTES" {
        return Err(InferError::Validation(format!("input '{name}' must be BYTES, not {}", shown(&input.datatype))));
    }
    let n = match input.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => *n as usize,
        other => {
            return Err(InferError::Validation(format!(
                "input '{name}' must have shape [n] or [n, 1], not {}",
                shown(&format!("{other:?}"))
            )));
        }
    };
    if n == 0 || n > max {
        return Err(InferError::Validation(format!(
            "input '{name}' must hold 1 to {max} elements (MAX_BATCH_TEXTS); its shape is {:?}",
            input.shape
        )));
    }
    let data: Vec<Option<String>> = match (input.data, section) {
        (Some(_), Some(_)) => {
            return Err(InferError::Validation(format!("input '{name}' has both data and a binary_data_size")));
        }
        (None, None) => {
            return Err(InferError::Validation(format!(
                "input '{name}' has no data (neither \"data\" nor a binary_data_size parameter)"
            )));
        }
        (None, Some(section)) => {
            binary::decode_bytes(section, n, &name).map_err(framing)?.into_iter().map(Some).collect()
        }
        // Flat, or nested one level as [[t], [t], ...] for shape [n, 1].
        (Some(entries), None) => entries
            .0
            .into_iter()
            .map(|e| match e {
                Entry::Text(t) | Entry::Wrapped(t) => Some(t),
                Entry::Other => None,
            })
            .collect(),
    };
    if data.len() != n {
        return Err(InferError::Validation(format!("input '{name}': shape says {n} texts, data has {}", data.len())));
    }
    Ok((Asked { id: req.id, outputs }, data))
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
/// Outputs `label` (`BYTES`, `[n]`) and `probabilities` (`FP32`, `[n, classes]`). With the
/// binary tensor data extension (an `Inference-Header-Content-Length` header), the input's
/// texts follow the JSON header as 4-byte little-endian lengths and bytes, and outputs asked
/// with `binary_data: true` follow the answer's JSON header the same way.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name"),
           ("Inference-Header-Content-Length" = Option<u64>, Header, description = HEADER_LENGTH_DOC)),
    request_body(content(
        (OipInferRequest = "application/json"),
        (Vec<u8> = "application/octet-stream"),
    )),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The predictions: JSON, or (outputs asked as binary data) the JSON header and the outputs' bytes",
            content((OipInferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        OipInferErrors,
    ))]
pub async fn infer(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let model = match resolve(&s, path) {
        Ok((model, _)) => model.name().to_string(),
        Err(e) => return s.oip_error_response(&meta.request_id, e),
    };
    let hang_up = HangUp::watch();
    let mut asked = Asked::default();
    let command = async {
        let received = body::receive(&s, &meta, &headers, body).await?;
        // With the binary tensor data extension, the body is a JSON header and bytes, whatever
        // its Content-Type says (tritonclient sends none, perf_analyzer octet-stream).
        let (header, data) = match headers.get(binary::HEADER_LENGTH) {
            Some(length) => {
                body::uncompressed(&headers)?;
                let (header, data) =
                    binary::split(&received.bytes, length).map_err(|m| InferError::from(WireError::TensorData(m)))?;
                (header, Some(data))
            }
            None => {
                body::json_headers(&headers, BODY.absent_is_json)?;
                (&received.bytes[..], None)
            }
        };
        let req: OipInferRequest = body::parse_json(&s, header, BODY)?;
        let (a, texts) = texts(req, data, s.pipeline.max_batch_texts())?;
        asked = a;
        Ok(BatchCommand { texts, all_or_nothing: true, model: Some(model) })
    };
    let answer = s.pipeline.infer_batch(&meta, command).await;
    let response = match answer {
        Ok(answer) => respond(&s, &meta, asked, answer),
        Err(e) => s.oip_error_response(&meta.request_id, e),
    };
    hang_up.answered();
    piped(response)
}

/// Classifies with a version of the model (the version served now; any other is 404).
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name"),
           ("version" = String, Path, description = "The model version served (`model_version`)"),
           ("Inference-Header-Content-Length" = Option<u64>, Header, description = HEADER_LENGTH_DOC)),
    request_body(content(
        (OipInferRequest = "application/json"),
        (Vec<u8> = "application/octet-stream"),
    )),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The predictions: JSON, or (outputs asked as binary data) the JSON header and the outputs' bytes",
            content((OipInferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        OipInferErrors,
    ))]
pub async fn version_infer(
    state: State<AppState>,
    meta: Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer(state, meta, path, headers, body).await
}

/// The binary tensor data extension's header, as the document describes it.
const HEADER_LENGTH_DOC: &str = "Binary tensor data: the body's first this many bytes are the JSON request, \
    and the inputs with a binary_data_size parameter follow it";

/// How OIP reads its JSON: the shared reader, JSON also without a Content-Type.
const BODY: BodyRules = BodyRules {
    shape: "the body must be an inference request: {\"inputs\": [{\"name\", \"shape\", \"datatype\": \"BYTES\", \"data\"}]}",
    absent_is_json: true,
    batch: Some(|max| format!("an input must hold 1 to {max} elements (MAX_BATCH_TEXTS); its data holds more")),
};

/// The top `k` classes of a text as Triton's classification extension writes them.
fn top_classes(probabilities: &[f64], labels: &[String], k: usize) -> impl Iterator<Item = String> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    // Highest first; ties keep the model's class order.
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order.into_iter().take(k).map(move |i| format!("{}:{i}:{}", probabilities[i] as f32, labels[i]))
}

/// The answer's tensors, read with the labels of the model snapshot that answered, as the
/// client asked for them (JSON `data`, or binary data after the JSON header). (The batch is
/// all or nothing, so every text has an answer; were one missing, the request would fail
/// with its error.)
fn respond(s: &AppState, meta: &RequestMeta, asked: Asked, served: BatchInferred) -> Response {
    let labels = served.by.labels();
    let n = served.results.len();
    let mut answers = Vec::with_capacity(n);
    for result in &served.results {
        match result {
            Ok(answer) => answers.push(answer),
            Err(e) => return s.oip_error_response(&meta.request_id, e.clone()),
        }
    }
    let mut outputs = Vec::with_capacity(asked.outputs.len());
    let mut tail = Vec::new();
    for wanted in asked.outputs {
        let (name, datatype, shape, data) = match (wanted.output, wanted.classification) {
            (Output::Label, _) => {
                ("label", "BYTES", vec![n], TensorData::Bytes(answers.iter().map(|a| a.label(labels)).collect()))
            }
            (Output::Probabilities, None) => {
                let values = answers.iter().flat_map(|a| a.prediction.probabilities.iter().map(|&p| p as f32));
                ("probabilities", "FP32", vec![n, labels.len()], TensorData::Fp32(values.collect()))
            }
            (Output::Probabilities, Some(k)) => {
                let k = k.min(labels.len());
                let classes = answers.iter().flat_map(|a| top_classes(&a.prediction.probabilities, labels, k));
                ("probabilities", "BYTES", vec![n, k], TensorData::Strings(classes.collect()))
            }
        };
        let tensor = if wanted.binary {
            let bytes = data.binary();
            let parameters = Some(OipOutputTensorParameters { binary_data_size: bytes.len() });
            tail.extend_from_slice(&bytes);
            OipOutputTensor { name, datatype, shape, data: None, parameters }
        } else {
            OipOutputTensor { name, datatype, shape, data: Some(data), parameters: None }
        };
        outputs.push(tensor);
    }
    let answer = OipInferResponse {
        model_name: &served.by.name,
        model_version: served.by.version().to_owned(),
        id: asked.id.unwrap_or_else(|| meta.request_id.clone()),
        outputs,
        parameters: OipInferParameters { worker_id: s.worker_id().to_owned(), request_id: meta.request_id.clone() },
    };
    if tail.is_empty() {
        return Json(answer).into_response();
    }
    framed(s, meta, &answer, tail)
}

/// A binary answer: the JSON header, then the outputs' bytes; `Inference-Header-Content-Length`
/// says where one ends.
fn framed(s: &AppState, meta: &RequestMeta, answer: &OipInferResponse, tail: Vec<u8>) -> Response {
    let mut body = match serde_json::to_vec(answer) {
        Ok(json) => json,
        Err(e) => return s.oip_error_response(&meta.request_id, InferError::Internal(e.to_string())),
    };
    let header_length = body.len();
    body.extend_from_slice(&tail);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    headers.insert(binary::HEADER_LENGTH, axum::http::HeaderValue::from(header_length));
    response
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(v: Value) -> OipInferRequest {
        serde_json::from_value(v).unwrap()
    }

    fn request(shape: Value, data: Value) -> OipInferRequest {
        parse(json!({ "inputs": [{ "name": "text", "shape": shape, "datatype": "BYTES", "data": data }] }))
    }

    fn message(e: InferError) -> String {
        e.to_string()
    }

    /// Issue 30 item 9: a 200 KB datatype and an escape sequence in the name were echoed as
    /// they came into the error body and the row.
    #[test]
    fn a_request_s_own_strings_come_back_bounded_and_escaped() {
        let huge = parse(json!({ "inputs": [{
            "name": "te\u{1b}[2Jxt", "shape": [1], "datatype": "X".repeat(200_000), "data": ["a"] }] }));
        let m = message(texts(huge, None, 64).unwrap_err());
        assert!(m.len() < 200, "{} bytes", m.len());
        assert!(!m.contains('\u{1b}'), "{m}");
        let shape = parse(json!({ "inputs": [{
            "name": "text", "shape": vec![2; 100_000], "datatype": "BYTES", "data": ["a"] }] }));
        assert!(message(texts(shape, None, 64).unwrap_err()).len() < 200);
        let output = parse(json!({ "inputs": [{ "name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"] }],
            "outputs": [{ "name": "x".repeat(100_000) }] }));
        assert!(message(texts(output, None, 64).unwrap_err()).len() < 200);
    }

    #[test]
    fn texts_come_flat_or_nested_and_must_match_the_shape() {
        let ab = [Some("a".to_owned()), Some("b".to_owned())];
        assert_eq!(texts(request(json!([2]), json!(["a", "b"])), None, 64).unwrap().1, ab);
        assert_eq!(texts(request(json!([2, 1]), json!([["a"], ["b"]])), None, 64).unwrap().1, ab);
        assert_eq!(texts(request(json!([2]), json!([1, ["a", "b"]])), None, 64).unwrap().1, [None, None]);
        let m = |r| message(texts(r, None, 64).unwrap_err());
        assert!(m(request(json!([3]), json!(["a", "b"]))).contains("shape says 3"));
        assert!(m(request(json!([2, 2]), json!(["a", "b"]))).contains("[n] or [n, 1]"));
        let fp32 = parse(json!({ "inputs": [{ "name": "text", "shape": [1], "datatype": "FP32", "data": [1.0] }] }));
        assert!(m(fp32).contains("BYTES"));
    }

    /// Issue 35 item 4: OIP clients read OIP's terms (the input tensor and its shape), not
    /// the REST API's `"texts"`.
    #[test]
    fn the_batch_limit_is_said_in_the_protocol_s_terms() {
        let m = message(texts(request(json!([3]), json!(["a", "b", "c"])), None, 2).unwrap_err());
        assert!(m.contains("input 'text' must hold 1 to 2 elements (MAX_BATCH_TEXTS); its shape is [3]"), "{m}");
        let m = message(texts(request(json!([0]), json!([])), None, 2).unwrap_err());
        assert!(m.contains("its shape is [0]") && !m.contains("\"texts\""), "{m}");
    }

    fn binary_request(header: Value, data: &[u8]) -> Result<(Asked, Vec<Option<String>>), InferError> {
        texts(parse(header), Some(data), 64)
    }

    #[test]
    fn binary_inputs_are_read_from_after_the_header_and_their_framing_is_checked() {
        let framed = binary::encode_bytes(&["I love it", "meh"]);
        let header = |size: usize| {
            json!({ "inputs": [{ "name": "text", "shape": [2, 1], "datatype": "BYTES",
                "parameters": { "binary_data_size": size } }] })
        };
        let (_, read) = binary_request(header(framed.len()), &framed).unwrap();
        assert_eq!(read, [Some("I love it".to_owned()), Some("meh".to_owned())]);
        let framing = |r: Result<_, InferError>| {
            let e = r.unwrap_err();
            assert_eq!(e.error_type().as_str(), "invalid_json", "{e}");
            e.to_string()
        };
        // A size past the body, bytes nobody claims, and lengths that do not add up.
        assert!(framing(binary_request(header(framed.len() + 1), &framed)).contains("bytes of binary data are left"));
        assert!(framing(binary_request(header(framed.len() - 1), &framed)).contains("1 bytes of binary data follow"));
        let three = binary::encode_bytes(&["a", "b", "c"]);
        assert!(framing(binary_request(header(three.len()), &three)).contains("more than the 2 elements"));
        assert!(framing(texts(parse(header(4)), None, 64)).contains("no Inference-Header-Content-Length"));
        // FP32 bytes must fill the shape (and then the input is refused for not being BYTES).
        let fp32 = |size: usize| {
            json!({ "inputs": [{ "name": "x", "shape": [2], "datatype": "FP32",
                "parameters": { "binary_data_size": size } }] })
        };
        assert!(framing(binary_request(fp32(7), &[0; 7])).contains("7 bytes of FP32 do not fill its shape [2]"));
        let e = binary_request(fp32(8), &[0; 8]).unwrap_err();
        assert!(e.to_string().contains("must be BYTES"), "{e}");
        let both = json!({ "inputs": [{ "name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"],
            "parameters": { "binary_data_size": 5 } }] });
        assert!(binary_request(both, &binary::encode_bytes(&["a"])).unwrap_err().to_string().contains("both"));
    }

    #[test]
    fn outputs_are_chosen_by_name_each_binary_or_not() {
        let all = |p: Value| wanted(None, Some(&serde_json::from_value(p).unwrap())).unwrap();
        assert!(all(json!({ "binary_data_output": true })).iter().all(|w| w.binary));
        assert!(all(json!({})).iter().all(|w| !w.binary));
        let asked = |o: Value, p: Value| {
            let outputs: Vec<OipRequestedOutput> = serde_json::from_value(o).unwrap();
            wanted(Some(outputs), Some(&serde_json::from_value(p).unwrap()))
        };
        let picked = asked(
            json!([{ "name": "probabilities", "parameters": { "classification": 2 } }, { "name": "label" }]),
            json!({ "binary_data_output": true }),
        )
        .unwrap();
        assert_eq!(
            picked,
            [
                Wanted { output: Output::Probabilities, binary: true, classification: Some(2) },
                Wanted { output: Output::Label, binary: true, classification: None },
            ]
        );
        let own = asked(
            json!([{ "name": "label", "parameters": { "binary_data": false } }]),
            json!({ "binary_data_output": true }),
        );
        assert!(!own.unwrap()[0].binary);
        assert!(asked(json!([{ "name": "nope" }]), json!({})).unwrap_err().contains("unknown output 'nope'"));
        assert!(asked(json!([{ "name": "label" }, { "name": "label" }]), json!({})).unwrap_err().contains("twice"));
        let classified_label = asked(json!([{ "name": "label", "parameters": { "classification": 1 } }]), json!({}));
        assert!(classified_label.unwrap_err().contains("numeric outputs"));
    }

    #[test]
    fn classification_gives_the_top_classes_highest_first() {
        let labels = ["negative", "neutral", "positive"].map(String::from);
        let top: Vec<String> = top_classes(&[0.2, 0.1, 0.7], &labels, 2).collect();
        assert_eq!(top, ["0.7:2:positive", "0.2:0:negative"]);
    }
}
