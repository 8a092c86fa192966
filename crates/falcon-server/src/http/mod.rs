//! The HTTP surface: routes, the request-context middleware and error mapping.

pub mod error;
mod routes;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::{is_sane_request_id, new_request_id};
use crate::state::AppState;
use error::{ApiError, ErrorResponse};

/// The request id of the request being handled, put in its extensions by the middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The client's address: the first `X-Forwarded-For` hop (set by our nginx), else the peer.
#[derive(Debug, Clone)]
pub struct ClientIp(pub Option<String>);

fn client_ip(req: &Request) -> Option<String> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .filter(|v| v.parse::<std::net::IpAddr>().is_ok());
    forwarded.or_else(|| {
        req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string())
    })
}

/// Marks a response produced by the panic handler, so the middleware can turn it into
/// the standard error body with the request id.
#[derive(Debug, Clone, Copy)]
struct Panicked;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Builds the router. No socket needed: tests drive it with `oneshot`.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    Router::new()
        .route("/", get(routes::root))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/infer", post(routes::infer))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            r.extensions_mut().insert(Panicked);
            r
        }))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// Gives every request an id (a sane incoming `X-Request-ID`, else a new one), echoes it
/// in the response header, enforces the whole-request deadline, and turns a panic into
/// the standard 500 body.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map_or_else(new_request_id, str::to_owned);
    let ip = client_ip(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(ClientIp(ip.clone()));
    let is_infer = req.uri().path() == "/infer";
    let deadline = state.settings.request_timeout;
    let error = |error| ErrorResponse { error, request_id: &id, worker_id: state.worker_id() }.into_response();
    // Failures the handler could not answer itself become the standard error body here.
    let failure = match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(r) if r.extensions().get::<Panicked>().is_none() => Ok(r),
        Ok(_) => Err(ApiError::Internal("handler panicked".into())),
        Err(_) => Err(ApiError::RequestTimeout(deadline.as_secs_f64())),
    };
    let mut response = failure.unwrap_or_else(|e| {
        if is_infer {
            crate::telemetry::metrics::record_request(false, false, started.elapsed());
            // The handler never finished, so it wrote no request-log row: write it here.
            routes::log_failure(&state, &id, ip, &e, started.elapsed());
        }
        error(e)
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}
