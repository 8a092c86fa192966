#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! The API production users expect, against the real binary: API keys (401, 403, the key
//! id in the row and a metric, never the key), per-client rate limits (429 with
//! Retry-After and RateLimit headers, X-Forwarded-For only from trusted proxies),
//! admission (503 before any work) and the batch endpoint.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{Worker, fresh_dir, metric, post, wait_for_metric, wait_for_sqlite_rows};

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn api_keys_guard_the_inference_routes_and_only_their_ids_are_recorded() {
    let dir = fresh_dir();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!("# id:sha256[:scopes]\nbilling:{}\nops:{}:infer+admin\n", sha("s3cret-billing"), sha("s3cret-ops")),
    )
    .unwrap();
    let db = dir.path().join("log.db");
    let w =
        Worker::start(&[("API_KEYS_FILE", keys.to_str().unwrap()), ("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap())]);
    let c = reqwest::Client::new();
    let url = w.url("/infer");
    let body = json!({ "text": "a calm and pleasant morning" });

    let r = post(&c, &url, body.clone(), &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"falcon\"");
    assert_eq!(r.json::<Value>().await.unwrap()["error_type"], "unauthorized");
    let r = post(&c, &url, body.clone(), &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(r.status(), 401);
    for _ in 0..3 {
        let r = post(&c, &url, body.clone(), &[("Authorization", "Bearer s3cret-billing")]).await;
        assert_eq!(r.status(), 200);
    }
    let r =
        post(&c, &w.url("/infer/batch"), json!({ "texts": ["one", "two"] }), &[("Authorization", "Bearer s3cret-ops")])
            .await;
    assert_eq!(r.status(), 200);
    // The platform's endpoints stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(c.get(w.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    // The admin route needs the admin scope.
    let r = c.post(w.url("/admin/reload")).header("Authorization", "Bearer s3cret-billing").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error_type"], "forbidden");
    let r = c.post(w.url("/admin/reload")).header("Authorization", "Bearer s3cret-ops").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["reload"]["changed"], false);

    assert_eq!(metric(&c, &w, "api_key_requests_total{worker_id=\"it-worker\",api_key_id=\"billing\"}").await, 3.0);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    wait_for_sqlite_rows(&pool, 7, Duration::from_secs(10)).await;
    let ids: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT api_key_id, error_type FROM inference_logs ORDER BY id").fetch_all(&pool).await.unwrap();
    let expected = [
        (None, Some("unauthorized")),
        (None, Some("unauthorized")),
        (Some("billing"), None),
        (Some("billing"), None),
        (Some("billing"), None),
        (Some("ops"), None),
        (Some("ops"), None),
    ];
    let expected: Vec<(Option<String>, Option<String>)> =
        expected.iter().map(|(a, b)| (a.map(str::to_owned), b.map(str::to_owned))).collect();
    assert_eq!(ids, expected);
    let logs = w.logs.lock().unwrap().iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    assert!(!logs.contains("s3cret"), "a key reached the log");
}

#[test]
fn an_open_api_on_a_public_address_warns_at_start() {
    let w = Worker::start(&[("HOST", "0.0.0.0")]);
    let line = w.wait_for_log("the open-API warning", Duration::from_secs(5), |l| {
        l["message"].as_str().is_some_and(|m| m.starts_with("No API keys configured"))
    });
    assert_eq!(line["level"], "WARN");
    // The warning comes before "Worker listening" (start-up checks the keys first), and
    // start() has read the log up to that line: a warning would be there already.
    let quiet = Worker::start(&[]);
    assert!(!quiet.log_messages().iter().any(|m| m.starts_with("No API keys configured")), "loopback is not public");
}

#[tokio::test]
async fn a_client_past_its_budget_gets_429_with_retry_after_and_others_do_not() {
    // One request a minute past the burst: no token comes back while the test runs, however
    // slow the machine.
    let w = Worker::start(&[
        ("RATE_LIMIT_ENABLED", "true"),
        ("RATE_LIMIT_PER_MINUTE", "1"),
        ("RATE_LIMIT_BURST", "5"),
        ("API_KEYS", "alpha:key-a,beta:key-b"),
    ]);
    let c = reqwest::Client::new();
    let url = w.url("/infer");
    let body = json!({ "text": "steady traffic" });
    for i in 0..5 {
        let r = post(&c, &url, body.clone(), &[("Authorization", "Bearer key-a")]).await;
        assert_eq!(r.status(), 200, "request {i} is within the burst");
    }
    let r = post(&c, &url, body.clone(), &[("Authorization", "Bearer key-a")]).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "Retry-After {retry}: the next token, a minute after the first");
    assert_eq!(r.headers()["ratelimit-limit"], "5");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert_eq!(r.json::<Value>().await.unwrap()["error_type"], "rate_limited");
    // Another key has its own budget.
    let r = post(&c, &url, body.clone(), &[("Authorization", "Bearer key-b")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(metric(&c, &w, "rate_limited_total{worker_id=\"it-worker\",key_type=\"api_key\"}").await, 1.0);
}

#[tokio::test]
async fn x_forwarded_for_picks_the_budget_only_from_a_trusted_proxy() {
    // No token comes back while the test runs (one a minute): only the burst counts.
    let limits = [("RATE_LIMIT_ENABLED", "true"), ("RATE_LIMIT_PER_MINUTE", "1"), ("RATE_LIMIT_BURST", "2")];
    let c = reqwest::Client::new();
    let body = json!({ "text": "who am i" });
    // The test client is on loopback, trusted here: each forwarded address is a client of
    // its own.
    let mut env = limits.to_vec();
    env.push(("TRUSTED_PROXIES", "127.0.0.1/32"));
    let w = Worker::start(&env);
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        for _ in 0..2 {
            let r = post(&c, &w.url("/infer"), body.clone(), &[("X-Forwarded-For", client)]).await;
            assert_eq!(r.status(), 200, "{client}");
        }
    }
    // Not a trusted proxy: the header is the client's own claim, and changes nothing.
    let mut env = limits.to_vec();
    env.push(("TRUSTED_PROXIES", "10.0.0.0/8"));
    let w = Worker::start(&env);
    let statuses: Vec<u16> =
        futures_statuses(&c, &w.url("/infer"), &body, &["203.0.113.1", "203.0.113.2", "203.0.113.3"]).await;
    assert_eq!(statuses, [200, 200, 429], "a spoofed X-Forwarded-For bought a fresh budget");
}

async fn futures_statuses(c: &reqwest::Client, url: &str, body: &Value, forwarded: &[&str]) -> Vec<u16> {
    let mut out = Vec::new();
    for f in forwarded {
        out.push(post(c, url, body.clone(), &[("X-Forwarded-For", f)]).await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn past_max_concurrent_requests_a_request_is_refused_before_any_work() {
    let w = Worker::start(&[("MAX_CONCURRENT_REQUESTS", "1")]);
    let c = reqwest::Client::new();
    let in_progress = "inference_requests_in_progress{worker_id=\"it-worker\"}";
    assert_eq!(metric(&c, &w, in_progress).await, 0.0, "the gauge exists at 0 from start-up");
    // A request whose body is still arriving holds the only place.
    let body = br#"{"text": "slow client"}"#;
    let mut slow = TcpStream::connect(w.addr).unwrap();
    write!(
        slow,
        "POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    slow.write_all(&body[..5]).unwrap();
    // Only once the worker has admitted the slow one: a request sent before would take the
    // place, and the slow one would be refused instead.
    wait_for_metric(&c, &w, in_progress, 1.0, Duration::from_secs(10)).await;
    let r = post(&c, &w.url("/infer"), json!({ "text": "second" }), &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error_type"], "overloaded");
    assert!(answer["error"].as_str().unwrap().contains("MAX_CONCURRENT_REQUESTS"), "{answer}");
    assert_eq!(metric(&c, &w, "concurrency_limited_total{worker_id=\"it-worker\"}").await, 1.0);
    // The place comes back when the slow request ends.
    slow.write_all(&body[5..]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = post(&c, &w.url("/infer"), json!({ "text": "third" }), &[]).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only the concurrency limit refuses");
        assert!(std::time::Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_metric(&c, &w, in_progress, 0.0, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_batch_answers_each_text_in_order_with_its_own_errors_cache_hits_and_rows() {
    let dir = fresh_dir();
    let db = dir.path().join("log.db");
    let w = Worker::start(&[("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap()), ("MAX_BATCH_TEXTS", "8")]);
    let c = reqwest::Client::new();
    let texts = json!(["what a lovely day", "", 42, "the service was terrible", "what a lovely day"]);
    let r = post(&c, &w.url("/infer/batch"), json!({ "texts": texts }), &[]).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[0]["prediction"].is_string() && results[0]["cache_hit"] == false, "{answer}");
    assert_eq!(results[1]["error_type"], "validation_error");
    assert_eq!(results[2]["error_type"], "validation_error");
    assert_eq!(results[3]["prediction"], "negative", "{answer}");
    assert_eq!(results[4]["prediction"], results[0]["prediction"]);
    assert!(answer["request_id"].is_string() && answer["model_version"].is_string());
    // Each answer is what POST /infer says of the same text; the second time, from the cache.
    let single: Value =
        post(&c, &w.url("/infer"), json!({ "text": "the service was terrible" }), &[]).await.json().await.unwrap();
    assert_eq!(single["probabilities"], results[3]["probabilities"]);
    assert_eq!(single["cache_hit"], true, "the batch filled the cache");
    let again: Value =
        post(&c, &w.url("/infer/batch"), json!({ "texts": ["what a lovely day"] }), &[]).await.json().await.unwrap();
    assert_eq!(again["results"][0]["cache_hit"], true);
    // What concerns the whole batch fails the whole batch.
    let too_many: Vec<String> = (0..9).map(|i| format!("text {i}")).collect();
    let r = post(&c, &w.url("/infer/batch"), json!({ "texts": too_many }), &[]).await;
    assert_eq!(r.status(), 422);
    let r = post(&c, &w.url("/infer/batch"), json!({ "text": "not a batch" }), &[]).await;
    assert_eq!(r.status(), 422);
    // One row per text (5 + 1 + 1 single), plus one per failed batch (2).
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    wait_for_sqlite_rows(&pool, 9, Duration::from_secs(10)).await;
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE error_type = 'validation_error'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(errors, 4);
    assert_eq!(metric(&c, &w, "batch_texts_total{worker_id=\"it-worker\",outcome=\"success\"}").await, 4.0);
}

/// The Open Inference Protocol v2 with a real client: tritonclient[http] (installed into
/// .tools/venv by scripts/ensure-test-deps.sh), with JSON tensors, with its defaults (binary
/// tensor data both ways), and with classification. Each request is one count and each text
/// one row.
#[tokio::test]
async fn a_real_open_inference_protocol_client_reads_the_same_answers_as_post_infer() {
    let python = crate::common::repo().join(".tools/venv/bin/python");
    assert!(python.exists(), "scripts/ensure-test-deps.sh installs tritonclient into .tools/venv");
    let dir = fresh_dir();
    let db = dir.path().join("log.db");
    let w = Worker::start(&[("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap())]);
    let texts = ["I love it", "this is awful", "the meeting is at noon"];
    let script = crate::common::repo().join("crates/falcon-cli/tests/it/assets/oip_client.py");
    let addr = w.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python).arg(&script).arg(addr).args(texts).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (seen["live"].as_bool(), seen["ready"].as_bool(), seen["model_ready"].as_bool()),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(seen["server"]["name"], "falcon");
    assert_eq!(
        seen["server"]["extensions"],
        json!(["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"])
    );
    assert_eq!(seen["model"]["inputs"][0]["datatype"], "BYTES");
    assert_eq!(seen["config"]["max_batch_size"], 64);
    assert_eq!(seen["config"]["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(seen["config"]["output"][1]["dims"], json!([3]));
    assert_eq!(seen["shape"], json!([3, 3]));
    assert_eq!(seen["id"], "oip-test");
    assert!(seen["unknown_model"].as_str().unwrap().contains("unknown model"), "{seen}");
    // The defaults came back as binary data, and read the same as the JSON tensors.
    assert!(seen["binary_header"]["label"]["binary_data_size"].as_u64().is_some(), "{seen}");
    assert_eq!(seen["binary_header"]["probabilities"]["binary_data_size"], 36, "3 × 3 FP32");
    assert_eq!(seen["binary_labels"], seen["labels"]);
    assert_eq!(seen["binary_probabilities"], seen["probabilities"]);
    let c = reqwest::Client::new();
    for (i, text) in texts.iter().enumerate() {
        let answer: Value = post(&c, &w.url("/infer"), json!({ "text": text }), &[]).await.json().await.unwrap();
        assert_eq!(seen["labels"][i], answer["prediction"], "{text}");
        for (j, label) in ["negative", "neutral", "positive"].iter().enumerate() {
            let p = seen["probabilities"][i][j].as_f64().unwrap();
            let q = answer["probabilities"][label].as_f64().unwrap();
            assert!((p - q).abs() < 1e-6, "{text} {label}: {p} vs {q}");
        }
        // Classification: the top class first, as "score:index:label".
        let top = seen["classes"][i][0].as_str().unwrap();
        let [score, index, label] = top.split(':').collect::<Vec<_>>()[..] else { panic!("{top}") };
        assert_eq!(label, answer["prediction"], "{top}");
        assert_eq!(["negative", "neutral", "positive"][index.parse::<usize>().unwrap()], label);
        assert!((score.parse::<f64>().unwrap() - answer["confidence"].as_f64().unwrap()).abs() < 1e-6, "{top}");
        assert_eq!(seen["classes"][i].as_array().unwrap().len(), 2);
    }
    // Three inferences of three texts: three counts, nine rows (and the three /infer above:
    // three more of each, from the cache).
    let requests = "inference_requests_total{worker_id=\"it-worker\",status=\"success\",cache_hit=\"false\"}";
    let hits = "inference_requests_total{worker_id=\"it-worker\",status=\"success\",cache_hit=\"true\"}";
    assert_eq!((metric(&c, &w, requests).await, metric(&c, &w, hits).await), (1.0, 5.0));
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    wait_for_sqlite_rows(&pool, 12, Duration::from_secs(10)).await;
    // A malformed request is {"error": ...} with 400, as the protocol says.
    let r = post(
        &c,
        &w.url("/v2/models/sentiment/infer"),
        json!({ "inputs": [{ "name": "text", "shape": [2], "datatype": "BYTES", "data": ["one"] }] }),
        &[],
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("shape says 2"), "{body}");
}
