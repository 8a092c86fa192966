//! Handler tests: the router driven in-process with `oneshot`, with fake classifiers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use falcon_backend::{Backend, BackendError, Prediction};
use falcon_server::http::{AppState, router};
use falcon_server::{Config, build_state};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Answers "positive" for texts containing "good", else "negative"; the first `slow_calls`
/// calls take `delay`; optionally panics; counts its calls.
struct Fake {
    delay: Duration,
    slow_calls: usize,
    panics: bool,
    calls: AtomicUsize,
    labels: Vec<String>,
}

impl Fake {
    fn new() -> Self {
        Self {
            delay: Duration::ZERO,
            slow_calls: usize::MAX,
            panics: false,
            calls: AtomicUsize::new(0),
            labels: vec!["negative".into(), "positive".into()],
        }
    }
}

impl Backend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
        Ok(texts
            .iter()
            .map(|text| {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if n < self.slow_calls {
                    std::thread::sleep(self.delay);
                }
                assert!(!self.panics, "model exploded");
                let class = usize::from(text.contains("good"));
                let mut probabilities = vec![0.2, 0.2];
                probabilities[class] = 0.8;
                Prediction { class, confidence: 0.8, probabilities }
            })
            .collect())
    }
    fn model_version(&self) -> &str {
        "fake-v1"
    }
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn normalize(&self, text: &str) -> String {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn max_input_chars(&self) -> usize {
        10_000
    }
}

/// The worker's state, built as `falcon serve` builds it, around `fake`.
async fn state_from(fake: Arc<Fake>, args: &[&str]) -> AppState {
    let defaults = [
        ("--worker-id", "test-w"),
        ("--max-request-body-bytes", "4096"),
        ("--request-log-enabled", "false"),
        ("--inference-threads", "2"),
        ("--text-hash-key", "a handler test's text hash key"),
    ];
    // A flag in `args` replaces its default (clap takes each flag once).
    let mut all: Vec<&str> =
        defaults.iter().filter(|(flag, _)| !args.contains(flag)).flat_map(|(f, v)| [*f, *v]).collect();
    all.extend_from_slice(args);
    let config = Config::from_args(all).unwrap();
    build_state(&config, fake, None).await.unwrap().0
}

async fn state_with(fake: Arc<Fake>, cache: bool, inference_timeout: Duration, request_timeout: Duration) -> AppState {
    let cache = cache.to_string();
    let inference = inference_timeout.as_secs_f64().to_string();
    let request = request_timeout.as_secs_f64().to_string();
    state_from(
        fake,
        &["--cache-enabled", &cache, "--inference-timeout-seconds", &inference, "--request-timeout-seconds", &request],
    )
    .await
}

async fn state() -> AppState {
    state_with(Arc::new(Fake::new()), true, Duration::from_secs(5), Duration::from_secs(30)).await
}

async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let id = resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, id, body)
}

fn infer(body: &str) -> Request<Body> {
    Request::post("/infer").header("content-type", "application/json").body(Body::from(body.to_owned())).unwrap()
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, error_type: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error_type"], error_type, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(body["worker_id"], "test-w");
    assert!(body["request_id"].as_str().is_some_and(|r| !r.is_empty()));
}

#[tokio::test]
async fn infer_returns_every_contract_field() {
    let (status, id, body) = send(&state().await, infer(r#"{"text":"a good day"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["prediction"], "positive");
    assert_eq!(body["confidence"], 0.8);
    assert_eq!(body["probabilities"]["positive"], 0.8);
    assert_eq!(body["cache_hit"], false);
    assert_eq!(body["idempotency_hit"], false);
    assert_eq!(body["worker_id"], "test-w");
    assert_eq!(body["model_version"], "fake-v1");
    assert!(body["processing_time_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["request_id"].as_str(), id.as_deref());
}

#[tokio::test]
async fn repeated_text_is_a_cache_hit_and_runs_the_model_once() {
    let fake = Arc::new(Fake::new());
    let s = state_with(fake.clone(), true, Duration::from_secs(5), Duration::from_secs(30)).await;
    let (_, _, first) = send(&s, infer(r#"{"text":"Good movie"}"#)).await;
    // Same normal form: case and punctuation the model ignores.
    let (_, _, second) = send(&s, infer(r#"{"text":"  good   MOVIE. "}"#)).await;
    assert_eq!(first["cache_hit"], false);
    assert_eq!(second["cache_hit"], true);
    assert_eq!(second["prediction"], first["prediction"]);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn disabled_cache_never_hits() {
    let fake = Arc::new(Fake::new());
    let s = state_with(fake.clone(), false, Duration::from_secs(5), Duration::from_secs(30)).await;
    for _ in 0..2 {
        let (_, _, body) = send(&s, infer(r#"{"text":"good"}"#)).await;
        assert_eq!(body["cache_hit"], false);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (status, _, body) = send(&state().await, infer(r#"{"text": "#)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_json");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(5000));
    let (status, _, body) = send(&state().await, infer(&big)).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let req = Request::post("/infer").header("content-type", "text/plain").body(Body::from(r#"{"text":"x"}"#)).unwrap();
    let (status, _, body) = send(&state().await, req).await;
    assert_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let req = Request::post("/infer").body(Body::from(r#"{"text":"x"}"#)).unwrap();
    let (status, _, body) = send(&state().await, req).await;
    assert_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let req = Request::post("/infer")
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(r#"{"text":"x"}"#))
        .unwrap();
    assert_eq!(send(&state().await, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn invalid_text_is_422() {
    for body in [
        r#"{"text":""}"#,
        r#"{"text":"   \n\t"}"#,
        r#"{"text":5}"#,
        r#"{"txt":"hello"}"#,
        r#"[1,2]"#,
        &format!(r#"{{"text":"{}"}}"#, "b".repeat(10_001)),
    ] {
        let s = state_from(Arc::new(Fake::new()), &["--max-request-body-bytes", "65536"]).await;
        let (status, _, resp) = send(&s, infer(body)).await;
        assert_error(status, &resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
}

#[tokio::test]
async fn ten_thousand_multibyte_characters_are_accepted() {
    let s = state_from(Arc::new(Fake::new()), &["--max-request-body-bytes", "65536"]).await;
    let (status, _, _) = send(&s, infer(&format!(r#"{{"text":"{}"}}"#, "é".repeat(10_000)))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn slow_inference_is_504_inference_timeout() {
    let fake = Arc::new(Fake { delay: Duration::from_millis(500), ..Fake::new() });
    let s = state_with(fake, true, Duration::from_millis(50), Duration::from_secs(30)).await;
    let started = Instant::now();
    let (status, _, body) = send(&s, infer(r#"{"text":"good"}"#)).await;
    assert_error(status, &body, StatusCode::GATEWAY_TIMEOUT, "inference_timeout");
    assert!(started.elapsed() < Duration::from_millis(450), "answered before the model finished");
}

#[tokio::test]
async fn request_deadline_is_504_request_timeout() {
    let fake = Arc::new(Fake { delay: Duration::from_millis(500), ..Fake::new() });
    let s = state_with(fake, true, Duration::from_secs(5), Duration::from_millis(50)).await;
    let (status, id, body) = send(&s, infer(r#"{"text":"good"}"#)).await;
    assert_error(status, &body, StatusCode::GATEWAY_TIMEOUT, "request_timeout");
    assert_eq!(body["request_id"].as_str(), id.as_deref());
}

#[tokio::test]
async fn model_panic_is_a_500_without_internals() {
    let fake = Arc::new(Fake { panics: true, ..Fake::new() });
    let s = state_with(fake, true, Duration::from_secs(5), Duration::from_secs(30)).await;
    let (status, _, body) = send(&s, infer(r#"{"text":"good"}"#)).await;
    assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(!body["error"].as_str().unwrap().contains("exploded"));
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_405() {
    let (status, _, body) = send(&state().await, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _, body) = send(&state().await, Request::get("/infer").body(Body::empty()).unwrap()).await;
    assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn request_id_is_propagated_when_sane_and_generated_otherwise() {
    let s = state().await;
    let req = Request::post("/infer")
        .header("content-type", "application/json")
        .header("x-request-id", "trace-42.a:b_c")
        .body(Body::from(r#"{"text":"good"}"#))
        .unwrap();
    let (_, id, body) = send(&s, req).await;
    assert_eq!(id.as_deref(), Some("trace-42.a:b_c"));
    assert_eq!(body["request_id"], "trace-42.a:b_c");

    let req = Request::post("/infer")
        .header("content-type", "application/json")
        .header("x-request-id", "bad id with spaces")
        .body(Body::from(r#"{"text":"good"}"#))
        .unwrap();
    let (_, id, body) = send(&s, req).await;
    let id = id.unwrap();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 36, "a fresh UUID");
    assert_eq!(body["request_id"], id);

    // Every response carries the id in its header, not only /infer.
    let req = Request::get("/healthz").header("x-request-id", "h-1").body(Body::empty()).unwrap();
    assert_eq!(send(&s, req).await.1.as_deref(), Some("h-1"));
}

#[tokio::test]
async fn healthz_root_and_metrics_answer() {
    let s = state().await;
    let (status, _, body) = send(&s, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["worker_id"], "test-w");
    assert!(body["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(body["timestamp"].as_str().is_some());
    let (status, _, body) = send(&s, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "falcon");
    assert_eq!(body["status"], "ready");
    let resp = router(s).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
}

#[tokio::test]
async fn readyz_is_503_while_draining_or_without_a_model() {
    let s = state().await;
    let (status, _, body) = send(&s, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["model_loaded"], true);
    // Neither Redis nor a request log here: not an outage, so not `false`.
    assert_eq!(body["checks"]["redis_available"], "not_configured");
    assert_eq!(body["checks"]["database_available"], "not_configured");
    assert_eq!(body["backends"]["request_log"], "disabled");

    s.pipeline.readiness().start_draining();
    let (status, _, body) = send(&s, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    assert_eq!(body["draining"], true);

    let s = state().await;
    s.pipeline.readiness().set_model_loaded(false);
    let (status, _, body) = send(&s, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["model_loaded"], false);
    let (status, _, body) = send(&s, infer(r#"{"text":"good"}"#)).await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
}

fn infer_with_key(body: &str, key: &str) -> Request<Body> {
    Request::post("/infer")
        .header("content-type", "application/json")
        .header("x-idempotency-key", key)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn idempotency_key_replays_the_stored_response() {
    let fake = Arc::new(Fake::new());
    let s = state_with(fake.clone(), false, Duration::from_secs(5), Duration::from_secs(30)).await;
    let (status, _, first) = send(&s, infer_with_key(r#"{"text":"a good day"}"#, "order-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["idempotency_hit"], false);
    let (status, id, second) = send(&s, infer_with_key(r#"{"text":"a good day"}"#, "order-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["idempotency_hit"], true);
    assert_eq!(second["prediction"], first["prediction"]);
    assert_eq!(second["confidence"], first["confidence"]);
    assert_eq!(second["request_id"].as_str(), id.as_deref(), "a replay has its own request id");
    assert_ne!(second["request_id"], first["request_id"]);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "the model ran once (cache is off)");
}

#[tokio::test]
async fn same_key_with_a_different_body_is_409() {
    let s = state().await;
    send(&s, infer_with_key(r#"{"text":"a good day"}"#, "k-2")).await;
    let (status, _, body) = send(&s, infer_with_key(r#"{"text":"a bad day"}"#, "k-2")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "idempotency_conflict");
}

#[tokio::test]
async fn invalid_idempotency_keys_are_422() {
    for key in [String::new(), "a".repeat(129), "with space".into()] {
        let (status, _, body) = send(&state().await, infer_with_key(r#"{"text":"x"}"#, &key)).await;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_key_run_the_model_once() {
    let fake = Arc::new(Fake { delay: Duration::from_millis(200), ..Fake::new() });
    let s = state_with(fake.clone(), false, Duration::from_secs(5), Duration::from_secs(30)).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { send(&s, infer_with_key(r#"{"text":"good stuff"}"#, "same")).await })
        })
        .collect();
    let mut hits = 0;
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["prediction"], "positive");
        hits += usize::from(body["idempotency_hit"] == true);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(hits, 7);
}

#[tokio::test]
async fn a_failed_request_does_not_poison_its_key() {
    // The first call outlives the inference deadline; the retry's is quick.
    let fake = Arc::new(Fake { delay: Duration::from_millis(300), slow_calls: 1, ..Fake::new() });
    let s = state_with(fake, false, Duration::from_millis(50), Duration::from_secs(30)).await;
    let (status, _, _) = send(&s, infer_with_key(r#"{"text":"good"}"#, "retry-me")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let (status, _, body) = send(&s, infer_with_key(r#"{"text":"good"}"#, "retry-me")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["idempotency_hit"], false);
}

#[tokio::test]
async fn idempotency_can_be_switched_off() {
    let fake = Arc::new(Fake::new());
    let s = state_from(fake.clone(), &["--cache-enabled", "false", "--idempotency-enabled", "false"]).await;
    for _ in 0..2 {
        let (status, _, body) = send(&s, infer_with_key(r#"{"text":"good"}"#, "ignored")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["idempotency_hit"], false);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_keyed_request_cancelled_while_the_model_runs_releases_its_key() {
    let fake = Arc::new(Fake { delay: Duration::from_millis(400), slow_calls: 1, ..Fake::new() });
    let s = state_with(fake.clone(), false, Duration::from_secs(5), Duration::from_secs(30)).await;
    let first = {
        let s = s.clone();
        tokio::spawn(async move { send(&s, infer_with_key(r#"{"text":"good one"}"#, "gone")).await })
    };
    // The client goes away while the model is still computing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first request never reached the model");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // Its claim is gone at once: another body is no conflict, and the retry does not wait.
    let started = Instant::now();
    let (status, _, body) = send(&s, infer_with_key(r#"{"text":"another"}"#, "gone")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?} on a dead claim", started.elapsed());
}

/// A whole worker in-process around a slow backend, on a real socket: a request already in
/// the model when shutdown begins is answered within the grace period; one that would
/// outlast it does not hold the worker past it.
async fn drain_with(model_delay: Duration, grace: &str) -> (tokio::task::JoinHandle<Option<StatusCode>>, Duration) {
    use falcon_server::{Application, LoadedBackend};
    let fake = Arc::new(Fake { delay: model_delay, ..Fake::new() });
    let config = Config::from_args([
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--request-log-enabled",
        "false",
        "--graceful-shutdown-timeout-seconds",
        grace,
        "--inference-timeout-seconds",
        "30",
    ])
    .unwrap();
    let model = LoadedBackend { backend: fake.clone(), source: "fake".into(), load_time: Duration::ZERO };
    let app = Application::build(&config, model).await.unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let request = tokio::spawn(async move { reqwest_free_post(addr, r#"{"text":"good"}"#).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the request never reached the model");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let began = Instant::now();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    (request, began.elapsed())
}

/// POST /infer over a plain TCP connection; the status, or `None` if the connection closed
/// first.
async fn reqwest_free_post(addr: std::net::SocketAddr, body: &str) -> Option<StatusCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).and_then(|c| StatusCode::from_u16(c).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_the_model_finishes_within_the_grace_period_and_none_outlasts_it() {
    let (request, took) = drain_with(Duration::from_millis(800), "10").await;
    assert_eq!(request.await.unwrap(), Some(StatusCode::OK), "answered during the drain");
    assert!(took < Duration::from_secs(5), "the drain ended with the request, not the grace period: {took:?}");
    // In a process, returning from `run_until_stopped` ends it; in this test the connection
    // task lives on, so only the time to return is checked.
    let (request, took) = drain_with(Duration::from_secs(4), "1").await;
    request.abort();
    assert!(
        took < Duration::from_millis(3500),
        "the worker stopped at its 1 s grace period, not after the 4 s model: {took:?}"
    );
}

/// `/openapi.json` documents the routes the router serves (both come from one list), each
/// documented operation reaches its handler (not the 404/405 fallbacks), every `$ref`
/// resolves, every error type is in the `ErrorType` enum, and `/docs` serves the UI.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let s = state().await;
    let (status, _, doc) = send(&s, Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for expected in
        ["/", "/healthz", "/readyz", "/metrics", "/infer", "/infer/batch", "/admin/reload", "/v2/models/{name}/infer"]
    {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"]["default"].is_object(), "{method} {path}: no default error response");
            assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {path}: no tag");
            let uri = path.replace("{name}", "sentiment");
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let (status, _, body) = send(&s, req).await;
            assert!(
                !matches!(body["error_type"].as_str(), Some("not_found" | "method_not_allowed")),
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    // Every $ref points at a schema the document has.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(schemas.contains_key(name), "$ref to missing schema {name}");
    }
    let error_types: Vec<&str> =
        schemas["ErrorType"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let all: Vec<&str> = falcon_app::error_type::ErrorType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(error_types, all);
    // A documented error body is what an error actually looks like.
    let required: Vec<&str> =
        schemas["ErrorBody"]["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let (_, _, err) = send(&s, infer("{")).await;
    let mut fields: Vec<&str> = err.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    let mut required_sorted = required.clone();
    required_sorted.sort_unstable();
    assert_eq!(fields, required_sorted);

    // `/docs` redirects to the UI and says so in its body (curl without -L shows it).
    let resp = router(s.clone()).oneshot(Request::get("/docs").body(Body::empty()).unwrap()).await.unwrap();
    assert!(resp.status().is_redirection());
    assert_eq!(resp.headers()["location"], "/docs/");
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(text, "The Swagger UI is at /docs/\n");
    let resp = router(s.clone()).oneshot(Request::get("/docs/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // A file the UI does not have is the standard 404, not an empty body.
    let (status, _, body) = send(&s, Request::get("/docs/no-such-file.js").body(Body::empty()).unwrap()).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

/// Found by `make fuzz` (http_request): a model name that is not UTF-8 got axum's plain-text
/// 400; it is the protocol's JSON error like every other.
#[tokio::test]
async fn an_open_inference_protocol_path_that_is_not_utf8_is_a_json_400() {
    let s = state().await;
    for uri in ["/v2/models/%FF", "/v2/models/%FF/ready", "/v2/models/%e2/infer"] {
        let method = if uri.ends_with("infer") { "POST" } else { "GET" };
        let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let (status, _, body) = send(&s, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("model name")), "{uri}: {body}");
    }
}

fn oip_infer(content_type: Option<&str>, body: Body) -> Request<Body> {
    let mut req = Request::post("/v2/models/sentiment/infer");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(body).unwrap()
}

const OIP_BODY: &str = r#"{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["a good day"]}]}"#;

/// OIP reads its body with the same reader as `/infer`: its Content-Type rules (none is
/// JSON, as tritonclient sends none; another type is refused), its size limit and its
/// deadline, each answered in the protocol's `{"error"}` shape with the protocol's status.
#[tokio::test]
async fn open_inference_protocol_bodies_go_through_the_shared_reader() {
    let s = state_with(Arc::new(Fake::new()), true, Duration::from_secs(5), Duration::from_millis(500)).await;
    let (status, _, body) = send(&s, oip_infer(None, Body::from(OIP_BODY))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outputs"][0]["data"][0], "positive");

    let (status, _, body) = send(&s, oip_infer(Some("text/plain"), Body::from(OIP_BODY))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Content-Type"), "{body}");

    let big = OIP_BODY.replace("a good day", &"a".repeat(5000));
    let (status, _, body) = send(&s, oip_infer(Some("application/json"), Body::from(big))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("exceeds the limit"), "{body}");

    // A body that never ends: the request's deadline, as the protocol's 408.
    let stalled =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"inputs\"")) })
            .chain(futures_util::stream::pending());
    let (status, _, body) = send(&s, oip_infer(Some("application/json"), Body::from_stream(stalled))).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("did not arrive"), "{body}");
    assert!(body.get("error_type").is_none(), "the protocol's shape: {body}");
}

/// An unknown model is the protocol's 404, on every model route.
#[tokio::test]
async fn an_unknown_open_inference_protocol_model_is_a_404_in_the_protocols_shape() {
    let s = state().await;
    for (method, uri) in
        [("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"), ("POST", "/v2/models/nope/infer")]
    {
        let req = Request::builder().method(method).uri(uri).body(Body::from(OIP_BODY)).unwrap();
        let (status, _, body) = send(&s, req).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert!(body["error"].as_str().unwrap().contains("unknown model 'nope'"), "{uri}: {body}");
    }
}

/// A binary tensor data request (Triton's extension): `header` as its JSON part, then `data`.
fn oip_binary(header: &Value, data: &[u8]) -> Request<Body> {
    let json = serde_json::to_vec(header).unwrap();
    let mut body = json.clone();
    body.extend_from_slice(data);
    Request::post("/v2/models/sentiment/infer")
        .header("inference-header-content-length", json.len())
        .header("content-type", "application/octet-stream")
        .body(Body::from(body))
        .unwrap()
}

/// `texts` as BYTES elements: each a 4-byte little-endian length and its bytes.
fn bytes_elements(texts: &[&str]) -> Vec<u8> {
    texts.iter().flat_map(|t| (t.len() as u32).to_le_bytes().into_iter().chain(t.bytes())).collect()
}

fn binary_input(size: usize, shape: &[usize]) -> Value {
    serde_json::json!({
        "inputs": [{ "name": "text", "shape": shape, "datatype": "BYTES", "parameters": { "binary_data_size": size } }],
        "parameters": { "binary_data_output": true },
    })
}

/// Issue 35: binary inputs in, binary outputs out, as Triton's HTTP/REST binary tensor data
/// extension frames them.
#[tokio::test]
async fn binary_tensor_data_goes_both_ways() {
    let s = state().await;
    let data = bytes_elements(&["a good day", "a bad day"]);
    let resp = router(s.clone()).oneshot(oip_binary(&binary_input(data.len(), &[2, 1]), &data)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let header_length: usize = resp.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let header: Value = serde_json::from_slice(&body[..header_length]).unwrap();
    let tail = &body[header_length..];
    let label_size = header["outputs"][0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert!(header["outputs"][0].get("data").is_none(), "{header}");
    assert_eq!(&tail[..label_size], bytes_elements(&["positive", "negative"]));
    let probabilities: Vec<f32> =
        tail[label_size..].chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(probabilities, [0.2, 0.8, 0.8, 0.2]);
    assert_eq!(header["outputs"][1]["shape"], serde_json::json!([2, 2]));
}

/// Bad framing is a clear 400 in the protocol's shape, whatever is wrong: a header length
/// past the body, an element length past the data, sizes that do not match the shape or the
/// body, text that is not UTF-8. The message says where, never what the bytes hold.
#[tokio::test]
async fn malformed_binary_tensor_data_is_a_clear_400() {
    let s = state().await;
    let data = bytes_elements(&["a good day"]);
    let mut past_the_body = oip_binary(&binary_input(data.len(), &[1]), &data);
    past_the_body.headers_mut().insert("inference-header-content-length", "100000".parse().unwrap());
    let mut long_element = 1_000_000u32.to_le_bytes().to_vec();
    long_element.extend_from_slice(b"secret text");
    let mut not_utf8 = 3u32.to_le_bytes().to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    let cases = [
        (past_the_body, "says 100000 bytes; the body has"),
        (
            oip_binary(&binary_input(long_element.len(), &[1]), &long_element),
            "element 0 says 1000000 bytes; 11 are left",
        ),
        (
            oip_binary(&binary_input(data.len() + 5, &[1]), &data),
            "binary_data_size 19; 14 bytes of binary data are left",
        ),
        (
            oip_binary(&binary_input(data.len(), &[1]), &[data.clone(), vec![0; 3]].concat()),
            "3 bytes of binary data follow",
        ),
        (oip_binary(&binary_input(data.len(), &[2]), &data), "its shape says 2 elements, its binary data holds 1"),
        (oip_binary(&binary_input(not_utf8.len(), &[1]), &not_utf8), "element 0 is not UTF-8 text"),
    ];
    for (req, expected) in cases {
        let (status, _, body) = send(&s, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(expected), "{expected}: {body}");
        assert!(message.starts_with("binary tensor data is malformed"), "{body}");
        assert!(!message.contains("secret"), "{body}");
    }
}

/// Issue 35: the model configuration, and every model route with the version served; any
/// other version is the protocol's 404.
#[tokio::test]
async fn the_model_configuration_and_versioned_paths_answer_for_the_version_served() {
    let s = state().await;
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (status, _, config) = send(&s, get("/v2/models/sentiment/config")).await;
    assert_eq!(status, StatusCode::OK, "{config}");
    assert_eq!(config["name"], "sentiment");
    assert_eq!(config["output"][1]["dims"], serde_json::json!([2]), "the fake model's two classes");
    assert_eq!(config["parameters"]["model_version"]["string_value"], "fake-v1");
    for uri in ["/v2/models/sentiment/versions/fake-v1", "/v2/models/sentiment/versions/fake-v1/ready"] {
        let (status, _, body) = send(&s, get(uri)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    let (status, _, versioned) = send(&s, get("/v2/models/sentiment/versions/fake-v1/config")).await;
    assert_eq!((status, &versioned), (StatusCode::OK, &config));
    let mut req = oip_infer(None, Body::from(OIP_BODY));
    *req.uri_mut() = "/v2/models/sentiment/versions/fake-v1/infer".parse().unwrap();
    let (status, _, body) = send(&s, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model_version"], "fake-v1");
    for uri in ["/v2/models/sentiment/versions/7/config", "/v2/models/sentiment/versions/7", "/v2/models/nope/config"] {
        let (status, _, body) = send(&s, get(uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("version '7'") || e.contains("'nope'")), "{body}");
    }
}

/// A model that holds every call until it is opened, counting the calls inside.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    inside: AtomicUsize,
    labels: Vec<String>,
}

impl Gate {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Backend for Gate {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        Ok(texts.iter().map(|_| Prediction { class: 0, confidence: 1.0, probabilities: vec![1.0] }).collect())
    }
    fn model_version(&self) -> &str {
        "gate-v1"
    }
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn normalize(&self, text: &str) -> String {
        text.to_owned()
    }
    fn max_input_chars(&self) -> usize {
        10_000
    }
}

/// A worker serving `fast` (the default) and `slow` from one repository.
async fn two_models(fast: Arc<dyn Backend>, slow: Arc<dyn Backend>, args: &[&str]) -> AppState {
    use falcon_app::models::Repository;
    use falcon_server::{LoadedBackend, Models};
    let repository = Repository::parse(
        "default = \"fast\"\n[models.fast]\nbackend = \"fake\"\n[models.slow]\nbackend = \"fake\"\n",
        std::path::Path::new("."),
        &["fake"],
    )
    .unwrap();
    let loaded = |backend| LoadedBackend { backend, source: "test".into(), load_time: Duration::ZERO };
    let models = Models {
        repository,
        loaded: [("fast".to_owned(), loaded(fast)), ("slow".to_owned(), loaded(slow))].into(),
        loader: None,
        backends: vec!["fake".into()],
        shadow: None,
    };
    let mut all =
        vec!["--worker-id", "test-w", "--request-log-enabled", "false", "--text-hash-key", "a handler test's key"];
    all.extend_from_slice(args);
    let config = Config::from_args(all).unwrap();
    falcon_server::build_state_with(&config, models, None).await.unwrap().0
}

fn infer_model(model: &str, text: &str) -> Request<Body> {
    infer(&serde_json::json!({ "text": text, "model": model }).to_string())
}

/// Each model has its own queue and threads: with every thread of one model stuck and its
/// queue full, the other model answers every request, within its deadline. (With one shared
/// queue the fast model's requests would wait behind the stuck ones and time out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_model_never_delays_another() {
    let gate = Arc::new(Gate { labels: vec!["only".into()], ..Gate::default() });
    let args = [
        "--inference-threads",
        "2",
        "--inference-queue-capacity",
        "4",
        "--max-batch-size",
        "1",
        "--inference-timeout-seconds",
        "2",
        "--cache-enabled",
        "false",
    ];
    let s = two_models(Arc::new(Fake::new()), Arc::clone(&gate) as Arc<dyn Backend>, &args).await;
    // Saturate the slow model: 2 threads inside the model, 4 requests queued, the rest refused.
    let stuck: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { send(&s, infer_model("slow", &format!("stuck {i}"))).await.0 })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gate.inside.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the slow model's threads never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut took = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        let (status, _, body) = send(&s, infer_model("fast", &format!("a good text {i}"))).await;
        took.push(started.elapsed());
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model"], "fast");
    }
    took.sort_unstable();
    println!("fast model p99 with the slow model saturated: {:?}", took[took.len() * 99 / 100]);
    assert_eq!(gate.inside.load(Ordering::SeqCst), 2, "the slow model's threads are still held");
    gate.release();
    let statuses: Vec<StatusCode> =
        futures_util::future::join_all(stuck).await.into_iter().map(Result::unwrap).collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count();
    assert_eq!(ok + refused, statuses.len(), "{statuses:?}");
    assert!(ok >= 2, "the held requests are answered once the model opens: {statuses:?}");
}

/// Requests name their model; the answer names it too; an unknown one is 404
/// `model_not_found`, in both shapes; the default model cannot be unloaded.
#[tokio::test]
async fn requests_name_their_model_and_an_unknown_one_is_404() {
    let gate = Arc::new(Gate { labels: vec!["only".into()], ..Gate::default() });
    gate.release();
    let s = two_models(Arc::new(Fake::new()), gate, &[]).await;
    let (status, _, body) = send(&s, infer(r#"{"text":"a good day"}"#)).await;
    assert_eq!(
        (status, &body["model"], &body["prediction"]),
        (StatusCode::OK, &Value::from("fast"), &Value::from("positive"))
    );
    let (status, _, body) = send(&s, infer_model("slow", "a good day")).await;
    assert_eq!(
        (status, &body["model"], &body["prediction"]),
        (StatusCode::OK, &Value::from("slow"), &Value::from("only"))
    );
    let batch = Request::post("/infer/batch")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"texts":["a","b"],"model":"slow"}"#))
        .unwrap();
    let (status, _, body) = send(&s, batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "slow");
    assert_eq!(body["results"][1]["prediction"], "only");
    let (status, _, body) = send(&s, infer_model("nope\u{1b}", "a good day")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "model_not_found");
    assert_eq!(body["error"], "unknown model 'nope\\u{1b}'; this worker serves: fast, slow");
    let req = Request::get("/v2/models/nope/stats").body(Body::empty()).unwrap();
    let (status, _, body) = send(&s, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let req = Request::get("/v2/models/slow/stats").body(Body::empty()).unwrap();
    let (status, _, body) = send(&s, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = &body["model_stats"][0];
    assert_eq!((&stats["name"], &stats["inference_count"]), (&Value::from("slow"), &Value::from(3)), "{body}");
    assert_eq!(stats["inference_stats"]["success"]["count"], 2, "one single and one batch request: {body}");
    let ready = send(&s, Request::get("/readyz").body(Body::empty()).unwrap()).await.2;
    assert_eq!(ready["models"][0]["name"], "fast");
    assert_eq!(ready["models"][0]["default"], true);
    assert_eq!(ready["models"][1]["name"], "slow");
}
