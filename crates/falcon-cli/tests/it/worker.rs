//! The real binary on a real socket: endpoints, errors, request ids, cache, config
//! errors, start-up failures and the SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{Worker, falcon, falcon_in, fresh_dir, shipped_model};
use serde_json::{Value, json};

async fn post(client: &reqwest::Client, w: &Worker, body: Value) -> (u16, Value) {
    let r = client.post(w.url("/infer")).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn serves_every_endpoint_with_the_shipped_model() {
    let w = Worker::start(&[]);
    let c = reqwest::Client::new();
    let root: Value = c.get(w.url("/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(root["name"], "falcon");
    assert_eq!(root["worker_id"], "it-worker");
    let health = c.get(w.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = c.get(w.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["model_loaded"], true);

    let (status, body) = post(&c, &w, json!({"text": "I absolutely love this, it is wonderful!"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["prediction"], "positive");
    let (_, body) = post(&c, &w, json!({"text": "This is terrible, I hate it. Awful service."})).await;
    assert_eq!(body["prediction"], "negative");
    let p = &body["probabilities"];
    let sum = p["negative"].as_f64().unwrap() + p["neutral"].as_f64().unwrap() + p["positive"].as_f64().unwrap();
    assert!((sum - 1.0).abs() < 1e-9);
    assert_eq!(body["model_version"], root["model_version"]);

    let metrics = c.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in ["inference_requests_total", "inference_errors_total", "cache_hits_total", "cache_misses_total"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("inference_requests_total{worker_id=\"it-worker\",status=\"success\",cache_hit=\"false\",model=\"sentiment\"} 2"),
        "{metrics}"
    );
    let quantiles: Vec<&str> =
        metrics.lines().filter(|l| l.contains("inference_duration_seconds") && l.contains("quantile")).collect();
    assert!(quantiles.iter().any(|l| l.contains("quantile=\"0.95\"")), "{quantiles:?}");
    assert!(metrics.contains("inference_duration_seconds_bucket"));
    assert!(metrics.contains("# HELP inference_requests_total"));
}

#[tokio::test]
async fn every_error_status_has_a_stable_json_body() {
    let w = Worker::start(&[("MAX_REQUEST_BODY_BYTES", "2048")]);
    let c = reqwest::Client::new();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (c.post(w.url("/infer")).header("content-type", "application/json").body("{\"text\":"), 400, "invalid_json"),
        (c.post(w.url("/infer")).json(&json!({"text": "x".repeat(3000)})), 413, "payload_too_large"),
        (c.post(w.url("/infer")).header("content-type", "text/plain").body("hello"), 415, "unsupported_media_type"),
        (c.post(w.url("/infer")).json(&json!({"text": "  "})), 422, "validation_error"),
        (c.post(w.url("/infer")).json(&json!({"other": "x"})), 422, "validation_error"),
        (c.get(w.url("/missing")), 404, "not_found"),
        (c.put(w.url("/infer")), 405, "method_not_allowed"),
    ];
    for (req, status, error_type) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let header_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error_type"], error_type, "{body}");
        assert_eq!(body["request_id"], header_id.as_str());
        assert_eq!(body["worker_id"], "it-worker");
    }
    let metrics = c.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("inference_errors_total{worker_id=\"it-worker\",error_type=\"validation_error\"} 2"));
    // The validation error is in the log with its request id.
    let logs = w.logs.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|l| l["error_type"] == "validation_error" && l["level"] == "WARN" && l["request_id"].is_string())
    );
}

#[tokio::test]
async fn request_id_round_trips_and_repeats_hit_the_cache() {
    let w = Worker::start(&[]);
    let c = reqwest::Client::new();
    let r = c
        .post(w.url("/infer"))
        .header("x-request-id", "client-id-1")
        .json(&json!({"text": "good stuff"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], "client-id-1");
    assert_eq!(body["cache_hit"], false);
    let (_, again) = post(&c, &w, json!({"text": "Good  stuff"})).await;
    assert_eq!(again["cache_hit"], true);
    assert_eq!(again["prediction"], body["prediction"]);
    assert_ne!(again["request_id"], "client-id-1");
}

#[tokio::test]
async fn cache_can_be_switched_off() {
    let w = Worker::start(&[("CACHE_ENABLED", "false")]);
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let (_, body) = post(&c, &w, json!({"text": "same text"})).await;
        assert_eq!(body["cache_hit"], false);
    }
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("CACHE_TTL_SECONDS", "-5"),
        ("CACHE_ENABLED", "maybe"),
        ("INFERENCE_TIMEOUT_SECONDS", "0"),
        ("LOG_LEVEL", "chatty"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0"),
    ] {
        let out = falcon().arg("serve").env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line: Value = serde_json::from_str(stdout.lines().next().unwrap_or_default()).unwrap();
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["variable"], var, "{line}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(var));
    }
}

#[test]
fn a_usage_mistake_is_one_message_on_stderr() {
    for args in [&["serve", "--bogus"][..], &["predcit"][..], &["predict"][..]] {
        let out = falcon().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}: no JSON line for a usage mistake");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches("error:").count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn malformed_dependency_urls_exit_2_naming_the_variable() {
    for (var, value) in [("REDIS_URL", "localhost:6379"), ("DATABASE_URL", "mysql://user:hunter2@db/app")] {
        let out = falcon().arg("serve").env(var, value).env("PORT", "0").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let error = lines.iter().find(|l| l["level"] == "ERROR").unwrap();
        assert_eq!(error["variable"], var, "{error}");
        assert_eq!(lines.iter().filter(|l| l["level"] == "ERROR").count(), 1, "one message: {stdout}");
        assert!(!stdout.contains("hunter2"), "the password is never printed");
    }
}

#[test]
fn an_unknown_model_backend_exits_2_naming_the_variable() {
    let out = falcon().args(["serve"]).env("MODEL_BACKEND", "onnx").env("PORT", "0").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: Value =
        stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).find(|l: &Value| l["level"] == "ERROR").unwrap();
    assert_eq!(line["variable"], "MODEL_BACKEND", "{line}");
    assert!(line["error"].as_str().unwrap().contains("tfidf"), "names the backends this build has: {line}");
}

#[tokio::test]
async fn the_built_in_model_serves_from_any_directory_and_model_path_overrides_it() {
    // `Worker::start` runs in an empty directory with no MODEL_PATH: the built-in model.
    let built_in = Worker::start(&[]);
    let from_file = Worker::start(&[("MODEL_PATH", shipped_model().to_str().unwrap())]);
    let c = reqwest::Client::new();
    let (_, a) = post(&c, &built_in, json!({"text": "what a lovely day"})).await;
    let (_, b) = post(&c, &from_file, json!({"text": "what a lovely day"})).await;
    assert_eq!(a["model_version"], b["model_version"], "models/classifier.bin is the built-in model");
    assert_eq!(a["probabilities"], b["probabilities"]);
    let loaded = |w: &Worker| {
        w.logs.lock().unwrap().iter().find(|l| l["message"] == "Model loaded").map(|l| l["model_path"].clone())
    };
    assert_eq!(loaded(&built_in).unwrap(), "built-in");
    assert_eq!(loaded(&from_file).unwrap(), shipped_model().to_str().unwrap());
}

#[test]
fn missing_or_corrupt_model_fails_start_up_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.bin");
    let bytes = std::fs::read(shipped_model()).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    let endless = std::path::PathBuf::from("/dev/zero");
    for path in [dir.path().join("absent.bin"), corrupt, endless] {
        let out = falcon().arg("serve").env("MODEL_PATH", &path).env("PORT", "0").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let err: Value = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|l: &Value| l["level"] == "ERROR")
            .unwrap();
        assert_eq!(err["message"], "Startup failed");
        assert!(err["error"].as_str().unwrap().contains(path.to_str().unwrap()), "{err}");
    }
}

#[test]
fn port_in_use_fails_start_up_and_leaves_no_spool_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let spool = fresh_dir();
    for _ in 0..3 {
        let out = falcon()
            .arg("serve")
            .env("HOST", "127.0.0.1")
            .env("PORT", &port)
            .env("MODEL_PATH", shipped_model())
            .env("LOG_SPOOL_DIR", spool.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stdout).contains("cannot listen on"));
    }
    // A start that fails on its settings leaves nothing either.
    let out = falcon()
        .arg("serve")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("API_KEYS", "no-key-here")
        .env("LOG_SPOOL_DIR", spool.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("API_KEYS"));
    // Failed starts used to leave two allocated segments each (issue 30, item 8).
    assert_eq!(crate::request_log::spool_segments(spool.path()), Vec::<(String, u64)>::new());
}

#[test]
fn model_inspect_prints_the_built_in_and_a_file_model_alike() {
    let built_in = falcon().args(["model", "inspect", "--json"]).output().unwrap();
    assert!(built_in.status.success(), "{}", String::from_utf8_lossy(&built_in.stderr));
    let meta: Value = serde_json::from_slice(&built_in.stdout).unwrap();
    assert_eq!(meta["labels"], json!(["negative", "neutral", "positive"]));
    assert_eq!(meta["metrics"]["n"], 4741);
    let file = falcon().args(["model", "inspect", "--json"]).arg(shipped_model()).output().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&file.stdout).unwrap(), meta, "the binary embeds models/classifier.bin");
    let text = falcon().args(["model", "inspect"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(meta["model_version"].as_str().unwrap()) && text.contains("macro-F1"), "{text}");
    let bad = falcon().args(["model", "inspect", "/dev/null"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/dev/null"));
}

#[test]
fn predict_prints_the_infer_fields() {
    let out = falcon().args(["predict", "what a lovely day"]).env("MODEL_PATH", shipped_model()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cache_hit",
            "confidence",
            "idempotency_hit",
            "model",
            "model_version",
            "prediction",
            "probabilities",
            "processing_time_ms",
            "request_id",
            "worker_id"
        ]
    );
    assert_eq!(body["prediction"], "positive");
}

/// Opens a raw connection and sends an /infer request's headers and half its body, and no
/// more.
struct SlowClient {
    stream: TcpStream,
}

impl SlowClient {
    fn start(w: &Worker, text: &str) -> Self {
        let body = serde_json::to_vec(&json!({ "text": text })).unwrap();
        let mut stream = TcpStream::connect(w.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!(
            "POST /infer HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            w.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..body.len() / 2]).unwrap();
        Self { stream }
    }

    /// Reads the answer without sending the rest of the body.
    fn response(mut self) -> String {
        self.read_response()
    }

    fn read_response(&mut self) -> String {
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the full JSON body has arrived (the server closes after draining).
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.ends_with(b"}") {
                        break;
                    }
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    }
}

/// Sockets the process holds open (the listener, accepted connections, database files are not).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .count()
}

/// Waits until the worker has accepted `n` more connections than `baseline` sockets.
fn wait_accepted(w: &Worker, baseline: usize, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sockets(w.child.id()) < baseline + n {
        assert!(std::time::Instant::now() < deadline, "the worker did not accept {n} connections");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_answers_half_sent_requests_at_once_and_exits_0() {
    let mut w = Worker::start(&[("GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "30")]);
    let baseline = sockets(w.child.id());
    let clients: Vec<SlowClient> = (0..5).map(|i| SlowClient::start(&w, &format!("in flight number {i}"))).collect();
    wait_accepted(&w, baseline, 5);
    // Each request's head read and the request admitted, its body still arriving: a
    // connection whose head the worker had not read yet (a busy machine, in make test) is
    // idle to hyper, and shutdown closes it without an answer.
    let client = reqwest::Client::new();
    let admitted =
        crate::common::wait_for_metric(&client, &w, "inference_requests_in_progress", 5.0, Duration::from_secs(10));
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(admitted);
    let term = std::time::Instant::now();
    w.signal("TERM");
    // A body still arriving is not waited for: 503 at once, which a load balancer retries
    // elsewhere; the drain is not held for the 30 s grace period.
    for c in clients {
        let response = c.response();
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("\"error_type\":\"not_ready\"") && response.contains("draining"), "{response}");
    }
    assert!(TcpStream::connect(w.addr).is_err(), "listener still accepting after SIGTERM");
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(term.elapsed() < Duration::from_secs(10), "the drain took {:?}", term.elapsed());
    let messages = w.log_messages();
    assert!(!messages.iter().any(|m| m.starts_with("Graceful shutdown timed out")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("Shutdown signal received")), "{messages:?}");
    assert!(messages.iter().any(|m| m == "Worker stopped"));
    // Every background task was stopped and awaited, and said how it ended.
    let stopped: Vec<(String, String)> = w
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["message"] == "Background task stopped")
        .map(|l| (l["task"].as_str().unwrap().to_owned(), l["outcome"].as_str().unwrap().to_owned()))
        .collect();
    let names: Vec<&str> = stopped.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["metrics_upkeep", "database_probe", "model_reload_signal", "request_log_writer"], "{stopped:?}");
    assert!(stopped.iter().all(|(_, outcome)| outcome == "finished"), "{stopped:?}");
}

#[test]
fn dotenv_file_is_read_and_real_environment_wins() {
    let dir = fresh_dir();
    let dir = dir.path();
    std::fs::write(dir.join(".env"), "CACHE_TTL_SECONDS=not-a-number\nWORKER_ID=from-dotenv\n").unwrap();
    let out = falcon_in(dir).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the bad value in .env was read");
    assert!(String::from_utf8_lossy(&out.stdout).contains("CACHE_TTL_SECONDS"));
    let out = falcon_in(dir).arg("serve").env("CACHE_TTL_SECONDS", "0").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("invalid value '0'"), "the environment's value is the one used: {stdout}");
    assert!(!stdout.contains("not-a-number"));
}

#[tokio::test]
async fn zero_config_writes_the_request_log_to_sqlite() {
    let dir = fresh_dir();
    let dir = dir.path();
    let db = dir.join("request_log.db");
    let w = Worker::start(&[("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap())]);
    let c = reqwest::Client::new();
    let mut ids = Vec::new();
    for text in ["first", "second", "first"] {
        let (_, body) = post(&c, &w, json!({ "text": text })).await;
        ids.push(body["request_id"].as_str().unwrap().to_owned());
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    crate::common::wait_for_sqlite_rows(&pool, 3, Duration::from_secs(10)).await;
    let hits: Vec<bool> =
        sqlx::query_scalar("SELECT cache_hit FROM inference_logs ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(hits, [false, false, true]);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT request_id FROM inference_logs ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(stored, ids);
    let ready: Value = c.get(w.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["database_available"], true);
    assert_eq!(ready["backends"]["request_log"], "sqlite");
    assert_eq!(ready["checks"]["redis_available"], "not_configured");
    // A clean exit merges SQLite's write-ahead log: no -wal or -shm file is left behind.
    pool.close().await;
    let mut w = w;
    w.signal("TERM");
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(0));
    let left: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|f| f.ends_with("-wal") || f.ends_with("-shm")), "{left:?}");
}

/// Raw input never comes back: not in an error body, not in a log line, not in a row.
#[tokio::test]
async fn raw_text_never_reaches_an_error_body_a_log_line_or_a_row() {
    let dir = fresh_dir();
    let db = dir.path().join("log.db");
    let w = Worker::start(&[("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap())]);
    let c = reqwest::Client::new();
    let secret = format!("card 4111-1111-1111-1111 {}", "x".repeat(100_000));
    let bodies = [
        serde_json::to_string(&secret).unwrap(), // a JSON string, not an object
        json!([secret.clone()]).to_string(),     // an array
        json!({ "text": 5, "note": secret.clone() }).to_string(), // the wrong type
        format!("{{\"text\": \"{}", &secret[..50]), // cut short
    ];
    for body in &bodies {
        let r =
            c.post(w.url("/infer")).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(status == 422 || status == 400, "{status}");
        assert!(!text.contains("4111"), "the error body repeats the input: {text}");
        assert!(text.len() < 400, "a short, fixed message: {text}");
    }
    // Long paths are cut short in 404 bodies.
    let long = format!("/{}", "p".repeat(500));
    let r = c.get(w.url(&long)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().len() < 300);
    // The rows (one per /infer) and the log lines.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rows: Vec<(Option<String>,)> = loop {
        let rows =
            sqlx::query_as("SELECT error_message FROM inference_logs").fetch_all(&pool).await.unwrap_or_default();
        if rows.len() == bodies.len() {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "{} rows, expected {}", rows.len(), bodies.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rows.iter().all(|(m,)| m.as_deref().is_some_and(|m| !m.contains("4111"))), "{rows:?}");
    let logs = serde_json::to_string(&*w.logs.lock().unwrap()).unwrap();
    assert!(!logs.contains("4111") && !logs.contains(&"p".repeat(100)), "a log line repeats the input");
}

#[tokio::test]
async fn blank_looking_texts_are_rejected() {
    let w = Worker::start(&[]);
    let c = reqwest::Client::new();
    for text in ["\u{200B}\u{200B}\u{200B}", "\u{0}\u{0}", "\u{FEFF}\u{2060} \t"] {
        let (status, body) = post(&c, &w, json!({ "text": text })).await;
        assert_eq!(status, 422, "{text:?}: {body}");
        assert_eq!(body["error_type"], "validation_error");
    }
}

/// A flood of rejected requests is counted in full but logged at a bounded rate, and the
/// next line says how many were held back.
#[tokio::test]
async fn a_flood_of_errors_is_counted_in_full_and_logged_at_a_bounded_rate() {
    let w = Worker::start(&[]);
    let c = reqwest::Client::new();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let r = c.post(w.url("/infer")).header("content-type", "application/json").body("{").send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
    let sent_within = started.elapsed();
    let counted =
        crate::common::metric(&c, &w, "inference_errors_total{worker_id=\"it-worker\",error_type=\"invalid_json\"}")
            .await;
    assert_eq!(counted, 200.0, "the metric counts every error");
    let logged = |w: &Worker| w.logs.lock().unwrap().iter().filter(|l| l["error_type"] == "invalid_json").count();
    let windows = sent_within.as_secs() as usize + 1;
    assert!(logged(&w) <= 20 * windows, "{} lines for 200 errors in {sent_within:?}", logged(&w));
    assert!(logged(&w) < 200);
    // A later error reports what was held back before it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.post(w.url("/infer")).header("content-type", "application/json").body("{").send().await.unwrap();
    w.wait_for_log("an error line after the flood", Duration::from_secs(5), |l| {
        l["error_type"] == "invalid_json" && l["suppressed"].as_u64().is_some_and(|n| n > 0)
    });
    let lines: Vec<u64> = w
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["error_type"] == "invalid_json")
        .map(|l| l["suppressed"].as_u64().unwrap())
        .collect();
    let accounted = lines.len() as u64 + lines.iter().sum::<u64>();
    assert_eq!(accounted, 201, "every error is a line or counted in the next line's `suppressed`");
}

/// A client that hangs up right after sending still makes one row and one count: the
/// request is answered, or recorded as `client_closed` when the worker saw it leave first.
#[tokio::test]
async fn clients_that_hang_up_right_after_sending_are_each_one_row_and_one_count() {
    let dir = fresh_dir();
    let db = dir.path().join("log.db");
    let w = Worker::start(&[("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap()), ("CACHE_ENABLED", "false")]);
    for i in 0..200 {
        let body = serde_json::to_string(&json!({ "text": format!("hang up {i}") })).unwrap();
        let mut s = TcpStream::connect(w.addr).unwrap();
        write!(
            s,
            "POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        drop(s);
    }
    let c = reqwest::Client::new();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counted = crate::common::metric(
            &c,
            &w,
            "inference_requests_total{worker_id=\"it-worker\",status=\"success\",cache_hit=\"false\"}",
        )
        .await
            + crate::common::metric(
                &c,
                &w,
                "inference_requests_total{worker_id=\"it-worker\",status=\"error\",cache_hit=\"false\"}",
            )
            .await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(&pool).await.unwrap_or(0);
        if counted == 200.0 && rows == 200 {
            break;
        }
        assert!(counted <= 200.0 && rows <= 200, "{counted} counted, {rows} rows");
        assert!(std::time::Instant::now() < deadline, "after 200 hang-ups: {counted} counted, {rows} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE error_type = 'client_closed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("200 hang-ups: {closed} recorded as client_closed, the rest answered");
}

/// With SHUTDOWN_DRAIN_DELAY_SECONDS, a load balancer polling /readyz sees 503 while the
/// worker still answers, and only then does the listener close.
#[tokio::test]
async fn the_drain_delay_answers_readyz_503_and_keeps_serving_before_closing() {
    let mut w = Worker::start(&[("SHUTDOWN_DRAIN_DELAY_SECONDS", "2")]);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    assert_eq!(c.get(w.url("/readyz")).send().await.unwrap().status(), 200);
    let signalled = std::time::Instant::now();
    w.signal("TERM");
    // Readiness turns 503 once the signal is handled, well before the 2 s delay ends.
    let ready = loop {
        let ready = c.get(w.url("/readyz")).send().await.unwrap();
        if ready.status() != 200 {
            break ready;
        }
        assert!(signalled.elapsed() < Duration::from_millis(1500), "still ready 1.5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["draining"], true, "{body}");
    let (status, _) = crate::common::infer(&c, &w, "still serving while draining", None).await;
    assert_eq!(status, 200, "requests are still served during the delay");
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(signalled.elapsed() >= Duration::from_secs(2), "exited before the delay: {:?}", signalled.elapsed());
}
