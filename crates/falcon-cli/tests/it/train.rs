//! `falcon train --csv`: a model of the user's own, from any labelled CSV, served like the
//! shipped one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};

use crate::common::{Worker, falcon, fresh_dir, post};

/// A small topic data set: three labels (none of them the sentiment's), ten texts each,
/// with a quoted text that holds a comma and a line break, and columns in another order.
pub fn topics_csv() -> String {
    let mut csv = String::from("id,label,body\n");
    let topics = [
        ("billing", ["invoice", "charge", "refund", "payment", "bill"]),
        ("shipping", ["parcel", "delivery", "courier", "tracking", "shipment"]),
        ("login", ["password", "account", "sign in", "two-factor", "locked out"]),
    ];
    let mut id = 0;
    for (label, words) in topics {
        for (i, word) in words.iter().cycle().take(10).enumerate() {
            id += 1;
            let text = if i == 0 {
                format!("\"my {word}, again,\nis wrong\"")
            } else {
                format!("question {i} about the {word}")
            };
            csv.push_str(&format!("{id},{label},{text}\n"));
        }
    }
    csv
}

#[tokio::test]
async fn a_model_trained_on_your_own_csv_serves_its_own_labels() {
    let dir = fresh_dir();
    let data = dir.path().join("topics.csv");
    std::fs::write(&data, topics_csv()).unwrap();
    let model = dir.path().join("topics.bin");
    let out = falcon()
        .args(["train", "--csv", data.to_str().unwrap(), "--text-column", "body", "--out", model.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "train: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("30 texts from 1 file(s) (billing 10, login 10, shipping 10)"), "{stdout}");
    assert!(stdout.contains("split: 24 train / 6 test"), "{stdout}");
    let w = Worker::start(&[("MODEL_PATH", model.to_str().unwrap())]);
    let c = reqwest::Client::new();
    for (text, topic) in [
        ("where is my parcel, the delivery is late", "shipping"),
        ("I was charged twice, please refund the payment", "billing"),
        ("I forgot my password and my account is locked out", "login"),
    ] {
        let answer: Value = post(&c, &w.url("/infer"), json!({ "text": text }), &[]).await.json().await.unwrap();
        assert_eq!(answer["prediction"], topic, "{text}: {answer}");
        let labels: Vec<&String> = answer["probabilities"].as_object().unwrap().keys().collect();
        assert_eq!(labels, ["billing", "login", "shipping"], "{answer}");
    }
    let metadata: Value = c.get(w.url("/v2/models/sentiment")).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["parameters"]["labels"], json!(["billing", "login", "shipping"]));
}

/// Bad input is one clear message with its line, and no model file.
#[test]
fn a_bad_csv_is_refused_with_its_line_and_writes_nothing() {
    let dir = fresh_dir();
    let data = dir.path().join("data.csv");
    std::fs::write(&data, "text,label\ngood,a\n,a\nbad,b\nworse,b\n").unwrap();
    let model = dir.path().join("out.bin");
    let out =
        falcon().args(["train", "--csv", data.to_str().unwrap(), "--out", model.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), format!("error: {}:3: the text is empty", data.display()));
    assert!(!model.exists());
    // A CSV never overwrites the shipped model by default: --out is required.
    let out = falcon().args(["train", "--csv", data.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"), "{}", String::from_utf8_lossy(&out.stderr));
}
