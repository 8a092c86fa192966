//! The classification head: multinomial logistic regression over a sentence embedding,
//! its training on a labelled data set, and its file.
//!
//! The file is JSON, a few KB, and checksummed:
//!
//! ```text
//! {"sha256": "<hex SHA-256 of the bytes of the head value, as they stand in the file>",
//!  "head": {"format": "falcon-sentence-head", "format_version": 1, "backend": "minilm",
//!           "labels": [...], "encoder": {"weights_sha256": ..., "dim": 384, ...},
//!           "coef": [...class-major, k × dim...], "intercept": [...k...],
//!           "training": {...}, "metrics": {...}, "created_at": "..."}}
//! ```
//!
//! `encoder.weights_sha256` names the encoder weights the head was trained on; the backend
//! refuses others. `model_version` hashes what decides a prediction (labels, encoder weights,
//! coefficients), not the training time or the report.

use std::path::{Path, PathBuf};

use falcon_model::Dataset;
use falcon_model::dataset::stratified_split;
use falcon_model::eval::{Evaluation, evaluate};
use falcon_model::logistic::{ClassWeight, FitReport, LogisticModel, TrainConfig};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::error::BertError;

pub const HEAD_FORMAT: &str = "falcon-sentence-head";
pub const HEAD_FORMAT_VERSION: u32 = 1;
/// Larger head files are refused before they are read: a head over a 1,024-d embedding
/// with a few classes is tens of KB.
pub const MAX_HEAD_BYTES: u64 = 16 * 1024 * 1024;

/// Which encoder a head reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderInfo {
    /// SHA-256 of the `model.safetensors` the head was trained on.
    pub weights_sha256: String,
    pub dim: usize,
    /// Tokens a text kept in training.
    pub max_tokens: usize,
}

/// How a head was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadTraining {
    /// SHA-256 of the training files (see `Dataset::sha256`).
    pub data_sha256: String,
    pub n_samples: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub seed: u64,
    pub test_fraction: f64,
    pub optimizer: TrainConfig,
    pub fit: FitReport,
}

/// A head as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub format: String,
    pub format_version: u32,
    /// The backend that serves it (`minilm`).
    pub backend: String,
    pub labels: Vec<String>,
    pub encoder: EncoderInfo,
    /// Class-major: `coef[k * dim + j]`.
    pub coef: Vec<f32>,
    pub intercept: Vec<f64>,
    pub training: HeadTraining,
    /// On the held-out split, as served (the stored `f32` weights).
    pub metrics: Evaluation,
    pub created_at: String,
}

#[derive(Serialize)]
struct FileOut<'a> {
    sha256: String,
    head: &'a RawValue,
}

#[derive(Deserialize)]
struct FileIn<'a> {
    sha256: String,
    #[serde(borrow)]
    head: &'a RawValue,
}

impl Head {
    /// Reads and checks a head file.
    pub fn load(path: &Path) -> Result<Self, BertError> {
        let size = std::fs::metadata(path).map_err(|error| BertError::Io { path: path.to_owned(), error })?.len();
        if size > MAX_HEAD_BYTES {
            return Err(head_error(path, format!("{size} bytes, over the {MAX_HEAD_BYTES}-byte bound")));
        }
        let bytes = std::fs::read(path).map_err(|error| BertError::Io { path: path.to_owned(), error })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and checks a head file's bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, BertError> {
        let file: FileIn<'_> = serde_json::from_slice(bytes).map_err(|e| head_error(path, e.to_string()))?;
        let found = hex::encode(Sha256::digest(file.head.get().as_bytes()));
        if found != file.sha256 {
            return Err(head_error(
                path,
                format!("checksum mismatch: the file says {}, its head hashes to {found}", file.sha256),
            ));
        }
        let head: Head = serde_json::from_str(file.head.get()).map_err(|e| head_error(path, e.to_string()))?;
        head.check().map_err(|m| head_error(path, m))?;
        Ok(head)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BertError> {
        let json = |e: serde_json::Error| head_error(Path::new("<new head>"), e.to_string());
        let head = serde_json::to_string(self).map_err(json)?;
        let raw = RawValue::from_string(head).map_err(json)?;
        let sha256 = hex::encode(Sha256::digest(raw.get().as_bytes()));
        let mut out = serde_json::to_vec(&FileOut { sha256, head: &raw }).map_err(json)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Writes the file (to a temporary name first, so a reader never sees half of it).
    pub fn save(&self, path: &Path) -> Result<(), BertError> {
        let io = |error| BertError::Io { path: path.to_owned(), error };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_bytes()?).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != HEAD_FORMAT || self.format_version != HEAD_FORMAT_VERSION {
            return Err(format!(
                "format {:?} version {}, this build reads {HEAD_FORMAT:?} version {HEAD_FORMAT_VERSION}",
                self.format, self.format_version
            ));
        }
        let (k, dim) = (self.labels.len(), self.encoder.dim);
        if k < 2 {
            return Err(format!("{k} label(s); a classifier needs 2 or more"));
        }
        if self.coef.len() != k * dim || self.intercept.len() != k {
            return Err(format!(
                "{} coefficients and {} intercepts for {k} labels over {dim} dimensions",
                self.coef.len(),
                self.intercept.len()
            ));
        }
        if self.coef.iter().any(|w| !w.is_finite()) || self.intercept.iter().any(|w| !w.is_finite()) {
            return Err("weights contain a non-finite value".into());
        }
        Ok(())
    }

    /// Identifies what decides a prediction: labels, encoder weights and the head's weights.
    pub fn model_version(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.backend.as_bytes());
        for l in &self.labels {
            h.update((l.len() as u64).to_le_bytes());
            h.update(l.as_bytes());
        }
        h.update(self.encoder.weights_sha256.as_bytes());
        h.update((self.encoder.max_tokens as u64).to_le_bytes());
        for w in &self.coef {
            h.update(w.to_le_bytes());
        }
        for w in &self.intercept {
            h.update(w.to_le_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }

    /// Class probabilities of one embedding (in label order); they sum to 1.
    pub fn predict_proba(&self, embedding: &[f32]) -> Vec<f64> {
        let dim = self.encoder.dim;
        let z: Vec<f64> = self
            .intercept
            .iter()
            .enumerate()
            .map(|(k, b)| {
                let row = &self.coef[k * dim..(k + 1) * dim];
                b + row.iter().zip(embedding).map(|(w, x)| f64::from(*w) * f64::from(*x)).sum::<f64>()
            })
            .collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / total).collect()
    }

    /// The class each embedding gets.
    pub fn classify(&self, embeddings: &[Vec<f32>]) -> Vec<usize> {
        embeddings
            .iter()
            .map(|e| {
                let p = self.predict_proba(e);
                falcon_backend::Prediction::from_probabilities(p).class
            })
            .collect()
    }
}

fn head_error(path: &Path, message: String) -> BertError {
    BertError::Head { path: PathBuf::from(path), message }
}

/// Everything that decides a head's weights, beside the data and the encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadOptions {
    pub seed: u64,
    pub test_fraction: f64,
    pub optimizer: TrainConfig,
}

impl Default for HeadOptions {
    /// The TF-IDF model's split (seed 42, 20 % held out), so both backends are scored on
    /// the same sentences, and scikit-learn's `LogisticRegression()` defaults (C = 1, every
    /// sample counted once): on the same embeddings and split it scores what this head does
    /// (docs/minilm.md). Balanced weights trade ~1 point of accuracy for ~0.7 of macro-F1.
    fn default() -> Self {
        let optimizer =
            TrainConfig { c: 1.0, class_weight: ClassWeight::Uniform, max_iter: 1000, ..TrainConfig::default() };
        Self { seed: 42, test_fraction: 0.2, optimizer }
    }
}

/// Trains a head on `data`, whose every text's embedding is `embeddings[i]` (made by the
/// encoder `encoder` describes), and scores it on the held-out split. Deterministic: the
/// same inputs give the same weights; only `created_at` differs.
pub fn train_head(
    data: &Dataset,
    embeddings: &[Vec<f32>],
    encoder: EncoderInfo,
    backend: &str,
    opts: &HeadOptions,
) -> Result<Head, String> {
    if data.texts.len() != embeddings.len() {
        return Err(format!("{} texts but {} embeddings", data.texts.len(), embeddings.len()));
    }
    if data.label_names.len() < 2 {
        return Err(format!("{} label(s); a classifier needs 2 or more", data.label_names.len()));
    }
    let dim = encoder.dim;
    if let Some(bad) = embeddings.iter().find(|e| e.len() != dim) {
        return Err(format!("an embedding has {} dimensions, the encoder {dim}", bad.len()));
    }
    let (train_idx, test_idx) = stratified_split(&data.labels, opts.test_fraction, opts.seed);
    let dense = |e: &Vec<f32>| e.iter().enumerate().map(|(j, &v)| (j as u32, f64::from(v))).collect::<Vec<_>>();
    let x: Vec<_> = train_idx.iter().map(|&i| dense(&embeddings[i])).collect();
    let y: Vec<usize> = train_idx.iter().map(|&i| data.labels[i]).collect();
    let k = data.label_names.len();
    let (weights, fit) = LogisticModel::fit(&x, &y, dim, k, &opts.optimizer);
    // LogisticModel is feature-major (`coef[j * k + c]`); the head is class-major.
    let coef: Vec<f32> =
        (0..k).flat_map(|c| (0..dim).map(move |j| (c, j))).map(|(c, j)| weights.coef()[j * k + c] as f32).collect();
    let names: Vec<&str> = data.label_names.iter().map(String::as_str).collect();
    let mut head = Head {
        format: HEAD_FORMAT.into(),
        format_version: HEAD_FORMAT_VERSION,
        backend: backend.into(),
        labels: data.label_names.clone(),
        encoder,
        coef,
        intercept: weights.intercept().to_vec(),
        training: HeadTraining {
            data_sha256: data.sha256.clone(),
            n_samples: data.texts.len(),
            n_train: train_idx.len(),
            n_test: test_idx.len(),
            seed: opts.seed,
            test_fraction: opts.test_fraction,
            optimizer: opts.optimizer,
            fit,
        },
        metrics: evaluate(&[], &[], &names),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let test_embeddings: Vec<Vec<f32>> = test_idx.iter().map(|&i| embeddings[i].clone()).collect();
    let y_true: Vec<usize> = test_idx.iter().map(|&i| data.labels[i]).collect();
    head.metrics = evaluate(&y_true, &head.classify(&test_embeddings), &names);
    head.check()?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes, each around its own axis of a 4-d space.
    fn tiny() -> (Dataset, Vec<Vec<f32>>) {
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        let mut embeddings = Vec::new();
        for i in 0..30 {
            let k = i % 3;
            let mut e = vec![0.1f32; 4];
            e[k] = 1.0 + (i as f32) / 100.0;
            texts.push(format!("text {i}"));
            labels.push(k);
            embeddings.push(e);
        }
        let label_names = ["negative", "neutral", "positive"].map(String::from).to_vec();
        (Dataset { texts, labels, label_names, sha256: "tiny".into(), files: vec![] }, embeddings)
    }

    fn info() -> EncoderInfo {
        EncoderInfo { weights_sha256: "ab".repeat(32), dim: 4, max_tokens: 256 }
    }

    #[test]
    fn a_head_learns_separable_classes_deterministically() {
        let (data, emb) = tiny();
        let a = train_head(&data, &emb, info(), "minilm", &HeadOptions::default()).unwrap();
        let b = train_head(&data, &emb, info(), "minilm", &HeadOptions::default()).unwrap();
        assert_eq!(a.model_version(), b.model_version());
        assert_eq!(a.metrics.accuracy, 1.0, "{}", a.metrics.render());
        let p = a.predict_proba(&[0.1, 0.1, 1.0, 0.1]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[2] > 0.5, "{p:?}");
        assert!(train_head(&data, &emb[1..], info(), "minilm", &HeadOptions::default()).is_err());
    }

    #[test]
    fn the_file_round_trips_and_a_changed_byte_is_refused() {
        let (data, emb) = tiny();
        let head = train_head(&data, &emb, info(), "minilm", &HeadOptions::default()).unwrap();
        let bytes = head.to_bytes().unwrap();
        let back = Head::from_bytes(&bytes, Path::new("h.json")).unwrap();
        assert_eq!(back, head);
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replacen("\"negative\"", "\"nagative\"", 1);
        let e = Head::from_bytes(tampered.as_bytes(), Path::new("h.json")).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        let e = Head::from_bytes(b"{}", Path::new("h.json")).unwrap_err().to_string();
        assert!(e.starts_with("invalid head file h.json"), "{e}");
        // A head whose shape does not add up is refused even with a valid checksum.
        let short = Head { coef: vec![0.0; 3], ..head };
        let e = Head::from_bytes(&short.to_bytes().unwrap(), Path::new("h.json")).unwrap_err().to_string();
        assert!(e.contains("coefficients"), "{e}");
    }
}
