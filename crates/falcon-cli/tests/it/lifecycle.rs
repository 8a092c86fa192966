#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! Model lifecycle with real workers: hot reload under load through nginx (no failed
//! request, no answer mixing two models), a bad file refused, cache and idempotency scoped
//! to the model, a shadow model scoring a sample, prediction metrics, `falcon model eval`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use falcon_model::SentimentModel;
use serde_json::{Value, json};

use crate::common::stack::Stack;
use crate::common::{Worker, falcon, metric, repo};

/// Two models with the same labels and different weights: the shipped one (A), and one
/// trained in a moment on a few sentences (B).
struct TwoModels {
    dir: tempfile::TempDir,
    a: SentimentModel,
    b: SentimentModel,
}

impl TwoModels {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo().join("models/classifier.bin"), dir.path().join("a.bin")).unwrap();
        // A VADER-style file from the labelled sample: rating -2.5 / 0 / 2.5 per class.
        let csv = std::fs::read_to_string(repo().join("data/eval/sample.csv")).unwrap();
        let mut lines = String::new();
        for (i, line) in csv.lines().skip(1).enumerate() {
            let (text, label) = line.rsplit_once(',').unwrap();
            let rating = match label {
                "negative" => -2.5,
                "positive" => 2.5,
                _ => 0.0,
            };
            lines.push_str(&format!("{i}\t{rating}\t{}\n", text.trim_matches('"')));
        }
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("tiny_GroundTruth.txt"), lines).unwrap();
        let out = falcon()
            .args(["train", "--data", data.to_str().unwrap(), "--out", dir.path().join("b.bin").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "train: {}", String::from_utf8_lossy(&out.stderr));
        let a = SentimentModel::load(&dir.path().join("a.bin")).unwrap();
        let b = SentimentModel::load(&dir.path().join("b.bin")).unwrap();
        assert_ne!(a.meta().model_version, b.meta().model_version);
        Self { dir, a, b }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Puts `model` (a.bin or b.bin) where MODEL_PATH points, atomically.
    fn serve(&self, model: &str) -> PathBuf {
        let serving = self.path("serving.bin");
        let tmp = self.path("serving.bin.new");
        std::fs::copy(self.path(model), &tmp).unwrap();
        std::fs::rename(&tmp, &serving).unwrap();
        serving
    }

    fn by_version(&self, version: &str) -> &SentimentModel {
        if version == self.a.meta().model_version {
            &self.a
        } else {
            assert_eq!(version, self.b.meta().model_version, "an unknown model version");
            &self.b
        }
    }
}

/// The answer is what the model it names computes for the text (probabilities to 6 decimals).
fn assert_answer_from_its_model(models: &TwoModels, text: &str, answer: &Value) {
    let version = answer["model_version"].as_str().unwrap();
    let model = models.by_version(version);
    let expected = model.predict(text);
    for (label, p) in model.labels().iter().zip(&expected.probabilities) {
        let got = answer["probabilities"][label].as_f64().unwrap();
        assert!((got - p).abs() < 2e-6, "{text:?}: {label} {got} vs {p} from {version}: {answer}");
    }
}

async fn post(c: &reqwest::Client, url: &str, text: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = c.post(url).json(&json!({ "text": text }));
    if let Some(k) = key {
        req = req.header("X-Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_every_second_under_load_through_nginx_fail_nothing_and_never_mix_models() {
    let models = Arc::new(TwoModels::new());
    let serving = models.serve("a.bin");
    // The 8 clients all come from 127.0.0.1, one nginx client: its deployed per-client limit
    // (2000r/s) is raised, as in the drills and load tests, so what is measured is the
    // reloads, not nginx's throttle (since cheap texts run in place, the stack answers faster
    // than that limit).
    let stack = Stack::up_with(&[
        ("MODEL_PATH", serving.to_str().unwrap()),
        ("STACK_NGINX_RATE", "100000r/s"),
        ("STACK_NGINX_BURST", "100000"),
    ]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let answers: Arc<Mutex<Vec<(String, u16, Value)>>> = Arc::default();

    // Load: 8 clients in a loop through nginx, a pool of texts (so cache hits happen too).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut clients = Vec::new();
    for c in 0..8 {
        let (client, answers, url) = (client.clone(), Arc::clone(&answers), stack.url("/infer"));
        clients.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let text = format!(
                    "client {c} says the service is {} today",
                    ["great", "awful", "fine", "slow", "okay"][(i % 5) as usize]
                );
                let (status, body) = post(&client, &url, &text, None).await;
                answers.lock().unwrap().push((text, status, body));
            }
        }));
    }
    // A reload every second: swap the file, SIGHUP every worker.
    let ctl = stack.ctl.clone();
    let swapper = {
        let models = Arc::clone(&models);
        std::thread::spawn(move || {
            let mut n = 0;
            while Instant::now() < deadline - Duration::from_millis(500) {
                std::thread::sleep(Duration::from_secs(1));
                n += 1;
                models.serve(if n % 2 == 1 { "b.bin" } else { "a.bin" });
                for w in ["worker-1", "worker-2", "worker-3"] {
                    ctl.run(&["reload", w]);
                }
            }
            n
        })
    };
    for c in clients {
        c.await.unwrap();
    }
    let reloads = swapper.join().unwrap();
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let failed: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 200).take(5).collect();
    assert!(failed.is_empty(), "failed requests during reloads: {failed:?}");
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    for (text, _, body) in answers.iter() {
        assert_answer_from_its_model(&models, text, body);
        *versions.entry(body["model_version"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(versions.len(), 2, "both models answered: {versions:?}");
    println!("{} answers, 0 failed, {reloads} reloads on 3 workers, by model version: {versions:?}", answers.len());
    // Every reload succeeded, on every worker.
    let c = reqwest::Client::new();
    for port in stack.ctl.worker_ports {
        let text = c.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
        let line = |status: &str| {
            text.lines()
                .find(|l| l.starts_with("model_reloads_total") && l.contains(&format!("status=\"{status}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        assert_eq!(line("failure"), 0.0, "{text}");
        assert!(line("success") >= f64::from(reloads - 1), "{} of {reloads} reloads", line("success"));
    }
}

#[tokio::test]
async fn a_bad_model_file_is_refused_and_the_old_model_keeps_serving() {
    let models = TwoModels::new();
    let serving = models.serve("a.bin");
    let w = Worker::start(&[("MODEL_PATH", serving.to_str().unwrap())]);
    let c = reqwest::Client::new();
    let version_a = models.a.meta().model_version.clone();
    std::fs::write(&serving, b"not a model").unwrap();
    let r = c.post(w.url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "reload_failed", "{body}");
    let ready: Value = c.get(w.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["model_version"], version_a.as_str());
    let (status, answer) = post(&c, &w.url("/infer"), "still answering", None).await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some(version_a.as_str())));
    assert_eq!(metric(&c, &w, "model_reloads_total{worker_id=\"it-worker\",status=\"failure\"}").await, 1.0);
    let line = w.wait_for_log("reload failure line", Duration::from_secs(5), |l| {
        l["message"] == "Model reload failed; still serving the previous model"
    });
    assert_eq!(line["level"], "ERROR");
    // Through a proxy (or from another host) the endpoint is refused.
    let r = c.post(w.url("/admin/reload")).header("X-Forwarded-For", "203.0.113.9").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "forbidden");
}

#[tokio::test]
async fn after_a_reload_neither_the_cache_nor_an_idempotency_record_answers_for_the_old_model() {
    let models = TwoModels::new();
    let serving = models.serve("a.bin");
    let w = Worker::start(&[("MODEL_PATH", serving.to_str().unwrap())]);
    let c = reqwest::Client::new();
    let url = w.url("/infer");
    let text = "the staff were friendly and the room was clean";
    let (_, first) = post(&c, &url, text, Some("key-1")).await;
    let (_, cached) = post(&c, &url, text, None).await;
    assert_eq!(
        (first["model_version"].as_str(), cached["cache_hit"].as_bool()),
        (Some(models.a.meta().model_version.as_str()), Some(true))
    );
    models.serve("b.bin");
    let r: Value = c.post(w.url("/admin/reload")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["reload"]["model_version"], models.b.meta().model_version.as_str(), "{r}");
    assert_eq!(r["reload"]["changed"], true);
    let (status, again) = post(&c, &url, text, Some("key-1")).await;
    assert_eq!(status, 200);
    assert_eq!(again["model_version"], models.b.meta().model_version.as_str(), "{again}");
    assert_eq!(
        (again["idempotency_hit"].as_bool(), again["cache_hit"].as_bool()),
        (Some(false), Some(false)),
        "{again}"
    );
    assert_answer_from_its_model(&models, text, &again);
    let line = w.wait_for_log("reload line", Duration::from_secs(5), |l| l["message"] == "Model reloaded");
    assert_eq!(line["previous_version"], models.a.meta().model_version.as_str());
    assert!(line["load_ms"].as_f64().is_some(), "{line}");
    // model_info says which version is served.
    let info = |v: &str| format!("model_info{{worker_id=\"it-worker\",model_version=\"{v}\"}}");
    assert_eq!(metric(&c, &w, &info(&models.b.meta().model_version)).await, 1.0);
    assert_eq!(metric(&c, &w, &info(&models.a.meta().model_version)).await, 0.0);
}

#[tokio::test]
async fn a_shadow_model_scores_a_sample_after_the_answer_and_predictions_are_counted_by_class() {
    let models = TwoModels::new();
    let w = Worker::start(&[
        ("SHADOW_MODEL_PATH", models.path("b.bin").to_str().unwrap()),
        ("SHADOW_SAMPLE_RATE", "0.5"),
        ("CACHE_ENABLED", "false"),
    ]);
    let c = reqwest::Client::new();
    let sample = std::fs::read_to_string(repo().join("data/eval/sample.csv")).unwrap();
    let texts: Vec<String> =
        sample.lines().skip(1).map(|l| l.rsplit_once(',').unwrap().0.trim_matches('"').to_owned()).collect();
    let mut live_agrees_with_b = 0;
    for text in texts.iter().chain(&texts).take(40) {
        let (status, answer) = post(&c, &w.url("/infer"), text, None).await;
        assert_eq!(status, 200);
        assert_eq!(answer["model_version"], models.a.meta().model_version.as_str(), "the live model answers");
        live_agrees_with_b +=
            usize::from(answer["prediction"] == models.b.labels()[models.b.predict(text).class].as_str());
    }
    let agree = "shadow_agreement_total{worker_id=\"it-worker\",outcome=\"agree\"}";
    let disagree = "shadow_agreement_total{worker_id=\"it-worker\",outcome=\"disagree\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scored = metric(&c, &w, agree).await + metric(&c, &w, disagree).await;
        if scored >= 20.0 {
            assert_eq!(scored, 20.0, "half of 40 requests are sampled");
            break;
        }
        assert!(Instant::now() < deadline, "{scored} of 20 sampled texts scored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sample is every second request; agreement is what B says of those texts.
    let sampled: Vec<&String> = texts.iter().chain(&texts).take(40).skip(1).step_by(2).collect();
    let expected_agree = sampled.iter().filter(|t| models.b.predict(t).class == models.a.predict(t).class).count();
    assert_eq!(metric(&c, &w, agree).await, expected_agree as f64, "live agreed with B on {live_agrees_with_b} of 40");
    let classes: BTreeSet<&str> = ["negative", "neutral", "positive"].into();
    let mut shadow_total = 0.0;
    let mut served_total = 0.0;
    for class in &classes {
        shadow_total +=
            metric(&c, &w, &format!("shadow_predictions_total{{worker_id=\"it-worker\",class=\"{class}\"}}")).await;
        served_total +=
            metric(&c, &w, &format!("model_predictions_total{{worker_id=\"it-worker\",class=\"{class}\"}}")).await;
    }
    assert_eq!((shadow_total, served_total), (20.0, 40.0));
    let mut reference = 0.0;
    for class in &classes {
        reference +=
            metric(&c, &w, &format!("model_reference_class_share{{worker_id=\"it-worker\",class=\"{class}\"}}")).await;
    }
    assert!((reference - 1.0).abs() < 1e-9, "the reference mix sums to 1: {reference}");
}

#[test]
fn model_eval_scores_a_labelled_csv_and_inspect_shows_the_class_mix() {
    let dir = tempfile::tempdir().unwrap();
    let model = SentimentModel::shipped().unwrap();
    let sample = std::fs::read_to_string(repo().join("data/eval/sample.csv")).unwrap();
    // Labels = the model's own predictions: accuracy must be exactly 1.
    let mut own = String::from("text,label\n");
    for line in sample.lines().skip(1) {
        let text = line.rsplit_once(',').unwrap().0.trim_matches('"');
        own.push_str(&format!("\"{text}\",{}\n", model.labels()[model.predict(text).class]));
    }
    let own_path = dir.path().join("own.csv");
    std::fs::write(&own_path, own).unwrap();
    let run = |data: &Path| falcon().args(["model", "eval", "built-in"]).arg(data).output().unwrap();
    let out = run(&own_path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("accuracy: 1.0000"), "{text}");
    let out = run(&repo().join("data/eval/sample.csv"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(30 rows)") && text.contains("confusion matrix"), "{text}");
    assert!(!text.contains("accuracy: 1.0000"), "a real sample is not perfect: {text}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "text,label\nhello,happy\n").unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown label \"happy\""));
    let out = falcon().args(["model", "inspect"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("class mix:") && text.contains("predicted:"), "{text}");
}
