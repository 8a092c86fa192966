//! Issue 31: the transformer backend through the real binary. `MODEL_BACKEND=minilm
//! MINILM_DIR=…` serves it over HTTP with dynamic batching (concurrent requests share a
//! forward pass, and answer as they would alone), as a repository model beside TF-IDF, and
//! in `falcon predict`; a missing folder or other weights are refused with a clear error.
//! Needs the all-MiniLM-L6-v2 weights (`make fetch-minilm`, which `make test` runs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::common::{Worker, falcon, fresh_dir, metric, post, repo};

/// The encoder's folder `make fetch-minilm` fills.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "no all-MiniLM-L6-v2 weights in {}: run `make fetch-minilm` (make test does)",
        dir.display()
    );
    dir
}

async fn ask(c: &reqwest::Client, w: &Worker, path: &str, body: Value) -> (u16, Value) {
    let r = post(c, &w.url(path), body, &[]).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

const TEXTS: [&str; 8] = [
    "I absolutely love this, best purchase ever!",
    "This is the worst service I have ever had.",
    "The package arrived on Tuesday.",
    "not bad at all, actually pretty good",
    "Terrible. Broke after two days and support never answered.",
    "An okay movie, nothing special.",
    "Wunderbar! 😍",
    "I can't say I hated it, but I wouldn't watch it again.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minilm_serves_with_dynamic_batching_and_batched_answers_equal_single_ones() {
    let dir = minilm_dir();
    let w = Worker::start(&[
        ("MODEL_BACKEND", "minilm"),
        ("MINILM_DIR", dir.to_str().unwrap()),
        ("CACHE_ENABLED", "false"),
        ("MAX_BATCH_WAIT_MS", "50"),
        ("INFERENCE_THREADS", "1"),
    ]);
    let c = reqwest::Client::new();
    // `make fetch-minilm` leaves the graph and library beside the weights: ONNX Runtime runs.
    let loaded = w.wait_for_log("Model loaded", std::time::Duration::from_secs(5), |l| l["message"] == "Model loaded");
    assert!(loaded["model_path"].as_str().unwrap().contains("runtime onnx"), "{loaded}");

    // One at a time: each text alone in its forward pass.
    let mut alone = Vec::new();
    for text in TEXTS {
        let (status, a) = ask(&c, &w, "/infer", json!({ "text": text })).await;
        assert_eq!(status, 200, "{a}");
        assert_eq!(a["model"], "sentiment");
        alone.push(a);
    }
    assert_eq!(alone[0]["prediction"], "positive", "{}", alone[0]);
    assert_eq!(alone[1]["prediction"], "negative", "{}", alone[1]);
    let ones = metric(&c, &w, "model_inference_batch_size_count{model=\"sentiment\"}").await;
    assert_eq!(ones, TEXTS.len() as f64);

    // All at once: the inference thread gathers them (within MAX_BATCH_WAIT_MS) into fewer
    // forward passes, and each answer equals the one its text got alone.
    let answers =
        futures_util::future::join_all(TEXTS.iter().map(|text| ask(&c, &w, "/infer", json!({ "text": text })))).await;
    for ((status, a), single) in answers.iter().zip(&alone) {
        assert_eq!(*status, 200, "{a}");
        assert_eq!(a["prediction"], single["prediction"]);
        for (p, q) in
            a["probabilities"].as_object().unwrap().values().zip(single["probabilities"].as_object().unwrap().values())
        {
            assert!((p.as_f64().unwrap() - q.as_f64().unwrap()).abs() <= 1e-5, "{a} vs {single}");
        }
    }
    let calls = metric(&c, &w, "model_inference_batch_size_count{model=\"sentiment\"}").await - ones;
    assert!(calls < TEXTS.len() as f64, "{calls} forward passes for {} concurrent texts", TEXTS.len());
    assert!(metric(&c, &w, "model_forward_seconds_count{model=\"sentiment\"}").await >= ones + calls);
    assert!(metric(&c, &w, "model_queue_wait_seconds_count{model=\"sentiment\"}").await >= 2.0 * TEXTS.len() as f64);

    // /infer/batch: the same answers again.
    let (status, b) = ask(&c, &w, "/infer/batch", json!({ "texts": TEXTS })).await;
    assert_eq!(status, 200, "{b}");
    for (r, single) in b["results"].as_array().unwrap().iter().zip(&alone) {
        assert_eq!(r["prediction"], single["prediction"], "{r}");
    }

    // A text over 256 tokens is cut, and counted.
    let long = "word ".repeat(400);
    let (status, a) = ask(&c, &w, "/infer", json!({ "text": long })).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(metric(&c, &w, "model_input_truncated_total{model=\"sentiment\"}").await, 1.0);

    // The model says what it is: the OIP metadata and the queue delay in its configuration.
    let config: Value = c.get(w.url("/v2/models/sentiment/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["platform"], "falcon_minilm", "{config}");
    assert_eq!(config["dynamic_batching"]["max_queue_delay_microseconds"], 50_000, "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_beside_tfidf_in_a_repository_and_in_predict() {
    let dir = minilm_dir();
    let tmp = fresh_dir();
    let file = tmp.path().join("models.toml");
    std::fs::write(
        &file,
        format!(
            "default = \"sentiment\"\n[models.sentiment]\nbackend = \"tfidf\"\n\n[models.sentiment-minilm]\nbackend = \"minilm\"\ndir = {:?}\n",
            dir.to_str().unwrap()
        ),
    )
    .unwrap();
    // Candle, the other runtime, over HTTP.
    let w = Worker::start(&[("MODEL_REPOSITORY", file.to_str().unwrap()), ("MINILM_RUNTIME", "candle")]);
    let c = reqwest::Client::new();
    let loaded = w.wait_for_log("minilm loaded", std::time::Duration::from_secs(5), |l| {
        l["message"] == "Model loaded" && l["model"] == "sentiment-minilm"
    });
    assert!(loaded["model_path"].as_str().unwrap().contains("runtime candle"), "{loaded}");
    let (status, a) = ask(&c, &w, "/infer", json!({ "text": TEXTS[0], "model": "sentiment-minilm" })).await;
    assert_eq!((status, &a["model"], &a["prediction"]), (200, &json!("sentiment-minilm"), &json!("positive")), "{a}");
    let (_, t) = ask(&c, &w, "/infer", json!({ "text": TEXTS[0] })).await;
    assert_ne!(a["model_version"], t["model_version"], "each model its own version, so cache keys never collide");

    drop(w);

    // A TF-IDF primary with a MiniLM shadow: every text is scored by both.
    let w = Worker::start(&[
        ("SHADOW_MODEL_BACKEND", "minilm"),
        ("SHADOW_MODEL_PATH", dir.to_str().unwrap()),
        ("SHADOW_SAMPLE_RATE", "1"),
    ]);
    for text in TEXTS {
        assert_eq!(ask(&c, &w, "/infer", json!({ "text": text })).await.0, 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(&c, &w, "shadow_predictions_total{").await < TEXTS.len() as f64 {
        assert!(std::time::Instant::now() < deadline, "the MiniLM shadow did not score every text");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(metric(&c, &w, "shadow_agreement_total{outcome=\"agree\"}").await >= 1.0);

    let out =
        falcon().args(["predict", "--model-backend", "minilm", TEXTS[1]]).env("MINILM_DIR", &dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("negative"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn minilm_without_its_folder_or_with_other_weights_is_refused_clearly() {
    let out = falcon().args(["predict", "--model-backend", "minilm", "hello"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MINILM_DIR"), "{err}");

    // A head trained on other weights: its checksum names them, and these are refused.
    let tmp = fresh_dir();
    let head = falcon_bert::shipped_head().unwrap();
    let other = falcon_bert::Head {
        encoder: falcon_bert::EncoderInfo { weights_sha256: "0".repeat(64), ..head.encoder.clone() },
        ..head
    };
    let path = tmp.path().join("head.json");
    other.save(&path).unwrap();
    let out = falcon()
        .args(["predict", "--model-backend", "minilm", "--model-path", path.to_str().unwrap(), "hello"])
        .env("MINILM_DIR", minilm_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the ones this head was trained on"), "{err}");
}
