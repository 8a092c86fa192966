#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! The Postgres request log with a real, throwaway PostgreSQL that the tests stop and
//! start: one row per request, nothing lost across an outage, drops counted exactly.

use std::time::{Duration, Instant};

use crate::common::postgres::Postgres;
use crate::common::{Worker, infer, metric};
use serde_json::Value;

/// A worker logging to `pg`, with `extra` settings.
pub fn worker(pg: &Postgres, id: &str, extra: &[(&str, &str)]) -> Worker {
    let url = pg.url();
    let mut env = vec![("DATABASE_URL", url.as_str()), ("WORKER_ID", id)];
    env.extend_from_slice(extra);
    Worker::start(&env)
}

fn wait_for_rows(pg: &Postgres, w: &Worker, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = pg.count_rows();
        if n == expected {
            return;
        }
        assert!(n < expected, "{n} rows, more than the {expected} expected");
        if Instant::now() >= deadline {
            let logs: Vec<Value> = w.logs.lock().unwrap().iter().filter(|l| l["level"] != "INFO").cloned().collect();
            panic!("{n} rows after {within:?}, expected {expected}; worker warnings: {logs:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn every_request_makes_exactly_one_row_with_the_right_fields() {
    let pg = Postgres::start();
    let w = worker(&pg, "w-log", &[]);
    let c = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, body) = infer(&c, &w, &format!("row number {i} was great"), None).await;
        assert_eq!(status, 200);
        ids.push(body["request_id"].as_str().unwrap().to_owned());
    }
    let (_, hit) = infer(&c, &w, "row number 0 was great", None).await;
    assert_eq!(hit["cache_hit"], true);
    infer(&c, &w, "pay once", Some("key-1")).await;
    let (_, replay) = infer(&c, &w, "pay once", Some("key-1")).await;
    assert_eq!(replay["idempotency_hit"], true);
    let (status, invalid) = infer(&c, &w, "   ", None).await;
    assert_eq!(status, 422);
    wait_for_rows(&pg, &w, 24, Duration::from_secs(10));

    let first = &ids[0];
    let row = pg.psql(&format!(
        "SELECT worker_id, text_hash, text_length, prediction, success, cache_hit, model_version, \
         inference_time_ms IS NOT NULL, probabilities->>'positive' IS NOT NULL \
         FROM inference_logs WHERE request_id = '{first}'"
    ));
    let text = "row number 0 was great";
    let hash = crate::common::text_hash(text);
    let model_version = hit["model_version"].as_str().unwrap();
    assert_eq!(row, format!("w-log|{hash}|{}|positive|t|f|{model_version}|t|t", text.len()));
    let hit_id = hit["request_id"].as_str().unwrap();
    assert_eq!(
        pg.psql(&format!(
            "SELECT cache_hit, inference_time_ms IS NULL FROM inference_logs WHERE request_id = '{hit_id}'"
        )),
        "t|t"
    );
    let replay_id = replay["request_id"].as_str().unwrap();
    assert_eq!(
        pg.psql(&format!(
            "SELECT idempotency_hit, idempotency_key FROM inference_logs WHERE request_id = '{replay_id}'"
        )),
        "t|key-1"
    );
    let invalid_id = invalid["request_id"].as_str().unwrap();
    assert_eq!(
        pg.psql(&format!(
            "SELECT success, error_type, prediction IS NULL FROM inference_logs WHERE request_id = '{invalid_id}'"
        )),
        "f|validation_error|t"
    );
    assert_eq!(pg.psql("SELECT count(DISTINCT request_id) FROM inference_logs"), "24");
    let raw = pg
        .psql("SELECT count(*) FROM inference_logs WHERE concat_ws(' ', text_hash, error_message) LIKE '%was great%'");
    assert_eq!(raw, "0", "raw text is never stored");

    // The runbook's queries, as written.
    assert_eq!(pg.psql("SELECT COUNT(*) FROM inference_logs WHERE created_at > NOW() - INTERVAL '1 minute';"), "24");
    let summary = pg.psql(
        "SELECT worker_id, count(*), round(avg(processing_time_ms)::numeric, 3) > 0 FROM inference_logs GROUP BY worker_id",
    );
    assert_eq!(summary, "w-log|24|t");
    pg.psql("DELETE FROM inference_logs WHERE created_at < NOW() - INTERVAL '30 days';");
    assert_eq!(pg.count_rows(), 24);
    let indexes = pg.psql(
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'inference_logs'",
    );
    assert!(
        indexes.contains("inference_logs_log_id_key")
            && indexes.contains("inference_logs_request_id_idx")
            && indexes.contains("inference_logs_created_at_brin")
            && !indexes.contains("inference_logs_created_at_idx")
            && !indexes.contains("worker_id_created_at"),
        "{indexes}"
    );
    // The runbook's time queries can use the BRIN index, each day partition's own copy of it
    // (planner told to avoid scanning).
    let plan = pg.psql(
        "SET enable_seqscan = off; EXPLAIN SELECT COUNT(*) FROM inference_logs WHERE created_at > NOW() - INTERVAL '1 minute';",
    );
    assert!(plan.contains("Bitmap Index Scan on inference_logs_p") && !plan.contains("Seq Scan"), "{plan}");
    let brin = pg.psql(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
         WHERE a.amname = 'brin' AND i.indrelid = (SELECT to_regclass('inference_logs_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')))",
    );
    assert_eq!(brin, "1", "today's partition has the BRIN index on created_at");
    assert_eq!(
        metric(&c, &w, "db_operations_total{worker_id=\"w-log\",operation=\"insert\",status=\"error\"}").await,
        0.0
    );
}

/// A client that reuses an `X-Request-ID` makes one row per request: different requests
/// never collapse into one (a success after a 422 under the same id keeps both rows).
#[tokio::test]
async fn a_reused_request_id_makes_one_row_per_request() {
    let pg = Postgres::start();
    let w = worker(&pg, "w-dup", &[]);
    let c = reqwest::Client::new();
    let send = |text: &'static str| {
        c.post(w.url("/infer")).header("x-request-id", "reused-1").json(&serde_json::json!({ "text": text })).send()
    };
    assert_eq!(send("").await.unwrap().status(), 422);
    let (a, b, d) = tokio::join!(send("first"), send("second"), send("third"));
    for r in [a, b, d] {
        assert_eq!(r.unwrap().status(), 200);
    }
    wait_for_rows(&pg, &w, 4, Duration::from_secs(10));
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs WHERE request_id = 'reused-1'"), "4");
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs WHERE request_id = 'reused-1' AND success"), "3");
    assert_eq!(pg.psql("SELECT count(DISTINCT log_id) FROM inference_logs"), "4");
    assert_eq!(metric(&c, &w, "dropped_logs_total{").await, 0.0);
}

/// The same record written twice (a batch retried after its acknowledgement was lost, a
/// spool replayed after a crash) is one row: the COPY fails as a whole on the unique
/// `log_id`, and the batch goes again skipping what is already there, losing nothing.
#[tokio::test]
async fn a_batch_written_twice_is_one_row_per_record_and_its_new_records_are_kept() {
    use falcon_app::adapters::request_log::{LogRecord, Sink};
    let pg = Postgres::start();
    let sink = Sink::postgres(&pg.url(), 2, Duration::from_secs(10)).unwrap();
    sink.migrate().await.unwrap();
    let record = |i: usize| LogRecord {
        text_length: Some(3),
        prediction: Some("neutral".into()),
        confidence: Some(0.5),
        success: true,
        processing_time_ms: 1.0,
        ..LogRecord::new(format!("same-client-id-{}", i % 2), "w", "v")
    };
    let first: Vec<_> = (0..3).map(record).collect();
    assert_eq!(sink.write(&first).await.unwrap(), 3);
    let mut again = first.clone();
    again.push(record(3));
    assert_eq!(sink.write(&again).await.unwrap(), 1, "only the new record is inserted");
    assert_eq!(pg.count_rows(), 4);
}

#[tokio::test]
async fn a_postgres_outage_loses_nothing_and_flushes_by_itself() {
    let mut pg = Postgres::start();
    let w = worker(&pg, "w-outage", &[]);
    let c = reqwest::Client::new();
    infer(&c, &w, "before the outage", None).await;
    wait_for_rows(&pg, &w, 1, Duration::from_secs(10));

    pg.stop();
    for i in 0..500 {
        let (status, _) = infer(&c, &w, &format!("during the outage {i}"), None).await;
        assert_eq!(status, 200, "request {i} failed while Postgres was down");
    }
    // Every record is waiting for the database (buffered or queued), none is written.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&c, &w, "log_buffer_size{").await < 500.0 {
        assert!(Instant::now() < deadline, "log_buffer_size never showed the 500 waiting records");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = c.get(w.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a database outage does not make the worker unready");
    // Let the worker see the outage (a failed write) before Postgres comes back.
    let errors = "db_operations_total{worker_id=\"w-outage\",operation=\"insert\",status=\"error\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c, &w, errors).await == 0.0 {
        assert!(Instant::now() < deadline, "no failed write during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready: Value = c.get(w.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["database_available"], false);

    pg.start_again();
    wait_for_rows(&pg, &w, 501, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&c, &w, "log_buffer_size{").await != 0.0 {
        assert!(Instant::now() < deadline, "buffer gauge did not return to 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&c, &w, "dropped_logs_total{").await, 0.0);
    let messages = w.log_messages();
    assert!(messages.iter().any(|m| m.starts_with("Flushed") && m.ends_with("logs")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("Database unavailable")));
}

#[tokio::test]
async fn without_a_spool_a_full_buffer_drops_the_oldest_and_counts_every_drop() {
    let mut pg = Postgres::start();
    // Threshold 1: the first failed write opens the breaker, so the writer holds one failed
    // batch and takes no more until Postgres is back; the outcome is exact.
    let w = worker(
        &pg,
        "w-drop",
        &[
            ("LOG_SPOOL_DIR", ""),
            ("LOG_BUFFER_SIZE", "100"),
            ("LOG_BATCH_SIZE", "10"),
            ("LOG_WRITER_CONCURRENCY", "1"),
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1"),
        ],
    );
    let c = reqwest::Client::new();
    infer(&c, &w, "migrate first", None).await;
    wait_for_rows(&pg, &w, 1, Duration::from_secs(10));
    pg.stop();
    let mut last_ids = Vec::new();
    for i in 0..300 {
        let (status, body) = infer(&c, &w, &format!("overflow {i}"), None).await;
        assert_eq!(status, 200);
        if i >= 200 {
            last_ids.push(body["request_id"].as_str().unwrap().to_owned());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c, &w, "circuit_breaker_state{worker_id=\"w-drop\",dependency=\"postgres\"}").await != 1.0 {
        assert!(Instant::now() < deadline, "breaker did not open during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Memory holds the newest 100; the writer holds the batch that failed (the oldest few).
    let dropped = metric(&c, &w, "dropped_logs_total{").await;
    let held = 300.0 - 100.0 - dropped;
    assert!((1.0..=10.0).contains(&held), "dropped {dropped}");
    assert_eq!(metric(&c, &w, "log_buffer_size{").await, 100.0 + held);
    pg.start_again();
    wait_for_rows(&pg, &w, 1 + 100 + held as i64, Duration::from_secs(10));
    assert_eq!(metric(&c, &w, "dropped_logs_total{").await, dropped);
    // The newest 100 survived: the oldest were dropped.
    let kept = pg.psql(&format!(
        "SELECT count(*) FROM inference_logs WHERE request_id IN ({})",
        last_ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(",")
    ));
    assert_eq!(kept, "100");
    assert!(w.log_messages().iter().any(|m| m == "Log buffer full, dropping oldest entry"));
}

#[tokio::test]
async fn sigterm_flushes_the_request_log_before_exit() {
    let pg = Postgres::start();
    // A batch window far longer than the test: nothing is written until shutdown.
    let mut w = worker(&pg, "w-term", &[("LOG_BATCH_WINDOW_MS", "600000"), ("LOG_BATCH_SIZE", "10000")]);
    let c = reqwest::Client::new();
    for i in 0..50 {
        infer(&c, &w, &format!("flush me {i}"), None).await;
    }
    assert_eq!(pg.count_rows(), 0, "the rows are still in the writer when TERM arrives: {:#?}", w.logs.lock().unwrap());
    w.signal("TERM");
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(0), "shutdown does not wait out the batch window");
    assert_eq!(pg.count_rows(), 50, "{:#?}", w.logs.lock().unwrap());
}

#[tokio::test]
async fn with_a_spool_an_overflowing_outage_loses_nothing() {
    let mut pg = Postgres::start();
    let spool = crate::common::fresh_dir();
    let w = worker(&pg, "w-spool", &[("LOG_BUFFER_SIZE", "100"), ("LOG_SPOOL_DIR", spool.path().to_str().unwrap())]);
    let c = reqwest::Client::new();
    infer(&c, &w, "migrate first", None).await;
    wait_for_rows(&pg, &w, 1, Duration::from_secs(10));
    pg.stop();
    for i in 0..300 {
        let (status, _) = infer(&c, &w, &format!("spooled {i}"), None).await;
        assert_eq!(status, 200);
    }
    pg.start_again();
    wait_for_rows(&pg, &w, 301, Duration::from_secs(15));
    assert_eq!(metric(&c, &w, "dropped_logs_total{").await, 0.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&c, &w, "log_spool_bytes{").await != 0.0 {
        assert!(Instant::now() < deadline, "spool not emptied after replay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigkill_during_an_outage_with_a_spool_then_restart_delivers_the_rows() {
    let mut pg = Postgres::start();
    let spool = crate::common::fresh_dir();
    let spool_env = [("LOG_SPOOL_DIR", spool.path().to_str().unwrap())];
    let mut w = worker(&pg, "w-kill", &spool_env);
    let c = reqwest::Client::new();
    infer(&c, &w, "migrate first", None).await;
    wait_for_rows(&pg, &w, 1, Duration::from_secs(10));
    pg.stop();
    for i in 0..200 {
        infer(&c, &w, &format!("survives kill -9 {i}"), None).await;
    }
    // Every answered request is in the spool already. The gauge is the writer's to set, at
    // its next turn (it may be waiting on the failed write): wait until it shows them, then
    // kill at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c, &w, "log_spool_bytes{").await == 0.0 {
        assert!(Instant::now() < deadline, "log_spool_bytes never showed the spooled records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.signal("KILL");
    w.wait_exit(Duration::from_secs(5));
    pg.start_again();
    let restarted = worker(&pg, "w-kill", &spool_env);
    wait_for_rows(&pg, &restarted, 201, Duration::from_secs(15));
    assert!(restarted.log_messages().iter().any(|m| m.starts_with("Log spool from an earlier run")));
}

#[tokio::test]
async fn a_stalled_postgres_does_not_slow_requests() {
    let pg = Postgres::start();
    // The writer waits on the lock as long as it is held (no operation timeout in between).
    let w = worker(&pg, "w-stall", &[("POSTGRES_OPERATION_TIMEOUT_SECONDS", "60")]);
    let c = reqwest::Client::new();
    infer(&c, &w, "migrate first", None).await;
    wait_for_rows(&pg, &w, 1, Duration::from_secs(10));
    // Another session holds the table for 20 s: every write blocks behind it.
    let port = pg.port;
    let locker = std::thread::spawn(move || {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-c"])
            .arg("BEGIN; LOCK TABLE inference_logs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(20); COMMIT;")
            .output()
            .unwrap()
    });
    let held = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                WHERE c.relname = 'inference_logs' AND l.mode = 'AccessExclusiveLock' AND l.granted";
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql(held) != "1" {
        assert!(Instant::now() < deadline, "the lock was never taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    let writes = "db_operations_total{worker_id=\"w-stall\",operation=\"insert\",status=\"success\"}";
    let written_before = metric(&c, &w, writes).await;
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let started = Instant::now();
        let (status, _) = infer(&c, &w, &format!("while the table is locked {i}"), None).await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    // Every request was answered while the table was still locked, and the writer (once
    // its batch window is over) blocks behind the lock: none of them waited for the database.
    assert_eq!(pg.psql(held), "1", "the lock was held through all 100 requests");
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                   WHERE c.relname = 'inference_logs' AND NOT l.granted";
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql(waiting) == "0" {
        assert!(Instant::now() < deadline, "the request-log writer never waited for the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pg.psql(held), "1", "the lock was still held while the writer waited");
    assert_eq!(metric(&c, &w, writes).await, written_before, "no batch was written while the table was locked");
    assert!(slowest < Duration::from_secs(3), "a request took {slowest:?} while Postgres stalled");
    pg.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()");
    let _ = locker.join().unwrap();
    wait_for_rows(&pg, &w, 101, Duration::from_secs(15));
}
