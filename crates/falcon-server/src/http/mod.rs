//! The HTTP surface: routes, the request-context middleware and error mapping. It
//! extracts, validates the wire format, calls the application layer (`app`), and maps
//! its errors once (`error.rs`).

pub mod api;
pub mod body;
mod entries;
pub mod error;
mod oip;
pub mod openapi;
mod routes;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use api::{is_sane_request_id, new_request_id};
use error::{ApiError, ErrorResponse};
use falcon_app::config::Cidrs;
use falcon_app::pipeline::access::Credential;
use falcon_app::pipeline::{InferError, Pipeline, RequestMeta};
use falcon_app::telemetry::throttle::LogLimiter;

/// Cloned into every request (the middleware's and the handler's `State`): one reference
/// count, whatever the state holds.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every request of a worker shares.
pub struct Shared {
    pub pipeline: Pipeline,
    pub max_body_bytes: usize,
    /// Bytes of bodies being received now, all requests together (`MAX_BODY_BYTES_IN_FLIGHT`).
    pub body_budget: body::BodyBudget,
    pub started: std::time::Instant,
    /// `None` renders an empty /metrics (socket-less handler tests).
    pub metrics: Option<Arc<PrometheusHandle>>,
    /// Rate limit of error log lines, per `error_type`.
    pub error_log: Arc<LogLimiter>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Cidrs>,
}

impl AppState {
    pub fn worker_id(&self) -> &str {
        self.pipeline.worker_id()
    }

    /// The standard error response for `error` (counted and logged, see `ErrorResponse`).
    pub fn error_response(&self, request_id: &str, error: impl Into<ApiError>) -> Response {
        let error = error.into();
        ErrorResponse { error, request_id, worker_id: self.worker_id(), log: &self.error_log }.into_response()
    }

    /// `error_response` in the Open Inference Protocol's shape (`{"error": …}`).
    pub fn oip_error_response(&self, request_id: &str, error: impl Into<ApiError>) -> Response {
        let error = error.into();
        ErrorResponse { error, request_id, worker_id: self.worker_id(), log: &self.error_log }.into_oip_response()
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy (`TRUSTED_PROXIES`),
/// then the last `X-Forwarded-For` hop that is not itself a trusted proxy. A client cannot
/// pick its own address (and so its rate-limit budget) by sending the header itself.
/// An IPv4 client is known by its IPv4 address, whether it came as `a.b.c.d` or as
/// `::ffff:a.b.c.d` (a dual-stack listener): one client, one budget.
fn client_ip(req: &Request, trusted: &Cidrs) -> Option<String> {
    let peer =
        req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_canonical())?;
    if !trusted.contains(peer) {
        return Some(peer.to_string());
    }
    let hops: Vec<std::net::IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    let client = hops.iter().rev().find(|ip| !trusted.contains(**ip)).or(hops.first()).copied().unwrap_or(peer);
    Some(client.to_string())
}

/// Marks a response produced by the panic handler, so the middleware can turn it into
/// the standard error body with the request id.
#[derive(Debug, Clone, Copy)]
struct Panicked;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request target answered with a route; longer gets 414 `uri_too_long`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most headers, and header bytes, a request may carry; more gets 431 `headers_too_large`.
/// (The HTTP parser's own limits sit far above these, so these answers are JSON.)
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The request's size limits, checked before anything else reads it. A declared body over
/// `max_body_bytes` is 413 before a byte of it is read (so `Expect: 100-continue` gets no
/// `100 Continue`).
fn oversized(req: &Request, max_body_bytes: usize) -> Option<ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        return Some(InferError::from(error::WireError::PayloadTooLarge { limit: max_body_bytes }).into());
    }
    let uri = req.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len()) + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong { limit: MAX_URI_BYTES });
    }
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES)
        .then_some(ApiError::HeadersTooLarge { count: MAX_HEADERS, bytes: MAX_HEADER_BYTES })
}

/// Every API route, each with its OpenAPI operation (from the handler's `#[utoipa::path]`):
/// the router and the document come from this one list.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::root))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::infer))
        .routes(routes!(routes::infer_batch))
        .routes(routes!(routes::admin_reload))
        .routes(routes!(oip::server_metadata))
        .routes(routes!(oip::live))
        .routes(routes!(oip::ready))
        .routes(routes!(oip::model_metadata))
        .routes(routes!(oip::version_metadata))
        .routes(routes!(oip::model_ready))
        .routes(routes!(oip::version_ready))
        .routes(routes!(oip::model_config))
        .routes(routes!(oip::version_config))
        .routes(routes!(oip::infer))
        .routes(routes!(oip::version_infer))
        .routes(routes!(oip::repository::index))
        .routes(routes!(oip::repository::load))
        .routes(routes!(oip::repository::unload))
        .routes(routes!(oip::repository::all_stats))
        .routes(routes!(oip::repository::model_stats))
        .routes(routes!(oip::repository::version_stats))
}

/// The OpenAPI document served at `/openapi.json` (and printed by `falcon openapi`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(api().split_for_parts().1)
}

/// Builds the router. No socket needed: tests drive it with `oneshot`.
pub fn router(state: AppState) -> Router {
    let (api, document) = api().split_for_parts();
    let document = openapi::with_limits(
        openapi::finish(document),
        state.pipeline.backend().max_input_chars(),
        state.pipeline.max_batch_texts(),
    );
    let docs: Router<AppState> =
        SwaggerUi::new(openapi::DOCS_PATH).external_url_unchecked(openapi::OPENAPI_PATH, document).into();
    api.merge(docs.layer(middleware::from_fn_with_state(state.clone(), docs_not_found)))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            r.extensions_mut().insert(Panicked);
            r
        }))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// The Swagger UI answers a file it does not have with an empty 404: give it the standard
/// `not_found` body, like every other unknown path. Its redirect of `/docs` to `/docs/` is
/// empty too: say where the UI is, so `curl /docs` without `-L` shows something.
async fn docs_not_found(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let id = req.extensions().get::<RequestMeta>().map(|m| m.request_id.clone()).unwrap_or_default();
    let response = next.run(req).await;
    if response.status() == StatusCode::NOT_FOUND {
        return state.error_response(&id, ApiError::NotFound(error::shown(&path)));
    }
    if response.status().is_redirection() {
        let (parts, _) = response.into_parts();
        let to = parts.headers.get(axum::http::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("/docs/");
        let body = format!("The Swagger UI is at {to}\n");
        return Response::from_parts(parts, axum::body::Body::from(body));
    }
    response
}

/// Gives every request its `RequestMeta` (a sane incoming `X-Request-ID`, else a new id;
/// the client address; the arrival time), echoes the id in the response header, enforces
/// the whole-request deadline as a backstop (the pipeline enforces it itself, so its
/// outcome is logged), and turns a panic into the standard 500 body.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let meta = RequestMeta {
        request_id: req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_sane_request_id(v))
            .map_or_else(new_request_id, str::to_owned),
        client_ip: client_ip(&req, &state.trusted_proxies),
        received: tokio::time::Instant::now(),
        authorization: Credential::new(req.headers().get("authorization").and_then(|v| v.to_str().ok())),
    };
    let id = meta.request_id.clone();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    let read_to_end = Arc::new(AtomicBool::new(false));
    let mut response = if let Some(error) = oversized(&req, state.max_body_bytes) {
        state.error_response(&id, error)
    } else {
        req.extensions_mut().insert(meta);
        // Only a request with a body is watched (GETs, probes and scrapes pass untouched).
        let req = if has_body {
            let end = Arc::clone(&read_to_end);
            req.map(|body| {
                axum::body::Body::new(body.with_trailers(async move {
                    end.store(true, Ordering::Relaxed);
                    None
                }))
            })
        } else {
            req
        };
        // Counted from now, a little after the pipeline's own deadline (from arrival): the
        // pipeline's fires first, and its outcome is logged.
        let deadline = state.pipeline.request_timeout();
        match falcon_app::deadline::within(tokio::time::Instant::now() + deadline, next.run(req)).await {
            Ok(r) if r.extensions().get::<Panicked>().is_none() => r,
            Ok(_) => state.error_response(&id, InferError::Internal("handler panicked".into())),
            Err(_) => state.error_response(&id, InferError::RequestTimeout(deadline)),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    // An error that made no request-log row: what reconciles inference_errors_total with
    // the rows (inference_texts_total{status="error"}).
    if let Some(error::Answered(kind)) = response.extensions().get::<error::Answered>().copied()
        && response.extensions().get::<error::Piped>().is_none()
    {
        falcon_app::telemetry::metrics::record_error_without_row(kind);
    }
    // Answered before its body was read (401, 429, 413 …): the connection cannot carry
    // another request, and the client is told so instead of finding out with EPIPE.
    if has_body && !read_to_end.load(Ordering::Relaxed) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
