#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! Storage that never fills: the request log partitioned by day with retention (Postgres),
//! batched deletes and incremental vacuum (SQLite), by each worker and by
//! `falcon log prune`, with a worker under load meanwhile failing and dropping nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::postgres::Postgres;
use crate::common::{Worker, falcon, fresh_dir, metric, repo};
use crate::postgres::worker as pg_worker;

/// What a load run saw.
#[derive(Debug, Default)]
struct Served {
    ok: u64,
    failed: Vec<String>,
}

/// POST /infer from `clients` connections until `stop`.
async fn load(url: String, clients: usize, stop: Arc<AtomicBool>) -> Served {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url, stop) = (client.clone(), url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut served = Served::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = serde_json::json!({ "text": format!("client {c} request {i} was fine") });
                    match client.post(&url).json(&body).timeout(Duration::from_secs(10)).send().await {
                        Ok(r) if r.status() == 200 => served.ok += 1,
                        Ok(r) => served.failed.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => served.failed.push(e.to_string()),
                    }
                }
                served
            })
        })
        .collect();
    let mut all = Served::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.ok += s.ok;
        all.failed.extend(s.failed);
    }
    all
}

/// Runs `falcon log prune ARGS` with `env`; returns its stdout, failing on a non-zero exit.
fn prune(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = falcon();
    cmd.args(["log", "prune"]).args(args).envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "falcon log prune {args:?}: {stdout}{stderr}");
    stdout.into_owned()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 00:00 UTC today minus `days`, plus 12 hours, as SQL.
const NOON_DAYS_AGO: &str = "date_trunc('day', now(), 'UTC') - d * interval '1 day' + interval '12 hours'";

/// Rows spread over 40 days, retention 30: whole day partitions are dropped, exactly the
/// rows of the last 30 days stay, and a worker under load meanwhile fails no request and
/// drops no row. Then a worker started with a shorter retention drops by itself, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_drops_whole_days_past_retention_while_a_worker_serves() {
    let pg = Postgres::start();
    let w = pg_worker(&pg, "w-ret", &[]);
    let today = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')");
    wait_until("today's partition, made by the worker at start", Duration::from_secs(20), || {
        pg.psql(&format!("SELECT to_regclass('inference_logs_p{today}') IS NOT NULL")) == "t"
    });
    let partitions = || pg.psql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'inference_logs'::regclass");
    // Today, three days ahead, and the default partition.
    assert_eq!(partitions(), "5");

    // Forty days of history, three rows a day at noon: days without a partition of their
    // own land in the default partition, never in an error.
    pg.psql(&format!(
        "INSERT INTO inference_logs (log_id, request_id, worker_id, success, processing_time_ms, model_version, created_at) \
         SELECT 'old-' || d || '-' || i, 'old-' || d || '-' || i, 'w-old', true, 1, 'v', {NOON_DAYS_AGO} \
         FROM generate_series(1, 40) d, generate_series(1, 3) i"
    ));
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs_default"), "120");
    // As if the log had been running for forty days: each of those days gets its partition.
    let env = [("DATABASE_URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = prune(&env, &["--older-than", "60d"]);
    assert_eq!(out.matches("created partition inference_logs_p").count(), 40, "{out}");
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs_default"), "0");
    assert_eq!(partitions(), "45");

    let stop = Arc::new(AtomicBool::new(false));
    let serving = tokio::spawn(load(w.url("/infer"), 4, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A dry run says what it would drop and drops nothing.
    let dry = prune(&env, &["--dry-run"]);
    assert!(dry.contains("would drop 10 partitions"), "{dry}");
    assert_eq!(partitions(), "45");
    // The default retention, 30 days.
    let out = prune(&env, &[]);
    assert!(out.contains("dropped 10 partitions"), "{out}");
    for d in 31..=40 {
        let name = pg.psql(&format!(
            "SELECT 'inference_logs_p' || to_char(date_trunc('day', now(), 'UTC') - {d} * interval '1 day', 'YYYYMMDD')"
        ));
        assert!(out.contains(&format!("dropped partition {name} ")), "{name}: {out}");
        assert_eq!(pg.psql(&format!("SELECT to_regclass('{name}') IS NULL")), "t", "{name} is gone");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let served = serving.await.unwrap();

    // Exactly the last 30 days of history stay: days 1 to 30, three rows each.
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*), count(DISTINCT created_at), \
                    min(created_at) = (SELECT {NOON_DAYS_AGO} FROM (SELECT 30 AS d) x) \
             FROM inference_logs WHERE worker_id = 'w-old'"
        )),
        "90|30|t"
    );
    assert!(served.failed.is_empty(), "requests failed during the prune: {:?}", served.failed);
    assert!(served.ok > 0);
    wait_until("a row for every request served", Duration::from_secs(30), || {
        pg.psql("SELECT count(*) FROM inference_logs WHERE worker_id = 'w-ret'") == served.ok.to_string()
    });
    let c = reqwest::Client::new();
    assert_eq!(metric(&c, &w, "dropped_logs_total{").await, 0.0);

    // A worker drops by itself at start (then hourly), and counts what it dropped.
    let w2 = pg_worker(&pg, "w-ret-2", &[("REQUEST_LOG_RETENTION_DAYS", "20")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c, &w2, "request_log_partitions_dropped_total{").await != 10.0 {
        assert!(Instant::now() < deadline, "the worker did not drop the ten days past 20");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs WHERE worker_id = 'w-old'"), "60");
    w2.wait_for_log("a log line for each dropped partition", Duration::from_secs(5), |l| {
        l["message"] == "Dropped request-log partition past retention" && l["partition"].is_string()
    });
    // The runbook's queries work on the partitioned table as written.
    pg.psql("DELETE FROM inference_logs WHERE created_at < NOW() - INTERVAL '30 days';");
    assert_ne!(pg.psql("SELECT COUNT(*) FROM inference_logs WHERE created_at > NOW() - INTERVAL '1 minute';"), "0");
}

/// Maintenance locks the table before any of its partitions, as `LOCK TABLE inference_logs`
/// does. An operator holding the table who then wants the default partition gets it: the
/// run waits for the table without holding anything else. (Reading the default partition
/// first, as it once did, made the two deadlock, and Postgres ended the run's step.)
#[tokio::test]
async fn maintenance_and_an_operator_s_table_lock_queue_instead_of_deadlocking() {
    use sqlx::Connection;
    let pg = Postgres::start();
    let url = pg.url();
    prune(&[("DATABASE_URL", &url)], &[]); // migrates and makes today's partitions
    // Rows of a day ten days ago, without a partition: the next run reads the default
    // partition for them, then gives the day its partition.
    pg.psql(&format!(
        "INSERT INTO inference_logs (log_id, request_id, worker_id, success, processing_time_ms, model_version, created_at) \
         SELECT 'stray-' || i, 'stray-' || i, 'w-old', true, 1, 'v', {NOON_DAYS_AGO} FROM generate_series(10, 10) d, generate_series(1, 3) i"
    ));
    let day = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC' - interval '10 days', 'YYYYMMDD')");
    let mut operator = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut operator).await.unwrap();
    sqlx::query("LOCK TABLE ONLY inference_logs IN ACCESS EXCLUSIVE MODE").execute(&mut operator).await.unwrap();
    let run = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || prune(&[("DATABASE_URL", &url)], &[]))
    };
    wait_until("the run waiting for a lock", Duration::from_secs(20), || {
        pg.psql("SELECT count(*) FROM pg_locks WHERE NOT granted") != "0"
    });
    // Within the run's lock_timeout (2 s): the operator's second lock does not wait on it.
    sqlx::query("SET LOCAL lock_timeout = '1500ms'").execute(&mut operator).await.unwrap();
    sqlx::query("LOCK TABLE inference_logs_default IN ACCESS EXCLUSIVE MODE").execute(&mut operator).await.unwrap();
    sqlx::query("COMMIT").execute(&mut operator).await.unwrap();
    let out = run.await.unwrap();
    assert!(out.contains(&format!("created partition inference_logs_p{day}")), "{out}");
    assert_eq!(pg.psql(&format!("SELECT count(*) FROM inference_logs_p{day}")), "3");
}

/// A table from before partitioning becomes the partition `inference_logs_legacy` without
/// copying or losing a row; its rows dated after today move to their day's partition.
#[tokio::test]
async fn an_unpartitioned_log_is_converted_without_losing_a_row() {
    let pg = Postgres::start();
    // The schema of the build before partitioning.
    for n in ["0001_inference_logs", "0002_log_id", "0003_brin_created_at", "0004_api_key_id"] {
        let sql =
            std::fs::read_to_string(repo().join(format!("crates/falcon-app/migrations/postgres/{n}.sql"))).unwrap();
        pg.psql(&sql);
    }
    // 42 days of rows (41 past retention's 30) and three dated two days ahead (a skewed clock).
    pg.psql(&format!(
        "INSERT INTO inference_logs (log_id, request_id, worker_id, success, processing_time_ms, model_version, created_at) \
         SELECT 'old-' || d || '-' || i, 'old-' || d || '-' || i, 'w-old', true, 1, 'v', {NOON_DAYS_AGO} \
         FROM generate_series(-2, 41) d, generate_series(1, 3) i WHERE d <> -1"
    ));
    assert_eq!(pg.count_rows(), 129);

    let w = pg_worker(&pg, "w-conv", &[]);
    let ahead = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC' + interval '2 days', 'YYYYMMDD')");
    wait_until("the partition for two days ahead", Duration::from_secs(30), || {
        pg.psql(&format!("SELECT to_regclass('inference_logs_p{ahead}') IS NOT NULL")) == "t"
    });
    assert_eq!(pg.count_rows(), 129, "no row lost, none deleted one by one");
    // Later migrations reach the old rows through the parent: a model_name, NULL (the one model).
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs WHERE model_name IS NULL"), "129");
    assert_eq!(
        pg.psql(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.relname = 'inference_logs_legacy'"
        ),
        pg.psql(
            "SELECT 'FOR VALUES FROM (MINVALUE) TO (''' || (date_trunc('day', now(), 'UTC') + interval '1 day') || ''')'"
        ),
        "the old table covers everything before tomorrow"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs_legacy"), "126");
    assert_eq!(pg.psql(&format!("SELECT count(*) FROM inference_logs_p{ahead}")), "3");
    assert_eq!(pg.psql("SELECT count(*) FROM inference_logs_default"), "0");
    // Retention waits for the old table's newest day: it goes whole, or not at all.
    let out = prune(&[("DATABASE_URL", &pg.url())], &["--older-than", "30d"]);
    assert!(out.contains("dropped 0 partitions"), "{out}");
    assert_eq!(pg.count_rows(), 129);

    // New rows go in; a record written twice is still one row.
    let c = reqwest::Client::new();
    crate::common::infer(&c, &w, "after the conversion", None).await;
    wait_until("the new row", Duration::from_secs(10), || pg.count_rows() == 130);
    pg.psql(
        "INSERT INTO inference_logs (log_id, request_id, worker_id, success, processing_time_ms, model_version, created_at) \
         SELECT log_id, request_id, worker_id, success, processing_time_ms, model_version, created_at \
         FROM inference_logs WHERE worker_id = 'w-conv' ON CONFLICT (log_id, created_at) DO NOTHING",
    );
    assert_eq!(pg.count_rows(), 130);
    assert_ne!(
        pg.psql("SELECT pg_get_serial_sequence('inference_logs', 'id')"),
        "",
        "the id sequence outlives the old table"
    );
}

/// The embedded log: rows past retention are deleted in batches while a worker serves, an
/// older file is converted to incremental vacuum, and the freed pages go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_rows_past_retention_and_gives_the_pages_back() {
    let dir = fresh_dir();
    let db = dir.path().join("data/request_log.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    // A file from before incremental vacuum: a table already there, so the mode stays off.
    let made = std::process::Command::new("sqlite3").arg(&db).arg("CREATE TABLE older_build (x);").status().unwrap();
    assert!(made.success());
    let w = Worker::start_in(dir.path(), &[]);
    let c = reqwest::Client::new();
    // The schema is there once the worker's first maintenance run has completed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c, &w, "request_log_maintenance_last_success_timestamp_seconds{").await == 0.0 {
        assert!(Instant::now() < deadline, "the worker's maintenance did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let pragma = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("PRAGMA {name}"))).fetch_one(&pool).await.unwrap()
        }
    };
    assert_eq!(pragma("auto_vacuum").await, 0);
    // Forty days of history, 500 rows a day at noon, with some bulk to them.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19999) \
         INSERT INTO inference_logs (log_id, request_id, worker_id, success, processing_time_ms, model_version, error_message, created_at) \
         SELECT 'old-' || i, 'old-' || i, 'w-old', 1, 1.0, 'v', printf('%.300c', 'x'), \
                strftime('%Y-%m-%dT12:00:00.000000Z', 'now', '-' || (1 + i % 40) || ' days') FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pages_before = pragma("page_count").await;

    let stop = Arc::new(AtomicBool::new(false));
    let serving = tokio::spawn(load(w.url("/infer"), 4, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = db.to_str().unwrap();
    let dry = prune(&[("REQUEST_LOG_SQLITE_PATH", path)], &["--dry-run"]);
    assert!(dry.contains("would delete 5000 rows"), "{dry}");
    let out = prune(&[("REQUEST_LOG_SQLITE_PATH", path)], &[]);
    assert!(out.contains("deleted 5000 rows"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let served = serving.await.unwrap();
    assert!(served.failed.is_empty(), "requests failed during the prune: {:?}", served.failed);

    let kept: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT created_at) FROM inference_logs WHERE worker_id = 'w-old' \
         AND created_at >= strftime('%Y-%m-%dT00:00:00Z', 'now', '-30 days')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE worker_id = 'w-old'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((kept, all), ((15_000, 30), 15_000), "exactly the last 30 days stay");
    assert_eq!(pragma("auto_vacuum").await, 2, "converted to incremental vacuum");
    assert_eq!(pragma("freelist_count").await, 0, "the freed pages went back to the file system");
    assert!(pragma("page_count").await < pages_before, "the file shrank");
    crate::common::wait_for_sqlite_rows(&pool, 15_000 + served.ok as i64, Duration::from_secs(30)).await;
    assert_eq!(metric(&c, &w, "dropped_logs_total{").await, 0.0);
    drop(w);

    // The worker does the same by itself at start, and counts it.
    let w = Worker::start_in(dir.path(), &[("REQUEST_LOG_RETENTION_DAYS", "20")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c, &w, "request_log_rows_pruned_total{").await != 5000.0 {
        assert!(Instant::now() < deadline, "the worker did not delete the ten days past 20");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE worker_id = 'w-old'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(all, 10_000);
    assert_eq!(pragma("freelist_count").await, 0, "an incremental vacuum gave the pages back");
}
