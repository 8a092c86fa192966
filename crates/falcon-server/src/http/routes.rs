//! Handlers: extract, validate the wire format, call the pipeline, answer.

use super::AppState;
use super::api::{
    Backends, BatchRequest, BatchResponse, InferRequest, InferResponse, Liveness, Readiness, ReadinessChecks,
    ReadyModel, ReloadAnswer, ServiceInfo,
};
use super::body::{BodyRules, read_json};
use super::entries::Entry;
use super::error::{ApiError, HangUp, count, piped, shown};
use super::openapi::{ErrorBody, InferenceErrors};
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use falcon_app::pipeline::{BatchCommand, InferCommand, InferError, RequestMeta};
use falcon_app::telemetry::metrics;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What this is: name, version, worker and model.
#[utoipa::path(get, path = "/", tag = "platform",
    responses((status = 200, description = "The service", body = ServiceInfo)))]
pub async fn root(State(s): State<AppState>) -> Json<ServiceInfo> {
    let h = s.pipeline.health();
    let status = if h.ready {
        "ready"
    } else if h.draining {
        "draining"
    } else {
        "starting"
    };
    Json(ServiceInfo {
        name: "falcon",
        version: env!("CARGO_PKG_VERSION"),
        worker_id: s.worker_id().to_owned(),
        status,
        model_version: h.model_version,
    })
}

/// Liveness: the process answers. Never depends on Redis, Postgres or readiness.
#[utoipa::path(get, path = "/healthz", tag = "platform",
    responses((status = 200, description = "The process is alive", body = Liveness)))]
pub async fn healthz(State(s): State<AppState>) -> Json<Liveness> {
    Json(Liveness {
        status: "healthy",
        worker_id: s.worker_id().to_owned(),
        timestamp: now(),
        uptime_seconds: s.started.elapsed().as_secs_f64(),
    })
}

/// Readiness: 200 only while the model is loaded and the worker is not draining.
#[utoipa::path(get, path = "/readyz", tag = "platform", responses(
    (status = 200, description = "Ready for traffic", body = Readiness),
    (status = 503, description = "Not ready (starting, or draining): send traffic elsewhere", body = Readiness),
))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    let h = s.pipeline.health();
    let status = if h.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness {
        ready: h.ready,
        worker_id: s.worker_id().to_owned(),
        draining: h.draining,
        checks: ReadinessChecks {
            model_loaded: h.model_loaded,
            // Redis down degrades (no shared cache) but never makes the worker unready.
            redis_available: h.redis_available.into(),
            database_available: h.database_available.into(),
        },
        backends: Backends { cache: h.cache_backend, idempotency: h.idempotency_backend, request_log: h.request_log },
        models: ready_models(&s, h.models),
        model_version: h.model_version,
        timestamp: now(),
    };
    (status, Json(body)).into_response()
}

/// The served models, the default first.
fn ready_models(s: &AppState, models: Vec<(std::sync::Arc<str>, String)>) -> Vec<ReadyModel> {
    let default = s.pipeline.models().default_model().name();
    let mut models: Vec<ReadyModel> = models
        .into_iter()
        .map(|(name, model_version)| ReadyModel { default: name == *default, name: name.to_string(), model_version })
        .collect();
    models.sort_by_key(|m| !m.default);
    models
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "platform", responses(
    (status = 200, description = "Every metric of this worker", content_type = "text/plain", body = String),
))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    metrics::update_memory_usage();
    for model in s.pipeline.models().served() {
        metrics::set_truncated_texts(model.name(), model.current().truncated_texts());
    }
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

pub async fn not_found(State(s): State<AppState>, Extension(meta): Extension<RequestMeta>, uri: Uri) -> Response {
    s.error_response(&meta.request_id, ApiError::NotFound(shown(uri.path())))
}

pub async fn method_not_allowed(State(s): State<AppState>, Extension(meta): Extension<RequestMeta>) -> Response {
    s.error_response(&meta.request_id, ApiError::MethodNotAllowed)
}

pub const IDEMPOTENCY_KEY_HEADER: &str = "x-idempotency-key";

/// Classifies one text.
///
/// Answers from the response cache when it can. With `X-Idempotency-Key`, a retry with the
/// same key and text replays the first answer; the same key with another text is 409.
#[utoipa::path(post, path = "/infer", tag = "inference",
    request_body(content = InferRequest, content_type = "application/json"),
    params(
        ("x-idempotency-key" = Option<String>, Header, pattern = "^[!-~]{1,128}$",
            description = "Makes retries safe: the same key and text get the first answer again (1-128 visible ASCII characters)"),
        ("x-request-id" = Option<String>, Header,
            description = "Your request id, echoed back and logged if it is 1-128 of `A-Za-z0-9-_.:`; else one is made"),
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The prediction", body = InferResponse,
            headers(("x-request-id" = String, description = "The request's id"))),
        (status = 409, description = "`idempotency_conflict`: the key was used with another text, or is in flight", body = ErrorBody),
        InferenceErrors,
    ))]
pub async fn infer(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let hang_up = HangUp::watch();
    let response = match s.pipeline.infer(&meta, read_command(&s, &meta, &headers, body)).await {
        Ok(served) => Json(InferResponse::new(&served, s.worker_id(), &meta.request_id)).into_response(),
        Err(e) => s.error_response(&meta.request_id, e),
    };
    hang_up.answered();
    piped(response)
}

/// The wire format of POST /infer: a JSON body `{"text": …}` of at most
/// `MAX_REQUEST_BODY_BYTES`, read within the request's deadline, and an optional
/// `X-Idempotency-Key` header.
async fn read_command(
    s: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: Body,
) -> Result<InferCommand, InferError> {
    let req: InferRequest = read_json(
        s,
        meta,
        headers,
        body,
        BodyRules::json("the body must be a JSON object with a string field \"text\""),
    )
    .await?;
    let idempotency_key =
        headers.get(IDEMPOTENCY_KEY_HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Ok(InferCommand { text: req.text, model: req.model, idempotency_key })
}

/// Classifies up to MAX_BATCH_TEXTS texts in one request.
///
/// One answer per text, in order, each with its own `cache_hit`; a text that breaks the rules
/// gets its error in its place and the others are answered. Texts not in the cache go to the
/// model as one batch; each is one row of the request log.
#[utoipa::path(post, path = "/infer/batch", tag = "inference",
    request_body(content = BatchRequest, content_type = "application/json"),
    params(("x-request-id" = Option<String>, Header, description = "Your request id, echoed back and logged")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "One answer or error per text", body = BatchResponse),
        InferenceErrors,
    ))]
pub async fn infer_batch(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let command = async {
        let req: BatchRequest = read_json(
            &s,
            &meta,
            &headers,
            body,
            BodyRules {
                batch: Some(|max| format!("\"texts\" must hold 1 to {max} texts (MAX_BATCH_TEXTS); it holds more")),
                ..BodyRules::json("the body must be a JSON object with an array field \"texts\"")
            },
        )
        .await?;
        let texts = req.texts.0.into_iter().map(|e| if let Entry::Text(t) = e { Some(t) } else { None }).collect();
        Ok(BatchCommand { texts, all_or_nothing: false, model: req.model })
    };
    let hang_up = HangUp::watch();
    let response = match s.pipeline.infer_batch(&meta, command).await {
        Ok(served) => {
            for e in served.results.iter().filter_map(|r| r.as_ref().err()) {
                count(e.error_type());
            }
            Json(BatchResponse::new(&served, s.worker_id(), &meta.request_id)).into_response()
        }
        Err(e) => s.error_response(&meta.request_id, e),
    };
    hang_up.answered();
    piped(response)
}

/// Reloads the model from MODEL_PATH, as SIGHUP does.
///
/// Loads `MODEL_PATH` again, checks it and swaps it in. With
/// API keys configured it needs a key with the `admin` scope; without, it answers only
/// direct requests from this host (a request that came through a proxy, with
/// `X-Forwarded-For` or `X-Real-IP`, or from another address is 403 `forbidden`).
#[utoipa::path(post, path = "/admin/reload", tag = "admin",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The model at `MODEL_PATH` was loaded, checked and swapped in", body = ReloadAnswer),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key, or (without keys) not a direct request from this host", body = ErrorBody),
        (status = 422, description = "`reload_failed`: the new model did not load or failed its check; the old one serves on", body = ErrorBody),
    ))]
pub async fn admin_reload(
    State(s): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    req: Request,
) -> Response {
    if let Err(e) = s.pipeline.authorize_admin(&meta, is_local(&req)) {
        return s.error_response(&meta.request_id, e);
    }
    match s.pipeline.model().reload("POST /admin/reload").await {
        Ok(reload) => {
            Json(ReloadAnswer { status: "reloaded", worker_id: s.worker_id().to_owned(), reload: reload.into() })
                .into_response()
        }
        Err(e) => s.error_response(&meta.request_id, ApiError::ReloadFailed(e)),
    }
}

/// Whether a request came straight from this host: a loopback peer, and no proxy's
/// `X-Forwarded-For` or `X-Real-IP` (admin routes without API keys answer only these).
pub fn is_local(req: &Request) -> bool {
    let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let proxied = req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("x-real-ip");
    !proxied && peer.is_some_and(|ip| ip.is_loopback())
}
