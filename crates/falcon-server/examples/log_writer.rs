//! Request-log writer throughput: N records through `RequestLog::record` (the request
//! path's call) until every row is in Postgres. Target: ≥ 20,000 rows/s on this machine.
//!
//! `cargo run --release -p falcon-server --example log_writer -- DATABASE_URL [ROWS]`
//! (`make bench-log` creates and drops a scratch database for it.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure should stop it loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use falcon_server::request_log::{self, LogRecord, Sink, WriterConfig};
use falcon_server::resilience::{BreakerConfig, CircuitBreaker};

fn record(i: usize) -> LogRecord {
    LogRecord {
        text_hash: Some(format!("{i:064x}")),
        text_length: Some(120),
        prediction: Some("positive".into()),
        confidence: Some(0.91),
        probabilities: Some(serde_json::json!({"negative": 0.04, "neutral": 0.05, "positive": 0.91})),
        cache_hit: i.is_multiple_of(3),
        success: true,
        processing_time_ms: 0.4,
        inference_time_ms: Some(0.01),
        client_ip: Some("127.0.0.1".into()),
        ..LogRecord::new(format!("bench-{i}"), "bench", "bench")
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: log_writer DATABASE_URL [ROWS]");
    let rows: usize = args.next().map_or(100_000, |n| n.parse().expect("ROWS is a number"));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let sink = Sink::postgres(&url, 4, Duration::from_secs(10)).unwrap();
    sink.migrate().await.unwrap();
    sqlx::query("TRUNCATE inference_logs").execute(&pool).await.unwrap();

    let breaker = Arc::new(CircuitBreaker::new(
        "postgres",
        BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            half_open_successes: 3,
        },
    ));
    for batch_size in [500usize, 2000] {
        sqlx::query("TRUNCATE inference_logs").execute(&pool).await.unwrap();
        let config = WriterConfig {
            buffer_size: rows * 2,
            batch_size,
            batch_window: Duration::from_millis(20),
            op_timeout: Duration::from_secs(30),
        };
        let (log, writer, _probe) = request_log::start(
            sink.clone(),
            Arc::clone(&breaker),
            config,
            None,
            falcon_server::tasks::Stopping::never(),
        );
        let records: Vec<LogRecord> = (0..rows).map(record).collect();
        let started = Instant::now();
        for r in records {
            log.record(r);
        }
        drop(log);
        writer.finish(Duration::from_secs(300)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let written: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(&pool).await.unwrap();
        assert_eq!(written as usize, rows, "every record must be in the table");
        println!(
            "{{\"rows\":{rows},\"batch_size\":{batch_size},\"seconds\":{elapsed:.3},\"rows_per_s\":{:.0}}}",
            rows as f64 / elapsed
        );
    }
}
