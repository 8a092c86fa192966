//! The trained classifier, served from its compact file form (see `format`).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

pub use falcon_backend::Prediction;

use crate::error::ModelError;
use crate::eval::Evaluation;
pub use crate::format::{Bytes, FORMAT_VERSION, MAX_FILE_BYTES, ModelMeta, TrainingInfo};
use crate::format::{Decoded, F32s, FormatError, Parts, Vocab, decode, encode};
use crate::logistic::LogisticModel;
use crate::tfidf::{TfidfConfig, Vectorizer, weigh};
use crate::tokenize::{for_each_ngram, normalize};

/// A loaded, ready-to-serve classifier. Prediction is pure and thread-safe; cloning
/// shares the bytes.
#[derive(Debug, Clone)]
pub struct SentimentModel {
    meta: ModelMeta,
    tfidf: TfidfConfig,
    vocab: Vocab,
    idf: F32s,
    coef: F32s,
    intercept: Vec<f64>,
    bytes: Bytes,
}

/// The shipped model, compiled into every binary: what a worker serves when `MODEL_PATH`
/// is unset. `falcon train` writes it; a test checks it is what training reproduces.
static SHIPPED: &[u8] = include_bytes!("../../../models/classifier.bin");

impl SentimentModel {
    /// Assembles a model from trained parts. The weights are stored as `f32` (see
    /// docs/model.md: predictions stay within 1e-5 of the `f64` weights); the version is
    /// computed from the content.
    pub fn new(
        labels: Vec<String>,
        vectorizer: &Vectorizer,
        weights: &LogisticModel,
        training: TrainingInfo,
        metrics: Evaluation,
        created_at: String,
    ) -> Result<Self, ModelError> {
        let meta = ModelMeta { model_version: String::new(), created_at, labels, training, metrics };
        let parts = Parts {
            meta,
            terms: vectorizer.terms(),
            idf: vectorizer.idf(),
            coef: weights.coef(),
            intercept: weights.intercept(),
        };
        let (bytes, _) =
            encode(parts).map_err(|message| ModelError::Corrupt { path: "<new model>".into(), message })?;
        Self::from_bytes(Bytes::Shared(Arc::from(bytes)), Path::new("<new model>"))
    }

    /// The same model with another evaluation report (the version does not change).
    pub fn with_metrics(&self, metrics: Evaluation) -> Result<Self, ModelError> {
        let meta = ModelMeta { metrics, ..self.meta.clone() };
        let terms = self.vocab.terms();
        let parts = Parts {
            meta,
            terms: &terms,
            idf: &self.idf.to_vec(),
            coef: &self.coef.to_vec(),
            intercept: &self.intercept,
        };
        let (bytes, _) =
            encode(parts).map_err(|message| ModelError::Corrupt { path: "<new model>".into(), message })?;
        Self::from_bytes(Bytes::Shared(Arc::from(bytes)), Path::new("<new model>"))
    }

    /// The model compiled into this binary.
    pub fn shipped() -> Result<Self, ModelError> {
        Self::from_bytes(Bytes::Static(SHIPPED), Path::new("<built-in model>"))
    }

    /// Classifies one text.
    pub fn predict(&self, text: &str) -> Prediction {
        // The n-grams are slices of the normalised text: no token or n-gram is copied.
        let normalized = normalize(text);
        let mut hits: Vec<u32> = Vec::with_capacity(normalized.len() / 2);
        for_each_ngram(&normalized, self.tfidf.min_n, self.tfidf.max_n, |g| {
            if let Some(i) = self.vocab.get(g) {
                hits.push(i);
            }
        });
        let x = weigh(hits, self.tfidf.sublinear_tf, |i| self.idf.get(i as usize));
        let k = self.intercept.len();
        let mut z = self.intercept.clone();
        for (j, v) in x {
            let row = j as usize * k;
            for (c, zc) in z.iter_mut().enumerate() {
                *zc += v * self.coef.get(row + c);
            }
        }
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        Prediction::from_probabilities(z.iter().map(|v| (v - lse).exp()).collect())
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
        self.vocab.len()
    }

    /// Vocabulary terms in feature order (for tests and inspection).
    pub fn vocab_terms(&self) -> Vec<String> {
        self.vocab.terms()
    }

    /// The feature index of an n-gram, if the model knows it.
    pub fn feature_index(&self, ngram: &str) -> Option<u32> {
        self.vocab.get(ngram)
    }

    /// Feature-major coefficients as stored (for tests and inspection).
    pub fn coefficients(&self) -> Vec<f64> {
        self.coef.to_vec()
    }

    /// The model file's bytes.
    pub fn to_bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// Writes the model file atomically (temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let io = |error| ModelError::Io { path: path.to_owned(), error };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads and fully validates a model file (at most `MAX_FILE_BYTES`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let io = |error| ModelError::Io { path: path.to_owned(), error };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ModelError::Corrupt {
                path: path.to_owned(),
                message: format!("larger than {} MiB; not a model file", MAX_FILE_BYTES >> 20),
            });
        }
        Self::from_bytes(Bytes::Shared(Arc::from(bytes)), path)
    }

    /// Decodes a model from bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: Bytes, path: &Path) -> Result<Self, ModelError> {
        let Decoded { meta, vocab, idf, coef, intercept } = decode(bytes.clone()).map_err(|e| match e {
            FormatError::Corrupt(message) => ModelError::Corrupt { path: path.to_owned(), message },
            FormatError::Incompatible(found) => {
                ModelError::Incompatible { path: path.to_owned(), found, supported: FORMAT_VERSION }
            }
            FormatError::Integrity { expected, actual } => {
                ModelError::Integrity { path: path.to_owned(), expected, actual }
            }
        })?;
        let tfidf = meta.training.tfidf;
        Ok(Self { meta, tfidf, vocab, idf, coef, intercept, bytes })
    }
}

impl falcon_backend::Backend for SentimentModel {
    fn name(&self) -> &'static str {
        "tfidf"
    }

    fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, falcon_backend::BackendError> {
        Ok(texts.iter().map(|t| self.predict(t)).collect())
    }

    fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    fn model_version(&self) -> &str {
        &self.meta.model_version
    }

    fn normalize(&self, text: &str) -> String {
        crate::tokenize::normalize(text)
    }

    fn max_input_chars(&self) -> usize {
        MAX_INPUT_CHARS
    }

    /// Up to `IN_PLACE_BYTES` of text: about 20 µs here (a 20-word text takes 1.2 µs).
    fn runs_in_place(&self, text: &str) -> bool {
        text.len() <= IN_PLACE_BYTES
    }

    fn reference_class_shares(&self) -> Option<Vec<f64>> {
        self.meta.metrics.predicted_shares()
    }
}

/// Longest text the TF-IDF model takes, in characters (the API's limit).
pub const MAX_INPUT_CHARS: usize = 10_000;

/// Longest text, in bytes, the worker may classify in place on a runtime thread (see
/// `Backend::runs_in_place`); longer ones go to the inference threads.
pub const IN_PLACE_BYTES: usize = 2048;
