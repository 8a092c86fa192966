//! The trained classifier and its file format.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::eval::Evaluation;
use crate::logistic::{FitReport, LogisticModel, TrainConfig};
use crate::tfidf::{TfidfConfig, Vectorizer};
use crate::tokenize::tokenize;

/// Value of the `format` field of every Falcon model file.
pub const FORMAT_NAME: &str = "falcon-sentiment-model";
/// The model file layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// How a model was trained; stored in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// SHA-256 of the training files (see `Dataset::sha256`).
    pub data_sha256: String,
    pub n_samples: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub seed: u64,
    pub test_fraction: f64,
    pub tfidf: TfidfConfig,
    pub optimizer: TrainConfig,
    pub fit: FitReport,
}

/// Descriptive metadata: everything but the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Content hash of labels, vocabulary and weights: equal weights, equal version.
    pub model_version: String,
    /// RFC 3339 time of training; the only field that differs between two identical runs.
    pub created_at: String,
    pub labels: Vec<String>,
    pub training: TrainingInfo,
    /// Metrics on the held-out test split.
    pub metrics: Evaluation,
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index into `SentimentModel::labels()`.
    pub class: usize,
    /// Probability of the predicted class.
    pub confidence: f64,
    /// Probabilities in label order; they sum to 1.
    pub probabilities: Vec<f64>,
}

/// A loaded, ready-to-serve classifier. Prediction is pure and thread-safe.
#[derive(Debug, Clone)]
pub struct SentimentModel {
    meta: ModelMeta,
    vectorizer: Vectorizer,
    weights: LogisticModel,
}

#[derive(Serialize, Deserialize)]
struct VectorizerFile {
    config: TfidfConfig,
    terms: Vec<String>,
    idf: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct WeightsFile {
    n_features: usize,
    /// Feature-major: `coef[j * n_classes + k]`.
    coef: Vec<f64>,
    intercept: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct ModelFile {
    format: String,
    format_version: u32,
    #[serde(flatten)]
    meta: ModelMeta,
    vectorizer: VectorizerFile,
    weights: WeightsFile,
}

#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    format_version: Option<u32>,
}

/// The part of the file that `model_version` is a hash of.
#[derive(Serialize)]
struct Content<'a> {
    labels: &'a [String],
    vectorizer: &'a VectorizerFile,
    weights: &'a WeightsFile,
}

fn content_hash(labels: &[String], v: &VectorizerFile, w: &WeightsFile) -> String {
    // Serialising plain vectors and strings cannot fail.
    let bytes = serde_json::to_vec(&Content { labels, vectorizer: v, weights: w }).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

impl SentimentModel {
    /// Assembles a model from trained parts; computes its version from the content.
    pub fn new(
        labels: Vec<String>,
        vectorizer: Vectorizer,
        weights: LogisticModel,
        training: TrainingInfo,
        metrics: Evaluation,
        created_at: String,
    ) -> Self {
        let (vf, wf) = parts(&vectorizer, &weights);
        let model_version = content_hash(&labels, &vf, &wf);
        let meta = ModelMeta { model_version, created_at, labels, training, metrics };
        Self { meta, vectorizer, weights }
    }

    /// Classifies one text.
    pub fn predict(&self, text: &str) -> Prediction {
        let x = self.vectorizer.transform(&tokenize(text));
        let probabilities = self.weights.predict_proba(&x);
        let (class, confidence) = probabilities
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, p)| if p > best.1 { (i, p) } else { best });
        Prediction { class, confidence, probabilities }
    }

    pub fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    pub fn model_version(&self) -> &str {
        &self.meta.model_version
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn n_features(&self) -> usize {
        self.vectorizer.len()
    }

    /// Feature-major coefficients (for tests and inspection).
    pub fn coefficients(&self) -> &[f64] {
        self.weights.coef()
    }

    /// Serialises the model to its JSON file form.
    pub fn to_json(&self) -> Vec<u8> {
        let (vectorizer, weights) = parts(&self.vectorizer, &self.weights);
        let file = ModelFile {
            format: FORMAT_NAME.to_owned(),
            format_version: FORMAT_VERSION,
            meta: self.meta.clone(),
            vectorizer,
            weights,
        };
        serde_json::to_vec(&file).unwrap_or_default()
    }

    /// Writes the model file atomically (temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let io = |error| ModelError::Io { path: path.to_owned(), error };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads and fully validates a model file: format name and version, shapes, finite
    /// weights, and the content hash against `model_version`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|error| ModelError::Io { path: path.to_owned(), error })?;
        Self::from_json(&bytes, path)
    }

    /// Parses a model from bytes; `path` is only used in error messages.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let corrupt = |message: String| ModelError::Corrupt { path: path.to_owned(), message };
        let header: Header = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if header.format.as_deref() != Some(FORMAT_NAME) {
            return Err(corrupt(format!("format is {:?}, expected {FORMAT_NAME:?}", header.format)));
        }
        match header.format_version {
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(ModelError::Incompatible { path: path.to_owned(), found, supported: FORMAT_VERSION });
            }
            None => return Err(corrupt("missing format_version".into())),
        }
        let file: ModelFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let actual = content_hash(&file.meta.labels, &file.vectorizer, &file.weights);
        if actual != file.meta.model_version {
            return Err(ModelError::Integrity { path: path.to_owned(), expected: file.meta.model_version, actual });
        }
        let n_classes = file.meta.labels.len();
        let v = file.vectorizer;
        let n_terms = v.terms.len();
        let vectorizer = Vectorizer::from_parts(v.config, v.terms, v.idf).map_err(&corrupt)?;
        let w = file.weights;
        if w.n_features != n_terms {
            return Err(corrupt(format!("{} weight rows for {} vocabulary terms", w.n_features, n_terms)));
        }
        let weights = LogisticModel::from_parts(w.n_features, n_classes, w.coef, w.intercept).map_err(&corrupt)?;
        Ok(Self { meta: file.meta, vectorizer, weights })
    }
}

fn parts(v: &Vectorizer, w: &LogisticModel) -> (VectorizerFile, WeightsFile) {
    (
        VectorizerFile { config: v.config(), terms: v.terms().to_vec(), idf: v.idf().to_vec() },
        WeightsFile { n_features: w.n_features(), coef: w.coef().to_vec(), intercept: w.intercept().to_vec() },
    )
}
