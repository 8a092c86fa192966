#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! The compose topology run natively (scripts/stack.sh): real nginx in front of three
//! workers, a throwaway Redis and Postgres. A worker killed with SIGKILL or stopped with
//! SIGTERM under steady load costs the client nothing; the request log's rows match.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::repo;
use crate::common::stack::Stack;
use serde_json::Value;

/// One answer seen by the load generator.
#[derive(Clone)]
struct Answer {
    at: Duration,
    ok: bool,
    detail: String,
    worker_id: String,
    request_id: String,
}

/// Sends POST /infer through nginx at a steady `rate` per second for `length`, running
/// `drill` on another thread meanwhile; returns every answer.
async fn steady_load(
    stack: &Stack,
    rate: u32,
    length: Duration,
    tag: &str,
    drill: impl FnOnce() + Send + 'static,
) -> Vec<Answer> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let drill = std::thread::spawn(drill);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < length {
        tick.tick().await;
        i += 1;
        let (client, answers, url) = (client.clone(), answers.clone(), stack.url("/infer"));
        let text = format!("{tag} request {i}: the service was fine today");
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&serde_json::json!({ "text": text })).send().await;
            let answer = match r {
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    Answer {
                        at: started.elapsed(),
                        ok: status == 200 && body["prediction"].is_string(),
                        detail: format!("{status} {body}"),
                        worker_id: body["worker_id"].as_str().unwrap_or_default().to_owned(),
                        request_id: body["request_id"].as_str().unwrap_or_default().to_owned(),
                    }
                }
                Err(e) => Answer {
                    at: started.elapsed(),
                    ok: false,
                    detail: e.to_string(),
                    worker_id: String::new(),
                    request_id: String::new(),
                },
            };
            answers.lock().unwrap().push(answer);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drill.join().unwrap();
    std::mem::take(&mut *answers.lock().unwrap())
}

fn per_worker(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers.iter().filter(|a| a.ok) {
        *m.entry(a.worker_id.clone()).or_default() += 1;
    }
    m
}

fn assert_no_failures(answers: &[Answer], what: &str) {
    let failed: Vec<(Duration, &str)> = answers.iter().filter(|a| !a.ok).map(|a| (a.at, a.detail.as_str())).collect();
    assert!(failed.is_empty(), "{what}: {} of {} requests failed: {failed:#?}", failed.len(), answers.len());
}

/// Drills run one after the other on one stack (they share the row count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_stack_spreads_load_and_loses_no_request_when_a_worker_dies_or_drains() {
    let stack = Stack::up();
    let client = reqwest::Client::new();
    let mut sent_ok: Vec<String> = Vec::new();

    // 1. Requests spread over all three workers.
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let r = client
            .post(stack.url("/infer"))
            .json(&serde_json::json!({ "text": format!("spread {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let header_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["request_id"], header_id.as_str(), "one id end to end: nginx's");
        assert_eq!(header_id.len(), 32, "nginx's $request_id");
        seen.insert(body["worker_id"].as_str().unwrap().to_owned());
        sent_ok.push(header_id);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["worker-1", "worker-2", "worker-3"]);

    // `make check-health STACK=native` and `make demo STACK=native` work against it.
    let helper = |script: &str| {
        let out = Command::new(repo().join("scripts").join(script))
            .env("STACK", "native")
            .env("STACK_DIR", &stack.ctl.dir)
            .env_remove("BASE_URL")
            .env_remove("WORKER_URLS")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, said) = helper("check-health.sh");
    assert!(ok && said.contains("all healthy") && said.matches("  OK  ").count() == 9, "{said}");
    let (ok, said) = helper("demo.sh");
    assert!(ok && said.contains("\"idempotency_hit\": true") && said.contains("validation_error"), "{said}");
    // The demo's 7 requests (one a validation error, one a replay) made one row each.
    let demo_rows = 7;
    stack.wait_rows(sent_ok.len() as i64 + demo_rows);
    let before_drills: BTreeSet<String> =
        stack.psql("SELECT request_id FROM inference_logs").lines().map(str::to_owned).collect();

    // 2. A rolling restart: SIGTERM worker-1 under load, then start it again.
    let ctl = stack.ctl.clone();
    let answers = steady_load(&stack, 100, Duration::from_secs(12), "sigterm", move || {
        std::thread::sleep(Duration::from_secs(3));
        ctl.run(&["stop", "worker-1"]);
        std::thread::sleep(Duration::from_secs(3));
        ctl.run(&["start", "worker-1"]);
    })
    .await;
    assert_no_failures(&answers, "SIGTERM drill");
    sent_ok.extend(answers.iter().map(|a| a.request_id.clone()));
    stack.wait_rows(sent_ok.len() as i64 + demo_rows);
    let sigterm_rows = stack.settled_rows() - demo_rows;
    println!(
        "SIGTERM drill: {} requests at 100/s, 0 failed, per worker {:?}; rows {sigterm_rows} = successful responses {}",
        answers.len(),
        per_worker(&answers),
        sent_ok.len()
    );
    assert_eq!(sigterm_rows, sent_ok.len() as i64, "a drained worker flushes every row before it exits");

    // 3. kill -9 worker-2 under load for 20 s, restart it, and it takes traffic again.
    let ctl = stack.ctl.clone();
    let answers = steady_load(&stack, 100, Duration::from_secs(20), "sigkill", move || {
        std::thread::sleep(Duration::from_secs(5));
        ctl.run(&["kill", "worker-2"]);
        std::thread::sleep(Duration::from_secs(7));
        ctl.run(&["start", "worker-2"]);
    })
    .await;
    assert_no_failures(&answers, "kill -9 drill");
    sent_ok.extend(answers.iter().map(|a| a.request_id.clone()));
    // nginx tries a failed upstream again only after its fail_timeout (5 s): keep asking,
    // up to 30 s, until the restarted worker-2 answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = answers.iter().any(|a| a.worker_id == "worker-2" && a.at > Duration::from_secs(12));
    while !back {
        assert!(Instant::now() < deadline, "worker-2 took no traffic after its restart: {:?}", per_worker(&answers));
        let r = client
            .post(stack.url("/infer"))
            .json(&serde_json::json!({ "text": "is worker-2 back" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        sent_ok.push(body["request_id"].as_str().unwrap().to_owned());
        back = body["worker_id"] == "worker-2";
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port2 = format!("127.0.0.1:{}", stack.ctl.worker_ports[1]);
    let errors = stack.nginx_error_log();
    assert!(
        errors.lines().any(|l| l.contains(&port2) && l.contains("upstream")),
        "nginx logged no failure for worker-2 ({port2}):\n{errors}"
    );
    let rows = stack.settled_rows() - demo_rows;
    let unique: BTreeSet<&String> = sent_ok.iter().collect();
    assert_eq!(unique.len(), sent_ok.len(), "every response had its own request id");
    let stored: BTreeSet<String> =
        stack.psql("SELECT request_id FROM inference_logs").lines().map(str::to_owned).collect();
    let lost = unique.iter().filter(|id| !stored.contains(id.as_str())).count();
    let twice: i64 = stack.psql("SELECT count(*) - count(DISTINCT request_id) FROM inference_logs").parse().unwrap();
    println!(
        "kill -9 drill: {} requests at 100/s over 20 s, 0 failed, per worker {:?}; rows {rows}, successful responses {}, answered requests without a row: {lost}, request ids with two rows: {twice}",
        answers.len(),
        per_worker(&answers),
        sent_ok.len()
    );
    // The killed worker journaled every record before answering; its restart replays them.
    assert_eq!(lost, 0, "answered requests without a row");
    // A request the killed worker had journaled but not yet answered was retried by nginx
    // on another worker with the same id: two handlers ran it, two rows. Only those.
    assert!((0..=5).contains(&twice), "{twice} request ids with two rows");

    // Every row's request id is an id a client received.
    assert!(
        stored.iter().all(|id| unique.contains(id) || before_drills.contains(id)),
        "a row with an id no client received"
    );
}
