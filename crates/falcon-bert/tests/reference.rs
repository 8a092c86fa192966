//! falcon-bert's embeddings against sentence-transformers' (tests/fixtures/README.md): every
//! fixture text, alone and in padded batches, has a cosine of at least 0.9999 with the
//! reference, with both runtimes (candle, and ONNX Runtime over the graph
//! scripts/minilm_to_onnx.py makes). Needs the all-MiniLM-L6-v2 weights: `make fetch-minilm` (which `make test`
//! runs) puts them in .tools/models/all-MiniLM-L6-v2; `MINILM_DIR` names another folder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use falcon_backend::Backend;
use falcon_bert::{Encoder, Runtime, SentenceClassifier};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model_safetensors_sha256: String,
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    token_count: usize,
    embedding: Vec<f32>,
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-reference.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    })
}

fn weights_dir() -> PathBuf {
    std::env::var_os("MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools/models/all-MiniLM-L6-v2")))
}

fn load(runtime: Runtime) -> Encoder {
    let dir = weights_dir();
    assert!(
        dir.join("model.safetensors").exists() && dir.join("model.onnx").exists(),
        "no all-MiniLM-L6-v2 weights and graph in {}: run `make fetch-minilm` (make test does)",
        dir.display()
    );
    Encoder::load_with(&dir, runtime, &Device::Cpu, 2).unwrap()
}

/// The encoder on each runtime.
fn encoders() -> [&'static Encoder; 2] {
    static CANDLE: OnceLock<Encoder> = OnceLock::new();
    static ONNX: OnceLock<Encoder> = OnceLock::new();
    [CANDLE.get_or_init(|| load(Runtime::Candle)), ONNX.get_or_init(|| load(Runtime::Onnx))]
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn assert_matches(texts: &[&Item], got: &[Vec<f32>], how: &str) {
    assert_eq!(got.len(), texts.len());
    for (item, e) in texts.iter().zip(got) {
        let c = cosine(e, &item.embedding);
        assert!(c >= 0.9999, "{how}: cosine {c:.6} for {:?}", item.text);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{how}: norm {norm}");
    }
}

#[test]
fn the_weights_are_the_reference_s() {
    for encoder in encoders() {
        assert_eq!(encoder.weights_sha256(), reference().model_safetensors_sha256);
        assert_eq!(encoder.max_tokens(), reference().max_seq_length);
        assert_eq!(encoder.dim(), 384);
    }
    assert_eq!(encoders().map(|e| e.runtime()), [Runtime::Candle, Runtime::Onnx]);
}

#[test]
fn every_text_alone_matches_sentence_transformers() {
    for encoder in encoders() {
        let how = format!("{} alone", encoder.runtime().name());
        for item in &reference().items {
            let tokens = encoder.tokenize(&item.text).unwrap();
            assert_eq!(tokens.truncated, item.token_count > reference().max_seq_length, "{:?}", item.text);
            assert_eq!(tokens.ids.len(), item.token_count.min(reference().max_seq_length), "{:?}", item.text);
            assert_matches(&[item], &encoder.embed_tokens(&[&tokens.ids]).unwrap(), &how);
        }
    }
    assert!(reference().items.iter().any(|i| i.token_count > reference().max_seq_length), "a text is truncated");
}

#[test]
fn padded_batches_match_too() {
    let items: Vec<&Item> = reference().items.iter().collect();
    for encoder in encoders() {
        for batch in items.chunks(16) {
            let tokens: Vec<_> = batch.iter().map(|i| encoder.tokenize(&i.text).unwrap()).collect();
            let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
            let how = format!("{}: one padded batch", encoder.runtime().name());
            assert_matches(batch, &encoder.embed_tokens(&ids).unwrap(), &how);
        }
    }
}

#[test]
fn onnx_needs_its_graph_and_refuses_one_made_from_other_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = weights_dir();
    for name in ["config.json", "tokenizer.json", "sentence_bert_config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(dir.join(name), tmp.path().join(name)).unwrap();
    }
    // Without the graph: `auto` runs candle, and `onnx` says what is missing.
    assert_eq!(Runtime::choose(None, tmp.path()).unwrap(), Runtime::Candle);
    assert_eq!(Runtime::choose(Some("auto"), &dir).unwrap(), Runtime::Onnx, "graph and library present");
    assert!(Runtime::choose(Some("tensorflow"), &dir).is_err());
    let e = Encoder::load_with(tmp.path(), Runtime::Onnx, &Device::Cpu, 1).err().unwrap().to_string();
    assert!(e.contains("no model.onnx"), "{e}");
    // The graph, beside weights that differ in one byte: refused, naming both checksums.
    let mut weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), weights).unwrap();
    std::os::unix::fs::symlink(dir.join("model.onnx"), tmp.path().join("model.onnx")).unwrap();
    std::os::unix::fs::symlink(dir.join("libonnxruntime.so"), tmp.path().join("libonnxruntime.so")).unwrap();
    let e = Encoder::load_with(tmp.path(), Runtime::Onnx, &Device::Cpu, 1).err().unwrap().to_string();
    assert!(e.contains("was made from other weights"), "{e}");
}

#[test]
fn the_classifier_groups_by_length_and_answers_in_order() {
    let dir = weights_dir();
    let head = falcon_bert::shipped_head().unwrap();
    let model = SentenceClassifier::load(&dir, head).unwrap();
    let items: Vec<&Item> = reference().items.iter().collect();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    assert_matches(&items, &model.embed(&texts).unwrap(), "grouped by length");
    let truncated = items.iter().filter(|i| i.token_count > reference().max_seq_length).count() as u64;
    assert_eq!(model.truncated_texts(), truncated);

    // Batched predictions equal one-at-a-time ones.
    let batched = model.predict_batch(&texts).unwrap();
    for (text, b) in texts.iter().zip(&batched) {
        let alone = &model.predict_batch(&[text]).unwrap()[0];
        assert_eq!(alone.class, b.class, "{text:?}");
        for (x, y) in alone.probabilities.iter().zip(&b.probabilities) {
            assert!((x - y).abs() <= 1e-5, "{text:?}: {x} vs {y}");
        }
    }
}
