//! Handlers: extract, validate the wire format, call the pipeline, answer.

use super::AppState;
use super::api::{
    Backends, BatchRequest, BatchResponse, InferRequest, InferResponse, Liveness, Readiness, ReadinessChecks,
    ReloadAnswer, ServiceInfo,
};
use super::error::{ApiError, HangUp, WireError, count};
use super::openapi::{ErrorBody, InferenceErrors};
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use falcon_app::pipeline::{BatchCommand, InferCommand, InferError, RequestMeta};
use falcon_app::telemetry::metrics;
use http_body_util::{BodyExt, LengthLimitError, Limited};

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
        model_version: h.model_version,
        timestamp: now(),
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "platform", responses(
    (status = 200, description = "Every metric of this worker", content_type = "text/plain", body = String),
))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    metrics::update_memory_usage();
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// How much of an unknown path a 404 body and its log line repeat.
const PATH_ECHO_CHARS: usize = 64;

/// An unknown path as an error body and log line repeat it: at most `PATH_ECHO_CHARS`.
pub fn shown_path(path: &str) -> String {
    match path.char_indices().nth(PATH_ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_owned(),
    }
}

pub async fn not_found(State(s): State<AppState>, Extension(meta): Extension<RequestMeta>, uri: Uri) -> Response {
    s.error_response(&meta.request_id, ApiError::NotFound(shown_path(uri.path())))
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
    response
}

/// Why a body could not be read: too large, the client gone, or not HTTP we understand.
fn body_error(e: &(dyn std::error::Error + 'static), limit: usize) -> InferError {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<LengthLimitError>() {
            return WireError::PayloadTooLarge { limit }.into();
        }
        // hyper reports a body cut short (EOF, reset) as a body error, not a parse error.
        if err.downcast_ref::<hyper::Error>().is_some_and(|h| !h.is_parse()) {
            return InferError::ClientClosed;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return InferError::ClientClosed;
        }
        source = err.source();
    }
    WireError::InvalidJson("the request body could not be read".into()).into()
}

/// Whether the body says it is JSON. A body without a Content-Type counts as JSON only where
/// the protocol allows it (`absent_is_json`: the Open Inference Protocol, whose clients, such
/// as tritonclient, send none).
fn is_json(headers: &HeaderMap, absent_is_json: bool) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return absent_is_json;
    };
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
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
    Ok(InferCommand { text: req.text, idempotency_key })
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
            BodyRules::json("the body must be a JSON object with an array field \"texts\""),
        )
        .await?;
        Ok(BatchCommand { texts: req.texts })
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
    response
}

/// What a route expects of its JSON body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyRules {
    /// The fixed message for a body that is JSON of the wrong shape.
    pub shape: &'static str,
    /// A body without a Content-Type is read as JSON (else it is 415).
    pub absent_is_json: bool,
}

impl BodyRules {
    pub const fn json(shape: &'static str) -> Self {
        Self { shape, absent_is_json: false }
    }
}

/// The one body reader of every inference route, whatever its protocol: a JSON body of at
/// most `MAX_REQUEST_BODY_BYTES`, read within the request's deadline, given up (503) once the
/// worker drains, with a Content-Type that says JSON.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    s: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: Body,
    rules: BodyRules,
) -> Result<T, InferError> {
    let BodyRules { shape, absent_is_json } = rules;
    let limit = s.max_body_bytes;
    let deadline = meta.received + s.pipeline.request_timeout();
    // A body still arriving when the worker starts to drain is not waited for: the client
    // gets 503 at once (a load balancer retries it elsewhere), and shutdown is not held up.
    let read = tokio::select! {
        biased;
        read = tokio::time::timeout_at(deadline, Limited::new(body, limit).collect()) => read,
        () = s.pipeline.readiness().drained() => return Err(InferError::NotReady("draining; send the request again")),
    };
    let read = read.map_err(|_| InferError::BodyTimeout(s.pipeline.request_timeout()))?;
    let body = read.map_err(|e| body_error(e.as_ref(), limit))?.to_bytes();
    if !is_json(headers, absent_is_json) {
        return Err(WireError::UnsupportedMediaType.into());
    }
    // Fixed messages: serde's own can quote the input (`invalid type: string "…"`), and raw
    // text never reaches an error body, a log line or a row.
    serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("at line {} column {}", e.line(), e.column());
        match e.classify() {
            Category::Data => InferError::Validation(format!("{shape} ({at})")),
            Category::Eof => WireError::InvalidJson(format!("unexpected end of input {at}")).into(),
            Category::Syntax | Category::Io => WireError::InvalidJson(format!("syntax error {at}")).into(),
        }
    })
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
    let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let proxied = req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("x-real-ip");
    let local = !proxied && peer.is_some_and(|ip| ip.is_loopback());
    if let Err(e) = s.pipeline.authorize_admin(&meta, local) {
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
