//! The HTTP layer of a real worker (the shipped model, in-process cache and idempotency),
//! driven in-process with any method, path, headers and body: request parsing, content
//! types, JSON, validation, the batch and Open Inference Protocol formats (with Triton's
//! binary tensor data framing, when the input sets its header length). No panic (the
//! worker turns one into a 500, so a 500 fails here), every error is a JSON body with a
//! known `error_type` (or the protocol's `{"error": …}` under /v2), and every prediction is
//! a probability distribution.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use falcon_app::error_type::ErrorType;
use falcon_model::SentimentModel;
use falcon_server::http::{AppState, router};
use falcon_server::{Config, build_state};
use http_body_util::BodyExt;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _state: AppState,
    /// The worker's background tasks, which run as long as the fuzzer does. Kept here (not
    /// `mem::forget`): LeakSanitizer reports what nothing points to at exit.
    _background: falcon_app::tasks::Background,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let (state, background) = runtime.block_on(async {
            let config = Config::from_args([
                "--worker-id",
                "fuzz",
                "--request-log-enabled",
                "false",
                "--inference-threads",
                "1",
                "--max-request-body-bytes",
                "16384",
            ])
            .unwrap_or_else(|e| panic!("config: {e}"));
            let model = SentimentModel::shipped().unwrap_or_else(|e| panic!("model: {e}"));
            build_state(&config, Arc::new(model), None).await.unwrap_or_else(|e| panic!("state: {e}"))
        });
        Fixture { runtime, router: router(state.clone()), _state: state, _background: background }
    })
}

const PATHS: [&str; 14] = [
    "/infer",
    "/infer/batch",
    "/v2/models/sentiment/infer",
    "/v2/models/sentiment/config",
    "/v2/models/sentiment/versions/1/infer",
    "/v2/models/other/infer",
    "/v2/models/sentiment",
    "/v2",
    "/",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/admin/reload",
    "/docs/",
];

const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/problem+json",
    "application/octet-stream",
    "",
];

#[derive(Debug, Arbitrary)]
struct Input {
    post: bool,
    /// One of `PATHS`, or `raw_path` when out of range.
    route: u8,
    raw_path: String,
    content_type: u8,
    idempotency_key: Option<String>,
    request_id: Option<String>,
    authorization: Option<String>,
    /// `Inference-Header-Content-Length`: the body is a JSON header of this many bytes and
    /// binary tensor data.
    header_length: Option<u16>,
    body: Vec<u8>,
}

fn request(input: &Input) -> Option<Request<Body>> {
    let path = PATHS.get(usize::from(input.route)).copied().unwrap_or(&input.raw_path);
    let mut builder = Request::builder().method(if input.post { Method::POST } else { Method::GET }).uri(path);
    if let Some(ct) = CONTENT_TYPES.get(usize::from(input.content_type)).filter(|c| !c.is_empty()) {
        builder = builder.header("content-type", *ct);
    }
    for (name, value) in [
        ("x-idempotency-key", &input.idempotency_key),
        ("x-request-id", &input.request_id),
        ("authorization", &input.authorization),
    ] {
        if let Some(v) = value {
            builder = builder.header(name, v.as_str());
        }
    }
    if let Some(length) = input.header_length {
        builder = builder.header("inference-header-content-length", length);
    }
    // A path or header value the HTTP parser itself would refuse never reaches the worker.
    builder.body(Body::from(input.body.clone())).ok()
}

fn check(path: &str, status: StatusCode, header_length: Option<usize>, body: &[u8]) {
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {}", String::from_utf8_lossy(body));
    if path == "/metrics" || path.starts_with("/docs") {
        return;
    }
    // A binary answer: its JSON header, then the outputs' bytes, which must add up.
    if let Some(length) = header_length {
        assert!(status.is_success() && length <= body.len(), "{path} {status}: header length {length}");
        let header: Value = serde_json::from_slice(&body[..length]).unwrap_or_else(|e| panic!("{path}: {e}"));
        let sizes: u64 = header["outputs"]
            .as_array()
            .unwrap_or_else(|| panic!("{header}"))
            .iter()
            .filter_map(|o| o["parameters"]["binary_data_size"].as_u64())
            .sum();
        assert_eq!(sizes, (body.len() - length) as u64, "{header}");
        return;
    }
    let json: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{path} {status}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
    if status.is_client_error() || status.is_server_error() {
        let message = json["error"].as_str().unwrap_or_else(|| panic!("{path} {status}: no error: {json}"));
        assert!(!message.is_empty());
        if let Some(kind) = json["error_type"].as_str() {
            assert!(ErrorType::ALL.iter().any(|t| t.as_str() == kind), "{path}: unknown error_type {kind}");
        } else {
            assert!(path.starts_with("/v2"), "{path} {status}: an error without error_type: {json}");
        }
    } else if status.is_success() && path == "/infer" {
        let p = json["probabilities"].as_object().unwrap_or_else(|| panic!("{json}"));
        let sum: f64 = p.values().filter_map(Value::as_f64).sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}: {json}");
    }
}

fuzz_target!(|input: Input| {
    let Some(req) = request(&input) else { return };
    let path = req.uri().path().to_owned();
    let f = fixture();
    let (status, header_length, body) = f.runtime.block_on(async {
        let response = f.router.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
        let status = response.status();
        let header_length = response
            .headers()
            .get("inference-header-content-length")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (status, header_length, body)
    });
    check(&path, status, header_length, &body);
});
