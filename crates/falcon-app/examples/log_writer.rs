//! Request-log benchmarks (`make bench-log`):
//! 1. writer throughput: N records through `RequestLog::record` (the request path's call:
//!    the journal append) until every row is in the database, for Postgres at several
//!    `LOG_WRITER_CONCURRENCY` values and for the embedded SQLite file. Target ≥ 60,000 rows/s.
//! 2. the request path's cost of `record` alone (encode + journal append), per record.
//!    Target ≤ 2 µs.
//! 3. retention's cost to the SQLite writer: the same run while a prune deletes as many
//!    expired rows. No record may be lost.
//! 4. Postgres's own cost per row: a server-side COPY from a file into the table as the
//!    migrations leave it, and into the previous schema. Target ≤ 6 µs/row.
//!
//! `cargo run --release -p falcon-server --example log_writer -- DATABASE_URL [ROWS]`
//! (`make bench-log` creates and drops a scratch database for it.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure should stop it loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use falcon_app::adapters::request_log::{self, LogRecord, Sink, WriterConfig};
use falcon_app::adapters::resilience::{BreakerConfig, CircuitBreaker};

fn record(i: usize) -> LogRecord {
    LogRecord {
        text_hash: Some(format!("{i:064x}")),
        text_length: Some(120),
        prediction: Some("positive".into()),
        confidence: Some(0.91),
        probabilities: Some(r#"{"negative":0.04,"neutral":0.05,"positive":0.91}"#.into()),
        cache_hit: i.is_multiple_of(3),
        success: true,
        processing_time_ms: 0.4,
        inference_time_ms: Some(0.01),
        client_ip: Some("127.0.0.1".into()),
        ..LogRecord::new(uuid::Uuid::now_v7().to_string(), "bench", "bench")
    }
}

fn breaker() -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(
        "postgres",
        BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            half_open_successes: 3,
        },
    ))
}

/// Records through the writer (journal on) until all are written; returns (rows/s, µs per
/// record call). `alongside` is awaited before the writer is finished (which closes the
/// sink's pool): work that shares the pool and must end first.
async fn through_writer(
    sink: &Sink,
    rows: usize,
    concurrency: usize,
    alongside: impl std::future::Future<Output = ()>,
) -> (f64, f64) {
    let spool = tempfile::tempdir().unwrap();
    let (spooling, _) = request_log::open_spool(spool.path(), "bench", 4 << 30).unwrap();
    let config = WriterConfig {
        buffer_size: 1000,
        batch_size: 500,
        batch_window: Duration::from_millis(20),
        op_timeout: Duration::from_secs(30),
        concurrency,
        priority: request_log::WriterPriority::Nice(0),
        retention: request_log::Retention::days(0),
    };
    let (log, writer, _probe) =
        request_log::start(sink.clone(), breaker(), config, Some(spooling), falcon_app::shutdown::Stopping::never());
    let mut records: Vec<LogRecord> = (0..rows).map(record).collect();
    let started = Instant::now();
    let mut recording = Duration::ZERO;
    while !records.is_empty() {
        let chunk: Vec<LogRecord> = records.drain(..records.len().min(1000)).collect();
        let t = Instant::now();
        for r in chunk {
            log.record(r);
        }
        recording += t.elapsed();
        // Let the writer run as it would between requests.
        tokio::task::yield_now().await;
    }
    alongside.await;
    drop(log);
    writer.finish(Duration::from_secs(600)).await;
    (rows as f64 / started.elapsed().as_secs_f64(), recording.as_secs_f64() * 1e6 / rows as f64)
}

async fn count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(pool).await.unwrap()
}

/// Retention's cost to the SQLite writer at saturation: the same records through the writer
/// while the prune deletes as many expired rows, against the writer alone (measured just
/// before). Every record must still be a row.
async fn sqlite_retention_cost(rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        Sink::sqlite(&dir.path().join("bench.db"), request_log::WriterPriority::Nice(0), Duration::from_secs(5))
            .await
            .unwrap();
    sqlite.migrate().await.unwrap();
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    for chunk in (0..rows).collect::<Vec<_>>().chunks(5_000) {
        let batch: Vec<LogRecord> = chunk.iter().map(|&i| LogRecord { created_at: old, ..record(i) }).collect();
        sqlite.write(&batch).await.unwrap();
    }
    let pruner = sqlite.clone();
    let prune = tokio::spawn(async move {
        let started = Instant::now();
        let done = pruner.maintain(request_log::Retention::days(30), chrono::Utc::now(), false).await.unwrap();
        (done.rows, started.elapsed().as_secs_f64())
    });
    let mut pruned = None;
    let (rate, record_us) = through_writer(&sqlite, rows, 1, async { pruned = Some(prune.await.unwrap()) }).await;
    let (deleted, prune_s) = pruned.unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("bench.db").display())).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(&pool).await.unwrap();
    assert_eq!((deleted, left), (rows as u64, rows as i64), "every expired row deleted, every new record a row");
    println!(
        "{{\"bench\":\"writer\",\"sink\":\"sqlite\",\"rows\":{rows},\"concurrency\":1,\"while_pruning_rows\":{deleted},\"prune_s\":{prune_s:.2},\"rows_per_s\":{rate:.0},\"record_us\":{record_us:.2}}}"
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: log_writer DATABASE_URL [ROWS]");
    let rows: usize = args.next().map_or(200_000, |n| n.parse().expect("ROWS is a number"));
    // `sqlite` as a third argument: the SQLite writer alone (for profiling it).
    let only_sqlite = args.next().as_deref() == Some("sqlite");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let sink = Sink::postgres(&url, 8, Duration::from_secs(30)).unwrap();
    sink.migrate().await.unwrap();

    for concurrency in if only_sqlite { vec![] } else { vec![1usize, 2, 4] } {
        sqlx::query("TRUNCATE inference_logs").execute(&pool).await.unwrap();
        // A pool per writer: the writer runs its own runtime, and a connection opened on a
        // runtime that has ended cannot be used from the next one.
        let sink = Sink::postgres(&url, 8, Duration::from_secs(30)).unwrap();
        let (rate, record_us) = through_writer(&sink, rows, concurrency, async {}).await;
        assert_eq!(count(&pool).await as usize, rows, "every record must be in the table");
        println!(
            "{{\"bench\":\"writer\",\"sink\":\"postgres\",\"rows\":{rows},\"concurrency\":{concurrency},\"rows_per_s\":{rate:.0},\"record_us\":{record_us:.2}}}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        Sink::sqlite(&dir.path().join("bench.db"), request_log::WriterPriority::Nice(0), Duration::from_secs(5))
            .await
            .unwrap();
    sqlite.migrate().await.unwrap();
    let (rate, record_us) = through_writer(&sqlite, rows, 1, async {}).await;
    println!(
        "{{\"bench\":\"writer\",\"sink\":\"sqlite\",\"rows\":{rows},\"concurrency\":1,\"rows_per_s\":{rate:.0},\"record_us\":{record_us:.2}}}"
    );
    sqlite_retention_cost(rows).await;
    if only_sqlite {
        return;
    }

    // Postgres's own cost per row: a server-side COPY of a file (no client in the timing),
    // into the table as the migrations leave it, and into the previous schema (random v4
    // ids, B-trees on created_at and on worker_id + created_at). Best of two runs each.
    let file = tempfile::Builder::new().prefix("falcon-rowcost").tempfile_in("/tmp").unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let server_cost = |label: &'static str, v4: bool| {
        let pool = pool.clone();
        let path = path.clone();
        async move {
            let records: Vec<LogRecord> = (0..rows)
                .map(|i| {
                    let mut r = record(i);
                    if v4 {
                        r.log_id = uuid::Uuid::new_v4().simple().to_string();
                        r.request_id = uuid::Uuid::new_v4().to_string();
                    }
                    r
                })
                .collect();
            std::fs::write(&path, request_log::sink::copy_text(&records).unwrap()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let copy = format!("COPY inference_logs ({}) FROM '{path}'", request_log::COLUMNS.join(", "));
            let mut best = f64::MAX;
            for _ in 0..2 {
                sqlx::query("TRUNCATE inference_logs").execute(&pool).await.unwrap();
                sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
                let started = Instant::now();
                sqlx::query(sqlx::AssertSqlSafe(copy.as_str())).execute(&pool).await.unwrap();
                best = best.min(started.elapsed().as_secs_f64() * 1e6 / rows as f64);
            }
            println!(
                "{{\"bench\":\"postgres_row_cost\",\"schema\":\"{label}\",\"rows\":{rows},\"server_us_per_row\":{best:.2}}}"
            );
        }
    };
    server_cost("current (v7 ids, BRIN on created_at)", false).await;
    for sql in [
        "DROP INDEX IF EXISTS inference_logs_created_at_brin",
        "CREATE INDEX inference_logs_created_at_idx ON inference_logs (created_at)",
        "CREATE INDEX inference_logs_worker_id_created_at_idx ON inference_logs (worker_id, created_at)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    server_cost("previous (v4 ids, B-trees on created_at and worker_id+created_at)", true).await;
}
