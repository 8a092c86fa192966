//! Two of Triton's protocol extensions over the worker's model repository:
//! - **model repository**: `POST /v2/repository/index` lists every model of the repository
//!   file and of the worker, with its state; `POST /v2/repository/models/{name}/load` loads a
//!   model from the file (or reloads it, checked, when it is served), `…/unload` stops serving
//!   it. Load and unload are admin routes: an `admin` API key, or without keys a direct
//!   request from this host. The default model cannot be unloaded (409 `default_model`).
//! - **statistics**: `GET /v2/models/stats`, `/v2/models/{name}/stats` (and under
//!   `/versions/{v}`): per model, requests that succeeded and failed, cache hits and misses,
//!   queue and compute time, texts classified and calls into the model.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::response::{IntoResponse, Response};
use falcon_app::models::{Loaded, ModelChangeError, ServedModel, StatsSnapshot};
use falcon_app::pipeline::{InferError, RequestMeta};
use serde::Serialize;
use utoipa::ToSchema;

use super::super::AppState;
use super::super::error::{ApiError, OipError};
use super::super::routes::is_local;
use super::{ModelPath, OipModelName, resolve};

/// A model of the repository and its state.
#[derive(Serialize, ToSchema)]
pub struct OipRepositoryModel {
    name: String,
    /// The version served; absent when the model is not loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// `READY` or `UNAVAILABLE`.
    #[schema(example = "READY")]
    state: &'static str,
    /// Why it is unavailable (`unloaded`, or why the repository file cannot be read).
    reason: String,
}

/// Every model of the repository file and of this worker, with its state.
#[utoipa::path(post, path = "/v2/repository/index", tag = "open-inference-protocol",
    responses((status = 200, description = "The models and their states", body = [OipRepositoryModel])))]
pub async fn index(State(s): State<AppState>) -> Json<Vec<OipRepositoryModel>> {
    // It reads the repository file: off the runtime threads, as every model load is.
    let models = std::sync::Arc::clone(s.pipeline.models());
    let entries = tokio::task::spawn_blocking(move || models.index()).await.unwrap_or_default();
    Json(
        entries
            .into_iter()
            .map(|e| OipRepositoryModel {
                state: if e.ready { "READY" } else { "UNAVAILABLE" },
                name: e.name,
                version: e.version,
                reason: e.reason,
            })
            .collect(),
    )
}

/// What a load or an unload did.
#[derive(Serialize, ToSchema)]
pub struct OipRepositoryChange {
    name: String,
    /// `loaded` (it was not served), `reloaded` (it was), `unloaded`, or `not_loaded` (an
    /// unload of a model that was not served).
    #[schema(example = "loaded")]
    action: &'static str,
    /// The version served now (absent after an unload).
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<String>,
}

/// Loads a model from the repository file and serves it; reloads it (checked, as a hot
/// reload is: same labels, a smoke prediction) when it is served already.
#[utoipa::path(post, path = "/v2/repository/models/{name}/load", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "A model of the repository file")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Loaded (or reloaded)", body = OipRepositoryChange),
        (status = 403, description = "`forbidden`: not an admin key, or (without keys) not a direct request from this host", body = OipError),
        (status = 404, description = "`model_not_found`: not in the repository file", body = OipError),
        (status = 422, description = "`reload_failed`: it did not load or failed its check (a served model serves on)", body = OipError),
    ))]
pub async fn load(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
    req: Request,
) -> Response {
    change(&s, &meta, path, is_local(&req), Change::Load).await
}

/// Stops serving a model: requests already running on it finish, new ones get 404
/// `model_not_found`. The default model cannot be unloaded.
#[utoipa::path(post, path = "/v2/repository/models/{name}/unload", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "A model of the repository")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Unloaded (or it was not loaded)", body = OipRepositoryChange),
        (status = 403, description = "`forbidden`", body = OipError),
        (status = 404, description = "`model_not_found`", body = OipError),
        (status = 409, description = "`default_model`: the default model cannot be unloaded", body = OipError),
    ))]
pub async fn unload(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
    req: Request,
) -> Response {
    change(&s, &meta, path, is_local(&req), Change::Unload).await
}

/// What an admin route of the repository does to its model.
#[derive(Clone, Copy)]
enum Change {
    Load,
    Unload,
}

/// An admin route of the repository: once the caller may use it (an admin key, or without
/// keys a direct request from this host) and the path names a model, the change; its action
/// and the version served after it, or the protocol's error.
async fn change(
    s: &AppState,
    meta: &RequestMeta,
    path: Result<Path<ModelPath>, PathRejection>,
    local: bool,
    what: Change,
) -> Response {
    let name = match admin_path(s, meta, path, local) {
        Ok(name) => name,
        Err(e) => return s.oip_error_response(&meta.request_id, e),
    };
    let models = s.pipeline.models();
    let changed = match what {
        Change::Load => models.load(&name, "POST /v2/repository/models/{name}/load").await.map(|l| match l {
            Loaded::Started { model_version, .. } => ("loaded", Some(model_version)),
            Loaded::Reloaded(r) => ("reloaded", Some(r.model_version)),
        }),
        Change::Unload => models
            .unload(&name, "POST /v2/repository/models/{name}/unload")
            .await
            .map(|was_served| (if was_served { "unloaded" } else { "not_loaded" }, None)),
    };
    match changed {
        Ok((action, model_version)) => Json(OipRepositoryChange { name, action, model_version }).into_response(),
        Err(e) => s.oip_error_response(&meta.request_id, change_error(e)),
    }
}

/// The model name of an admin route, once the caller may use it.
fn admin_path(
    s: &AppState,
    meta: &RequestMeta,
    path: Result<Path<ModelPath>, PathRejection>,
    local: bool,
) -> Result<String, ApiError> {
    s.pipeline.authorize_admin(meta, local)?;
    match path {
        Ok(Path(p)) => Ok(p.name),
        Err(e) => Err(InferError::Validation(format!("invalid model name in the path: {}", e.body_text())).into()),
    }
}

fn change_error(e: ModelChangeError) -> ApiError {
    match e {
        ModelChangeError::Refused(e) => e.into(),
        ModelChangeError::Load(e) => ApiError::ReloadFailed(e),
    }
}

/// A count and its cumulative nanoseconds.
#[derive(Serialize, ToSchema)]
pub struct OipStatDuration {
    count: u64,
    ns: u64,
}

impl From<(u64, u64)> for OipStatDuration {
    fn from((count, ns): (u64, u64)) -> Self {
        Self { count, ns }
    }
}

/// Triton's `InferStatistics`. Falcon's model takes strings and gives its outputs in one
/// step, so `compute_input` and `compute_output` take 0 ns (with `compute_infer`'s count) and
/// `compute_infer` is the model's time.
#[derive(Serialize, ToSchema)]
pub struct OipInferStatistics {
    success: OipStatDuration,
    fail: OipStatDuration,
    queue: OipStatDuration,
    compute_input: OipStatDuration,
    compute_infer: OipStatDuration,
    compute_output: OipStatDuration,
    cache_hit: OipStatDuration,
    cache_miss: OipStatDuration,
}

/// One model's statistics since it was loaded.
#[derive(Serialize, ToSchema)]
pub struct OipModelStatistics {
    name: String,
    /// The version as Triton numbers them (`perf_analyzer` parses it as an integer): 1 for
    /// the version loaded first, one more at each reload that swapped in another.
    #[schema(example = "1")]
    version: String,
    /// Falcon's own: the version served now, as everywhere else (`model_version`).
    model_version: String,
    /// When it last answered, in milliseconds since the epoch (0: never).
    last_inference: u64,
    /// Texts classified (batch elements).
    inference_count: u64,
    /// Calls into the model (a batched call is one).
    execution_count: u64,
    inference_stats: OipInferStatistics,
    /// Not kept per batch size (see `model_inference_batch_size` in /metrics).
    batch_stats: Vec<serde_json::Value>,
}

impl OipModelStatistics {
    fn of(model: &ServedModel) -> Self {
        let s: StatsSnapshot = model.stats().snapshot();
        Self {
            name: model.name().to_string(),
            version: model.slot().generation().to_string(),
            model_version: model.current().model_version().to_owned(),
            last_inference: s.last_inference_ms,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            inference_stats: OipInferStatistics {
                success: s.success.into(),
                fail: s.fail.into(),
                queue: s.queue.into(),
                // Each request's input and output steps take no time of their own, and are
                // counted with its inference, as Triton counts them (perf_analyzer checks).
                compute_input: (s.compute.0, 0).into(),
                compute_infer: s.compute.into(),
                compute_output: (s.compute.0, 0).into(),
                cache_hit: s.cache_hit.into(),
                cache_miss: s.cache_miss.into(),
            },
            batch_stats: Vec::new(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OipStatistics {
    model_stats: Vec<OipModelStatistics>,
}

/// Every served model's statistics.
#[utoipa::path(get, path = "/v2/models/stats", tag = "open-inference-protocol",
    responses((status = 200, description = "Statistics of every served model", body = OipStatistics)))]
pub async fn all_stats(State(s): State<AppState>) -> Json<OipStatistics> {
    let model_stats = s.pipeline.models().served().iter().map(|m| OipModelStatistics::of(m)).collect();
    Json(OipStatistics { model_stats })
}

/// A model's statistics.
#[utoipa::path(get, path = "/v2/models/{name}/stats", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model's statistics", body = OipStatistics),
        (status = 404, description = "`model_not_found`", body = OipError),
    ))]
pub async fn model_stats(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    match resolve(&s, path) {
        Ok((model, _)) => Json(OipStatistics { model_stats: vec![OipModelStatistics::of(&model)] }).into_response(),
        Err(e) => s.oip_error_response(&meta.request_id, e),
    }
}

/// The statistics of a version of a model (the version served now; any other is 404).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/stats", tag = "open-inference-protocol",
    params(("name" = OipModelName, Path, description = "The model's name"),
           ("version" = String, Path, description = "The model version served (`model_version`)")),
    responses(
        (status = 200, description = "The model's statistics", body = OipStatistics),
        (status = 404, description = "No such model or version", body = OipError),
    ))]
pub async fn version_stats(
    state: State<AppState>,
    meta: Extension<RequestMeta>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Response {
    model_stats(state, meta, path).await
}
