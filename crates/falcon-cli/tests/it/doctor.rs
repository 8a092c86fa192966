#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! `falcon doctor` against real faults: a healthy native stack, Redis killed, Postgres
//! stopped, a database slowed by a lock under load, the memory drill, a worker that
//! cannot start, and server errors. Each checks the incident, the exit code and one command.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::postgres::Postgres;
use crate::common::redis::RedisServer;
use crate::common::stack::Stack;
use crate::common::{Worker, falcon, free_port, infer};

/// Runs `falcon doctor ARGS --json`; (exit code, report).
fn doctor(args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let mut cmd = falcon();
    cmd.arg("doctor").args(args).args(["--json", "--interval", "1.5"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// The findings for `incident`.
fn findings(report: &Value, incident: u64) -> Vec<&Value> {
    report["findings"].as_array().unwrap().iter().filter(|f| f["incident"] == incident).collect()
}

fn commands(finding: &Value) -> Vec<&str> {
    finding["commands"].as_array().unwrap().iter().filter_map(Value::as_str).collect()
}

/// A few requests, so the scrapes have something to count.
async fn traffic(w: &Worker, n: usize, tag: &str) {
    let c = reqwest::Client::new();
    for i in 0..n {
        infer(&c, w, &format!("{tag} {i}: a fine day"), None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_native_stack_exits_0_with_no_findings_and_no_colour_off_a_terminal() {
    let stack = Stack::up();
    let c = reqwest::Client::new();
    for i in 0..30 {
        let r = c.post(stack.url("/infer")).json(&serde_json::json!({ "text": format!("healthy {i}") })).send().await;
        assert_eq!(r.unwrap().status(), 200);
    }
    let dir = stack.ctl.dir.to_str().unwrap();
    let (code, report) = doctor(&["--stack", "native"], &[("STACK_DIR", dir)]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["status"], "healthy");
    assert!(report["findings"].as_array().unwrap().is_empty(), "{report:#}");
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|w| w["alive"] == true && w["ready"] == true), "{report:#}");
    assert_eq!(report["redis"]["error"], Value::Null, "{report:#}");
    assert_eq!(report["postgres"]["error"], Value::Null, "{report:#}");
    assert_eq!(report["load_balancer"]["health"]["status"], 200);

    // The table for people: no escape codes when stdout is not a terminal.
    let out =
        falcon().args(["doctor", "--stack", "native", "--interval", "0.5"]).env("STACK_DIR", dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("No findings.\n\nstatus: healthy (exit 0)") && text.contains("worker-3"), "{text}");
    assert!(!text.contains('\x1b'), "colour off a terminal: {text}");
}

#[tokio::test]
async fn redis_killed_is_incident_4_critical_with_a_restart_command() {
    let mut redis = RedisServer::start();
    let w = Worker::start(&[("REDIS_URL", &redis.url()), ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2")]);
    traffic(&w, 5, "before").await;
    redis.kill();
    traffic(&w, 10, "during").await;
    let url = w.url("");
    let (code, report) = doctor(&["--url", &url, "--redis", &redis.url(), "--deployment", "compose"], &[]);
    assert_eq!(code, 2, "{report:#}");
    let f = findings(&report, 4);
    assert_eq!(f.len(), 1, "{report:#}");
    assert_eq!(f[0]["severity"], "critical");
    assert!(f[0]["evidence"].to_string().contains("(open)"), "the breaker is named: {report:#}");
    assert!(commands(f[0]).contains(&"docker compose restart redis"), "{report:#}");
}

#[tokio::test]
async fn postgres_stopped_is_incident_5_and_names_the_spool() {
    let mut pg = Postgres::start();
    let w = crate::postgres::worker(&pg, "doctor-pg", &[("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2")]);
    traffic(&w, 5, "before").await;
    pg.stop();
    traffic(&w, 50, "during").await;
    let url = w.url("");
    // A password in the URL is never printed.
    let db = format!("postgres://postgres:hunter2@127.0.0.1:{}/postgres", pg.port);
    let (code, report) = doctor(&["--url", &url, "--database", &db, "--deployment", "systemd"], &[]);
    assert_eq!(code, 2, "{report:#}");
    let f = findings(&report, 5);
    assert_eq!(f.len(), 1, "{report:#}");
    assert_eq!(f[0]["severity"], "critical");
    assert!(f[0]["cause"].as_str().unwrap().contains("spooled to disk"), "{report:#}");
    assert!(f[0]["evidence"].to_string().contains("spool"), "{report:#}");
    assert!(commands(f[0]).contains(&"sudo systemctl restart postgresql"), "{report:#}");
    assert!(!report.to_string().contains("hunter2"), "a password was printed: {report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_slowed_by_a_lock_under_load_is_incident_1_with_the_database_as_cause() {
    let pg = Postgres::start();
    let w = crate::postgres::worker(&pg, "doctor-slow", &[("LOG_BATCH_WINDOW_MS", "50")]);
    traffic(&w, 3, "warm").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.count_rows() < 3 {
        assert!(Instant::now() < deadline, "the first rows never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Another session holds the table: every request-log write waits on the lock. Locking
    // the partitioned table can deadlock with the worker's own partition maintenance (it
    // locks a partition, then the parent); Postgres then ends one of the two, and when it is
    // the holder, a new one takes its place.
    let hold = || {
        std::process::Command::new("psql")
            .arg(pg.url())
            .args(["-c", "BEGIN; LOCK TABLE inference_logs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut holder = hold();
    // Load that keeps going through the doctor's window.
    let url = w.url("/infer");
    let load = tokio::spawn(async move {
        let c = reqwest::Client::new();
        for i in 0..400 {
            let _ = c.post(&url).json(&serde_json::json!({ "text": format!("slow db {i}") })).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Wait for what the doctor looks for: the lock holder's query running for more than its
    // 5 s threshold, and a request-log write waiting on the lock.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = pg.psql(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle' \
               AND query LIKE '%pg_sleep(60)%' AND query_start < now() - interval '6 seconds') \
             AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock')",
        );
        if seen == "t" {
            break;
        }
        if let Some(status) = holder.try_wait().unwrap() {
            eprintln!("the lock holder ended early ({status}); taking the lock again");
            holder = hold();
        }
        assert!(Instant::now() < deadline, "no long lock holder with a waiting writer after 40 s ({seen})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let base = w.url("");
    let db = pg.url();
    let (code, report) = tokio::task::spawn_blocking(move || {
        doctor(&["--url", &base, "--database", &db, "--deployment", "native"], &[])
    })
    .await
    .unwrap();
    load.abort();
    assert!(code >= 1, "{report:#}");
    let f = findings(&report, 1);
    let slow_db = f.iter().find(|f| f["title"].as_str().unwrap().contains("database is slow"));
    let slow_db = slow_db.unwrap_or_else(|| panic!("no slow-database finding: {report:#}"));
    let evidence = slow_db["evidence"].to_string();
    assert!(evidence.contains("pg_sleep") && evidence.contains("waiting on locks"), "{report:#}");
    assert!(commands(slow_db).iter().any(|c| c.contains("pg_stat_activity")), "{report:#}");
    // Answers stayed fast: the database's slowness is not the requests'.
    let p95 = report["workers"][0]["p95_seconds"].as_f64().unwrap_or(0.0);
    assert!(p95 < 0.25, "request p95 {p95}: {report:#}");
    // Let go of the table: the worker flushes and stops quickly.
    let _ = holder.kill();
    let _ = holder.wait();
}

#[tokio::test]
async fn the_memory_drill_is_incident_6_and_the_fix_is_printed() {
    let w = Worker::start(&[("DEBUG_MEMORY_GROWTH", "true"), ("DEBUG_MEMORY_GROWTH_MB_PER_REQUEST", "1")]);
    traffic(&w, 5, "leak").await;
    let url = w.url("");
    let (code, report) = doctor(&["--url", &url, "--deployment", "kubernetes"], &[]);
    assert_eq!(code, 2, "{report:#}");
    let f = findings(&report, 6);
    assert_eq!(f.len(), 1, "{report:#}");
    assert!(
        commands(f[0]).contains(&"kubectl -n falcon set env deployment/falcon-worker DEBUG_MEMORY_GROWTH=false"),
        "{report:#}"
    );
}

#[test]
fn a_worker_that_cannot_start_is_a_crash_loop_with_its_error_line() {
    // A native-stack directory whose worker-1 failed at start-up: missing model.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("worker-1.log")).unwrap();
    let status = falcon()
        .arg("serve")
        .env("PORT", port.to_string())
        .env("MODEL_PATH", "/nonexistent/classifier.bin")
        .stdout(log)
        .status()
        .unwrap();
    assert!(!status.success());
    std::fs::write(dir.path().join("stack.env"), format!("STACK_WORKER_PORTS=\"{port}\"\n")).unwrap();
    let (code, report) = doctor(&["--stack", "native"], &[("STACK_DIR", dir.path().to_str().unwrap())]);
    assert_eq!(code, 2, "{report:#}");
    let f = findings(&report, 3);
    assert_eq!(f.len(), 1, "{report:#}");
    let cause = f[0]["cause"].as_str().unwrap();
    assert!(cause.contains("last ERROR line") && cause.contains("nonexistent"), "{report:#}");
    assert!(f[0]["evidence"].to_string().contains("not running"), "{report:#}");
    let dir_s = dir.path().to_str().unwrap();
    assert!(
        commands(f[0]).contains(&format!("STACK_DIR={dir_s} scripts/stack.sh restart worker-1").as_str()),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_incident_2_naming_the_error_type() {
    // An inference deadline no model meets: requests that wait at all time out.
    let w = Worker::start(&[("INFERENCE_TIMEOUT_SECONDS", "0.000001"), ("CACHE_ENABLED", "false")]);
    let url = w.url("/infer");
    let load = tokio::spawn(async move {
        let c = reqwest::Client::new();
        for round in 0..200 {
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let (c, url) = (c.clone(), url.clone());
                    tokio::spawn(async move {
                        let body = serde_json::json!({ "text": format!("errors {round} {i}") });
                        let _ = c.post(&url).json(&body).send().await;
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
    });
    let base = w.url("");
    let (code, report) = tokio::task::spawn_blocking(move || doctor(&["--url", &base], &[])).await.unwrap();
    load.abort();
    assert!(code >= 1, "{report:#}");
    let f = findings(&report, 2);
    assert_eq!(f.len(), 1, "{report:#}");
    assert!(f[0]["evidence"].to_string().contains("inference_timeout"), "{report:#}");
    assert!(f[0]["cause"].as_str().unwrap().contains("INFERENCE_TIMEOUT_SECONDS"), "{report:#}");
    // A worker run by hand (no --deployment, no docker, no stack here): its own commands.
    assert_eq!(report["deployment"], "local", "{report:#}");
    assert!(commands(f[0]).iter().any(|c| c.starts_with("jq -c 'select(.level==\"ERROR\")' falcon.log")), "{report:#}");
    assert!(!report.to_string().contains("docker"), "{report:#}");
}

#[test]
fn a_bad_command_line_says_so_once_and_exits_2() {
    let out = falcon().args(["doctor", "--url", "https://example.com"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain http://"), "{err}");
}

#[test]
fn watch_runs_again_until_interrupted() {
    let w = Worker::start(&[]);
    let child = falcon()
        .args(["doctor", "--url", &w.url(""), "--json", "--interval", "0.2", "--watch", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Three reports, as they come; then Ctrl-C.
    let mut child = child;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if line.contains("\"exit_code\"") {
                let _ = tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    for i in 0..3 {
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("only {i} reports within 30 s each: {}", reader.join().unwrap());
        }
    }
    let interrupted = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success(), "kill -INT failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("doctor --watch still runs 10 s after Ctrl-C: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap();
    assert!(text.matches("\"exit_code\"").count() >= 3, "{text}");
    assert_eq!(status.code(), Some(0), "the last report's status: healthy: {text}");
}
