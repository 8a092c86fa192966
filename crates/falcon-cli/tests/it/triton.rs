//! Triton's own load tool against a worker, unchanged and without a shim: NVIDIA's
//! perf_analyzer (installed into .tools/perf_analyzer by scripts/ensure-test-deps.sh) reads
//! the model's metadata and configuration, then sends binary tensor data (its default) and asks
//! for binary outputs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::json;

use crate::common::{Worker, fresh_dir, metric, repo, wait_for_sqlite_rows};

/// A short perf_analyzer run at concurrency 2 over distinct texts, with the cache off: it
/// measures a throughput, and every request it sent is one success count and one row, with
/// no error at all.
#[tokio::test]
async fn perf_analyzer_drives_the_inference_route_with_its_defaults() {
    let pa = repo().join(".tools/perf_analyzer/perf_analyzer");
    assert!(pa.exists(), "scripts/ensure-test-deps.sh installs perf_analyzer into .tools/perf_analyzer");
    let dir = fresh_dir();
    let db = dir.path().join("log.db");
    let w = Worker::start(&[("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap()), ("CACHE_ENABLED", "false")]);
    let texts: Vec<_> =
        (0..5000).map(|i| json!({ "text": [format!("review {i}: the product was fine, mostly")] })).collect();
    let input = dir.path().join("input.json");
    std::fs::write(&input, json!({ "data": texts }).to_string()).unwrap();
    let csv = dir.path().join("out.csv");
    let mut cmd = std::process::Command::new(pa);
    cmd.args(["-m", "sentiment", "-i", "http", "-u", &w.addr.to_string()])
        .args(["--input-data", input.to_str().unwrap(), "-f", csv.to_str().unwrap()])
        .args(["--concurrency-range", "2", "--measurement-interval", "1000"])
        .args(["--max-trials", "3", "--stability-percentage", "999"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "perf_analyzer failed:\n{text}");
    // "Concurrency,Inferences/Second,…" then "2,2874.1,…".
    let report = std::fs::read_to_string(&csv).unwrap();
    let throughput: f64 = report.lines().nth(1).and_then(|l| l.split(',').nth(1)?.parse().ok()).unwrap_or(0.0);
    assert!(throughput > 0.0, "no throughput measured:\n{report}\n{text}");
    let c = reqwest::Client::new();
    let series = |status: &str| {
        format!("inference_requests_total{{worker_id=\"it-worker\",status=\"{status}\",cache_hit=\"false\"}}")
    };
    let requests = metric(&c, &w, &series("success")).await;
    assert!(requests >= 100.0, "{requests} requests:\n{text}");
    assert_eq!(metric(&c, &w, &series("error")).await, 0.0, "{text}");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    wait_for_sqlite_rows(&pool, requests as i64, Duration::from_secs(20)).await;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE error_type IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    eprintln!("perf_analyzer: {throughput} infer/s at concurrency 2 (debug build), {requests} requests, as many rows");
}
