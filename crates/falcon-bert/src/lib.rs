//! Falcon's transformer backend (`MODEL_BACKEND=minilm`): a BERT-family sentence encoder
//! (all-MiniLM-L6-v2 by default) run by candle on the CPU, mean-pooled and L2-normalised as
//! sentence-transformers does, then a multinomial logistic-regression head over the
//! embedding. It implements `falcon_backend::Backend`.
//!
//! The encoder's weights are never downloaded at run time: `MINILM_DIR` names their folder
//! (`make fetch-minilm` puts them in `.tools/models/all-MiniLM-L6-v2`). The head, a few KB,
//! is trained by `falcon train --backend minilm` and the one for all-MiniLM-L6-v2 ships in
//! the binary; it names the weights it was trained on, and other weights are refused.
#![forbid(unsafe_code)]

pub mod encoder;
pub mod error;
pub mod head;
pub mod onnx;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Device;
use falcon_backend::{Backend, BackendError, Prediction};

pub use encoder::{Encoder, Runtime, Tokens};
pub use error::BertError;
pub use head::{EncoderInfo, Head, HeadOptions, train_head};

/// The backend's name, as `MODEL_BACKEND` spells it.
pub const NAME: &str = "minilm";

/// Longest text, in characters, the backend accepts (the TF-IDF model's bound); the encoder
/// keeps its first `max_tokens` tokens of it.
pub const MAX_INPUT_CHARS: usize = falcon_model::MAX_INPUT_CHARS;

static SHIPPED_HEAD: &[u8] = include_bytes!("../../../models/minilm-head.json");

/// The head for all-MiniLM-L6-v2 that ships in the binary.
pub fn shipped_head() -> Result<Head, BertError> {
    Head::from_bytes(SHIPPED_HEAD, Path::new("built-in MiniLM head"))
}

/// An encoder and a head: a sentence classifier.
pub struct SentenceClassifier {
    encoder: Arc<Encoder>,
    head: Head,
    version: String,
    truncated: AtomicU64,
}

impl SentenceClassifier {
    /// Loads the encoder in `dir` on the CPU and puts `head` on it; refuses weights other
    /// than the head's.
    pub fn load(dir: &Path, head: Head) -> Result<Self, BertError> {
        Self::load_on(dir, head, &Device::Cpu)
    }

    /// As `load`, on `device`.
    pub fn load_on(dir: &Path, head: Head, device: &Device) -> Result<Self, BertError> {
        let encoder = Encoder::load(dir, device)?;
        Self::new(Arc::new(encoder), head)
    }

    /// Puts `head` on a loaded encoder, which models may share (a hot reload of the head,
    /// a shadow on the same weights).
    pub fn new(encoder: Arc<Encoder>, head: Head) -> Result<Self, BertError> {
        if head.encoder.weights_sha256 != encoder.weights_sha256() {
            return Err(BertError::WeightsMismatch {
                dir: encoder.dir().to_owned(),
                expected: head.encoder.weights_sha256.clone(),
                found: encoder.weights_sha256().to_owned(),
            });
        }
        if head.encoder.dim != encoder.dim() {
            return Err(BertError::Config(format!(
                "the head reads {}-d embeddings, the encoder makes {}-d ones",
                head.encoder.dim,
                encoder.dim()
            )));
        }
        let version = head.model_version();
        Ok(Self { encoder, head, version, truncated: AtomicU64::new(0) })
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Embeddings of `texts`, in order (grouped by length; see `Encoder::embed_grouped`).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BertError> {
        let tokens = texts.iter().map(|t| self.encoder.tokenize(t)).collect::<Result<Vec<_>, _>>()?;
        let cut = tokens.iter().filter(|t| t.truncated).count() as u64;
        if cut > 0 {
            self.truncated.fetch_add(cut, Ordering::Relaxed);
        }
        let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        self.encoder.embed_grouped(&ids)
    }
}

impl Backend for SentenceClassifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
        let embeddings = self.embed(texts).map_err(|e| match e {
            BertError::Tokenizer(m) => BackendError::InvalidInput(m),
            other => BackendError::Failed(other.to_string()),
        })?;
        Ok(embeddings.iter().map(|e| Prediction::from_probabilities(self.head.predict_proba(e))).collect())
    }

    fn labels(&self) -> &[String] {
        &self.head.labels
    }

    fn model_version(&self) -> &str {
        &self.version
    }

    /// The tokens the encoder runs, as WordPiece strings (`[CLS] great movie ! [SEP]`): two
    /// texts with the same tokens get the same prediction.
    fn normalize(&self, text: &str) -> String {
        match self.encoder.tokenize(text) {
            Ok(tokens) => self.encoder.token_strings(&tokens.ids).join(" "),
            Err(_) => text.to_owned(),
        }
    }

    fn max_input_chars(&self) -> usize {
        MAX_INPUT_CHARS
    }

    fn reference_class_shares(&self) -> Option<Vec<f64>> {
        self.head.metrics.predicted_shares()
    }

    fn prefers_batches(&self) -> bool {
        true
    }

    fn truncated_texts(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_head_reads_and_names_the_reference_weights() {
        let head = shipped_head().unwrap();
        assert_eq!(head.backend, NAME);
        assert_eq!(head.labels, ["negative", "neutral", "positive"]);
        assert_eq!(head.encoder.weights_sha256, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db");
        assert_eq!(head.model_version().len(), 16);
    }
}
