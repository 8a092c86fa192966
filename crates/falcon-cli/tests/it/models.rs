//! A worker serving a model repository: the built-in sentiment model and a model trained by
//! `falcon train --csv`, each with its own labels, statistics and queue; the repository's
//! load and unload under load, with no failed request on the other model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Worker, falcon, fresh_dir, post, wait_for_sqlite_rows};

/// Trains the topics model into `dir` and writes a repository naming it and the built-in
/// sentiment model (a relative path: from the repository file's directory).
fn repository(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("topics.csv");
    std::fs::write(&data, crate::train::topics_csv()).unwrap();
    let out = falcon()
        .args(["train", "--csv", data.to_str().unwrap(), "--text-column", "body", "--out"])
        .arg(dir.join("topics.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "train: {}", String::from_utf8_lossy(&out.stderr));
    let file = dir.join("models.toml");
    std::fs::write(
        &file,
        "default = \"sentiment\"\n\n[models.sentiment]\nbackend = \"tfidf\"\n\n[models.topics]\nbackend = \"tfidf\"\npath = \"topics.bin\"\n",
    )
    .unwrap();
    file
}

async fn ask(c: &reqwest::Client, w: &Worker, body: Value) -> (u16, Value) {
    let r = post(c, &w.url("/infer"), body, &[]).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn admin(c: &reqwest::Client, w: &Worker, path: &str) -> (u16, Value) {
    let r = c.post(w.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_of_two_models_serves_each_with_its_own_labels_and_loads_and_unloads_under_load() {
    let dir = fresh_dir();
    let file = repository(dir.path());
    let db = dir.path().join("log.db");
    let w = Worker::start(&[
        ("MODEL_REPOSITORY", file.to_str().unwrap()),
        ("REQUEST_LOG_SQLITE_PATH", db.to_str().unwrap()),
    ]);
    let c = reqwest::Client::new();

    // Each model answers with its own labels; the answer names it.
    let (status, a) = ask(&c, &w, json!({"text": "I love this product"})).await;
    assert_eq!((status, &a["model"], &a["prediction"]), (200, &json!("sentiment"), &json!("positive")), "{a}");
    let (status, t) = ask(&c, &w, json!({"text": "where is my parcel, the delivery is late", "model": "topics"})).await;
    assert_eq!((status, &t["model"], &t["prediction"]), (200, &json!("topics"), &json!("shipping")), "{t}");
    assert_ne!(a["model_version"], t["model_version"]);
    let batch: Value =
        post(&c, &w.url("/infer/batch"), json!({"texts": ["refund my payment"], "model": "topics"}), &[])
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(batch["results"][0]["prediction"], "billing", "{batch}");
    let (status, e) = ask(&c, &w, json!({"text": "hello", "model": "nope"})).await;
    assert_eq!((status, &e["error_type"]), (404, &json!("model_not_found")), "{e}");

    // OIP: both models, with their own metadata and inference.
    let meta: Value = c.get(w.url("/v2/models/topics")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["parameters"]["labels"], json!(["billing", "login", "shipping"]), "{meta}");
    let oip =
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["I forgot my password"]}]});
    let r: Value = post(&c, &w.url("/v2/models/topics/infer"), oip, &[]).await.json().await.unwrap();
    assert_eq!((&r["model_name"], &r["outputs"][0]["data"][0]), (&json!("topics"), &json!("login")), "{r}");
    let index: Value = c.post(w.url("/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        index.as_array().unwrap().iter().map(|m| (m["name"].clone(), m["state"].clone())).collect::<Vec<_>>(),
        [(json!("sentiment"), json!("READY")), (json!("topics"), json!("READY"))]
    );

    // Statistics agree with what each model was asked: topics 3 requests (4 texts counted
    // once each, the OIP request's text included), sentiment 1.
    let stats: Value = c.get(w.url("/v2/models/stats")).send().await.unwrap().json().await.unwrap();
    let of = |name: &str| stats["model_stats"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
    assert_eq!(of("topics")["inference_stats"]["success"]["count"], 3, "{stats}");
    assert_eq!(of("topics")["inference_count"], 3, "{stats}");
    assert_eq!(of("sentiment")["inference_stats"]["success"]["count"], 1, "{stats}");
    assert_eq!(of("sentiment")["inference_count"], 1, "{stats}");

    // Under load on the default model, unload topics (404 from then on), then load it again
    // (200 again): not one failed request on sentiment throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (c, url, stop, ok, failed) = (c.clone(), w.url("/infer"), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = post(&c, &url, json!({"text": format!("client {i} says this is fine {n}")}), &[]).await;
                    let counter = if r.status() == 200 { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Each step below waits for 20 more answers on sentiment, so the load overlaps each one.
    let answered = |more: u64| {
        let ok = Arc::clone(&ok);
        async move {
            let target = ok.load(Ordering::Relaxed) + more;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < target {
                assert!(std::time::Instant::now() < deadline, "the load stalled below {target} answers");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    answered(20).await;
    let (status, body) = admin(&c, &w, "/v2/repository/models/topics/unload").await;
    assert_eq!((status, &body["action"]), (200, &json!("unloaded")), "{body}");
    let (status, e) = ask(&c, &w, json!({"text": "refund", "model": "topics"})).await;
    assert_eq!((status, &e["error_type"]), (404, &json!("model_not_found")), "{e}");
    let r = c.get(w.url("/v2/models/topics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let index: Value = c.post(w.url("/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    assert_eq!(index[1], json!({"name": "topics", "state": "UNAVAILABLE", "reason": "unloaded"}), "{index}");
    answered(20).await;
    let (status, body) = admin(&c, &w, "/v2/repository/models/topics/load").await;
    assert_eq!((status, &body["action"]), (200, &json!("loaded")), "{body}");
    let (status, t) = ask(&c, &w, json!({"text": "refund my payment", "model": "topics"})).await;
    assert_eq!((status, &t["prediction"]), (200, &json!("billing")), "{t}");
    // Loading a served model reloads it; the default one cannot be unloaded.
    let (status, body) = admin(&c, &w, "/v2/repository/models/topics/load").await;
    assert_eq!((status, &body["action"]), (200, &json!("reloaded")), "{body}");
    let (status, body) = admin(&c, &w, "/v2/repository/models/sentiment/unload").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = admin(&c, &w, "/v2/repository/models/nope/load").await;
    assert_eq!(status, 404, "{body}");
    answered(20).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "the load ran: {ok} answered");
    assert_eq!(failed, 0, "{failed} of {} sentiment requests failed while topics was unloaded and loaded", ok + failed);
    let ready: Value = c.get(w.url("/readyz")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&Value> = ready["models"].as_array().unwrap().iter().map(|m| &m["name"]).collect();
    assert_eq!(names, [&json!("sentiment"), &json!("topics")], "{ready}");

    // The metrics agree per model: topics' 4 answers (and its 404 while unloaded is counted
    // without a model, as the unknown model's is), sentiment's 1 + the load's.
    let m = |series: &'static str| crate::common::metric(&c, &w, series);
    assert_eq!(m("inference_requests_total{status=\"success\",model=\"topics\"}").await, 4.0);
    assert_eq!(m("inference_requests_total{status=\"success\",model=\"sentiment\"}").await, 1.0 + ok as f64);
    assert_eq!(m("inference_requests_total{status=\"error\",model=\"topics\"}").await, 0.0);
    assert_eq!(m("model_predictions_total{model=\"topics\"}").await, 4.0);
    assert_eq!(m("model_predictions_total{model=\"sentiment\"}").await, 1.0 + ok as f64);
    assert_eq!(m("model_info{model=\"topics\"}").await, 1.0, "loaded again");

    // Each row names its model: sentiment's 1 + the load's; topics' 4 answers and its 404
    // while unloaded; the unknown model's 404 under the name asked for.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    wait_for_sqlite_rows(&pool, 1 + ok as i64 + 5 + 1, Duration::from_secs(10)).await;
    let rows: Vec<(Option<String>, bool, Option<String>, i64)> = sqlx::query_as(
        "SELECT model_name, success, error_type, count(*) FROM inference_logs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |m: &str, ok: bool, e: Option<&str>, n: u64| (Some(m.to_owned()), ok, e.map(str::to_owned), n as i64);
    assert_eq!(
        rows,
        [
            row("nope", false, Some("model_not_found"), 1),
            row("sentiment", true, None, 1 + ok),
            row("topics", false, Some("model_not_found"), 1),
            row("topics", true, None, 4),
        ]
    );
    let versions: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT model_name, model_version FROM inference_logs WHERE success ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        [
            ("sentiment".into(), a["model_version"].as_str().unwrap().into()),
            ("topics".into(), t["model_version"].as_str().unwrap().into())
        ]
    );
}

/// A repository that cannot be served stops the start with one message naming the model.
#[test]
fn a_bad_repository_stops_the_start_naming_the_model() {
    let dir = fresh_dir();
    let cases = [
        ("[models.a]\nbackend = \"onnx\"\n", 2, "model \"a\": unknown backend \"onnx\""),
        ("default = \"b\"\n[models.a]\nbackend = \"tfidf\"\n", 2, "default model \"b\" is not among the models"),
        ("[models.a]\nbackend = \"tfidf\"\npath = \"missing.bin\"\n", 1, "model \"a\" of"),
    ];
    for (text, code, expected) in cases {
        let file = dir.path().join("models.toml");
        std::fs::write(&file, text).unwrap();
        let out = falcon().arg("serve").env("MODEL_REPOSITORY", &file).env("PORT", "0").output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let errors: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &Value| l["level"] == "ERROR")
            .collect();
        assert_eq!(errors.len(), 1, "one message: {stdout}");
        assert!(errors[0]["error"].as_str().unwrap().contains(expected), "{text}: {}", errors[0]);
    }
}

/// `falcon predict --model` asks a model of the repository.
#[test]
fn predict_asks_the_model_it_names() {
    let dir = fresh_dir();
    let file = repository(dir.path());
    let out = falcon()
        .args(["predict", "--model", "topics", "I forgot my password"])
        .env("MODEL_REPOSITORY", &file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&answer["model"], &answer["prediction"]), (&json!("topics"), &json!("login")), "{answer}");
    let out = falcon().args(["predict", "--model", "nope", "hi"]).env("MODEL_REPOSITORY", &file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model \"nope\""));
}

/// tritonclient[http] lists both models, infers each, reads their statistics, and unloads
/// and loads one, with its own calls.
#[tokio::test]
async fn tritonclient_lists_both_models_infers_each_and_unloads_and_loads() {
    let python = crate::common::repo().join(".tools/venv/bin/python");
    assert!(python.exists(), "scripts/ensure-test-deps.sh installs tritonclient into .tools/venv");
    let dir = fresh_dir();
    let file = repository(dir.path());
    let w = Worker::start(&[("MODEL_REPOSITORY", file.to_str().unwrap())]);
    let script = crate::common::repo().join("crates/falcon-cli/tests/it/assets/oip_repository.py");
    let addr = w.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(addr)
            .args(["sentiment=I love this product", "topics=I forgot my password"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let index: Vec<(&Value, &Value)> =
        seen["index"].as_array().unwrap().iter().map(|m| (&m["name"], &m["state"])).collect();
    assert_eq!(index, [(&json!("sentiment"), &json!("READY")), (&json!("topics"), &json!("READY"))], "{seen}");
    assert_eq!(seen["answers"]["sentiment"], json!({"model": "sentiment", "label": "positive"}), "{seen}");
    assert_eq!(seen["answers"]["topics"], json!({"model": "topics", "label": "login"}), "{seen}");
    for model in ["sentiment", "topics"] {
        let stats = &seen["stats"][model];
        assert_eq!((&stats["inference_count"], &stats["inference_stats"]["success"]["count"]), (&json!(1), &json!(1)));
    }
    assert_eq!(seen["ready_after_unload"], false, "{seen}");
    assert!(seen["infer_after_unload"].as_str().unwrap().contains("unknown model 'topics'"), "{seen}");
    assert_eq!(seen["ready_after_load"], true, "{seen}");
    assert_eq!(seen["answer_after_load"], json!({"model": "topics", "label": "login"}), "{seen}");
}
