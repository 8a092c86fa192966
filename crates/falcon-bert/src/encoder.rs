//! A BERT-family sentence encoder: WordPiece tokens, the transformer's forward pass, mean
//! pooling over the attention mask and L2 normalisation — what sentence-transformers'
//! `encode(..., normalize_embeddings=True)` computes for a model of this layout.
//!
//! A folder holds `config.json` (the BERT configuration), `model.safetensors`,
//! `tokenizer.json` and, optionally, `sentence_bert_config.json` (its `max_seq_length`
//! bounds the tokens a text keeps; 256 for all-MiniLM-L6-v2) and `1_Pooling/config.json`
//! (mean pooling is the only mode this encoder runs).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::error::BertError;

/// Larger weight files are refused before they are read (a wrong `MINILM_DIR` must fail,
/// not fill memory). BERT-base is 440 MB.
pub const MAX_WEIGHTS_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Tokens a text keeps when the folder does not say (`max_seq_length`).
const DEFAULT_MAX_TOKENS: usize = 256;

/// A text as the encoder sees it: its token ids after truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The text had more tokens than the encoder keeps.
    pub truncated: bool,
}

/// Which runtime runs the encoder's forward pass (`MINILM_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// candle: pure Rust, reads `model.safetensors` directly.
    Candle,
    /// ONNX Runtime over `model.onnx`, the graph `scripts/minilm_to_onnx.py` makes from the
    /// same safetensors: the faster one on CPU (docs/benchmarks.md#minilm).
    Onnx,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Onnx => "onnx",
        }
    }

    /// `MINILM_RUNTIME`: `candle`, `onnx`, or `auto` (the default: ONNX Runtime when the
    /// folder has its graph and library, else candle).
    pub fn choose(setting: Option<&str>, dir: &Path) -> Result<Self, BertError> {
        match setting.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("auto") {
            "candle" => Ok(Self::Candle),
            "onnx" => Ok(Self::Onnx),
            "auto" if crate::onnx::available(dir) => Ok(Self::Onnx),
            "auto" => Ok(Self::Candle),
            other => Err(BertError::Config(format!("MINILM_RUNTIME={other:?}: use candle, onnx or auto"))),
        }
    }
}

enum Engine {
    Candle { model: Box<BertModel>, device: Device },
    Onnx(crate::onnx::OnnxEncoder),
}

/// A loaded encoder, ready to embed texts.
pub struct Encoder {
    engine: Engine,
    runtime: Runtime,
    tokenizer: Tokenizer,
    max_tokens: usize,
    dim: usize,
    pad_id: u32,
    weights_sha256: String,
    dir: PathBuf,
}

#[derive(Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

impl Encoder {
    /// Loads the encoder in `dir` with candle onto `device` (the CPU today; a GPU build
    /// passes its own).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, BertError> {
        Self::load_with(dir, Runtime::Candle, device, 1)
    }

    /// Loads the encoder in `dir` to run on `runtime`: candle on `device`, or ONNX Runtime
    /// with `threads` threads a forward pass.
    pub fn load_with(dir: &Path, runtime: Runtime, device: &Device, threads: usize) -> Result<Self, BertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|error| BertError::Io { path, error })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| BertError::Config(format!("{}: {e}", dir.join("config.json").display())))?;
        let max_tokens = match std::fs::read(dir.join("sentence_bert_config.json")) {
            Ok(bytes) => serde_json::from_slice::<SentenceConfig>(&bytes)
                .map_err(|e| BertError::Config(format!("sentence_bert_config.json: {e}")))?
                .max_seq_length
                .unwrap_or(DEFAULT_MAX_TOKENS),
            Err(_) => DEFAULT_MAX_TOKENS,
        }
        .min(config.max_position_embeddings);
        if let Ok(bytes) = std::fs::read(dir.join("1_Pooling/config.json")) {
            let pooling: PoolingConfig =
                serde_json::from_slice(&bytes).map_err(|e| BertError::Config(format!("1_Pooling/config.json: {e}")))?;
            if !pooling.pooling_mode_mean_tokens || pooling.pooling_mode_cls_token || pooling.pooling_mode_max_tokens {
                return Err(BertError::Config(
                    "1_Pooling/config.json asks for a pooling other than mean pooling, which this backend does not run"
                        .into(),
                ));
            }
        }

        let weights_path = dir.join("model.safetensors");
        let size = std::fs::metadata(&weights_path)
            .map_err(|error| BertError::Io { path: weights_path.clone(), error })?
            .len();
        if size > MAX_WEIGHTS_BYTES {
            return Err(BertError::Config(format!(
                "{} is {size} bytes, over the {MAX_WEIGHTS_BYTES}-byte bound",
                weights_path.display()
            )));
        }
        let (engine, weights_sha256) = match runtime {
            Runtime::Candle => {
                let weights = read("model.safetensors")?;
                let sha256 = hex::encode(Sha256::digest(&weights));
                let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device).map_err(candle)?;
                (
                    Engine::Candle {
                        model: Box::new(BertModel::load(vb, &config).map_err(candle)?),
                        device: device.clone(),
                    },
                    sha256,
                )
            }
            Runtime::Onnx => {
                // ONNX Runtime reads the graph; the safetensors are only hashed, a block at a
                // time (not held: 90 MB more resident for nothing).
                let io = |error| BertError::Io { path: weights_path.clone(), error };
                let mut hasher = Sha256::new();
                std::io::copy(&mut std::fs::File::open(&weights_path).map_err(io)?, &mut hasher).map_err(io)?;
                let sha256 = hex::encode(hasher.finalize());
                (Engine::Onnx(crate::onnx::OnnxEncoder::load(dir, &sha256, threads)?), sha256)
            }
        };

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| BertError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        // The file's own settings (all-MiniLM-L6-v2's: truncate and pad to 128) are the
        // tokenizer's, not the sentence encoder's: it keeps max_seq_length tokens and pads a
        // batch itself, to its longest text.
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| BertError::Tokenizer(e.to_string()))?;
        let pad_id = tokenizer.get_padding().map_or(config.pad_token_id as u32, |p: &PaddingParams| p.pad_id);
        tokenizer.with_padding(None);

        Ok(Self {
            engine,
            runtime,
            tokenizer,
            max_tokens,
            dim: config.hidden_size,
            pad_id,
            weights_sha256,
            dir: dir.to_owned(),
        })
    }

    /// The runtime that runs the forward pass.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// SHA-256 of `model.safetensors`: which weights these are.
    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    /// Length of an embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens a text keeps, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The folder the encoder was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokens the encoder runs for `text` (truncated to `max_tokens`).
    pub fn tokenize(&self, text: &str) -> Result<Tokens, BertError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| BertError::Tokenizer(e.to_string()))?;
        Ok(Tokens { truncated: !encoding.get_overflowing().is_empty(), ids: encoding.get_ids().to_vec() })
    }

    /// The token strings of `ids`, special tokens included: what `normalize` shows.
    pub fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&id| self.tokenizer.id_to_token(id).unwrap_or_else(|| format!("[{id}]"))).collect()
    }

    /// Unit-length embeddings of tokenised texts, one forward pass for all of them: the
    /// batch is padded to its longest text, and the padding is masked out of attention and
    /// of the pooling, so each embedding equals the one its text gets alone.
    pub fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BertError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = batch.len();
        let len = batch.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
        let (ids, mask) = padded(batch, len, self.pad_id);
        let hidden: Vec<f32> = match &self.engine {
            Engine::Candle { model, device } => {
                let ids = Tensor::from_vec(ids, (rows, len), device).map_err(candle)?;
                let mask = Tensor::from_vec(mask, (rows, len), device).map_err(candle)?;
                let types = ids.zeros_like().map_err(candle)?;
                let hidden = model.forward(&ids, &types, Some(&mask)).map_err(candle)?;
                hidden.flatten_all().and_then(|h| h.to_vec1()).map_err(candle)?
            }
            Engine::Onnx(onnx) => {
                let wide = |v: Vec<u32>| v.into_iter().map(i64::from).collect();
                onnx.hidden_states(wide(ids), wide(mask), rows, len)?
            }
        };
        if hidden.len() != rows * len * self.dim {
            return Err(BertError::Config(format!(
                "the {} runtime gave {} values for {rows} × {len} tokens of {} dimensions",
                self.runtime.name(),
                hidden.len(),
                self.dim
            )));
        }
        Ok(batch.iter().enumerate().map(|(r, text)| mean_pool(&hidden, r, len, text.len(), self.dim)).collect())
    }

    /// Unit-length embeddings of tokenised texts, in order. The batch is sorted by length
    /// and run in groups of similar length, one forward pass each, so a long text does not
    /// make every short one pay for its padding.
    pub fn embed_grouped(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BertError> {
        let order = by_length(batch);
        self.embed_in_groups(batch, length_groups(&order, |i| batch[i].len()), |_| {})
    }

    /// Embeddings of a whole corpus, in order: sorted by length, `batch` texts a forward
    /// pass; `progress` hears how many are done after each pass.
    pub fn embed_corpus(
        &self,
        texts: &[&str],
        batch: usize,
        progress: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>, BertError> {
        let tokens = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        let order = by_length(&ids);
        self.embed_in_groups(&ids, order.chunks(batch.max(1)), progress)
    }

    /// One forward pass per group (indices into `batch`), each embedding put back in its
    /// text's place; `progress` hears how many texts are done after each pass.
    fn embed_in_groups<'g>(
        &self,
        batch: &[&[u32]],
        groups: impl IntoIterator<Item = &'g [usize]>,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>, BertError> {
        let mut out = vec![Vec::new(); batch.len()];
        let mut done = 0;
        for group in groups {
            let ids: Vec<&[u32]> = group.iter().map(|&i| batch[i]).collect();
            for (&i, e) in group.iter().zip(self.embed_tokens(&ids)?) {
                out[i] = e;
            }
            done += group.len();
            progress(done);
        }
        Ok(out)
    }
}

/// Indices of `batch`, shortest text first.
fn by_length(batch: &[&[u32]]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].len());
    order
}

/// Token ids padded with `pad` to `len`, and the attention mask (1 for a token, 0 for
/// padding), both row-major.
fn padded(batch: &[&[u32]], len: usize, pad: u32) -> (Vec<u32>, Vec<u32>) {
    let mut ids = Vec::with_capacity(batch.len() * len);
    let mut mask = Vec::with_capacity(batch.len() * len);
    for text in batch {
        ids.extend_from_slice(text);
        ids.extend(std::iter::repeat_n(pad, len - text.len()));
        mask.extend(std::iter::repeat_n(1, text.len()));
        mask.extend(std::iter::repeat_n(0, len - text.len()));
    }
    (ids, mask)
}

/// The unit-length mean of row `r`'s first `tokens` hidden states (of a batch padded to `len`).
fn mean_pool(hidden: &[f32], r: usize, len: usize, tokens: usize, dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    for t in 0..tokens {
        let start = (r * len + t) * dim;
        for (acc, x) in v.iter_mut().zip(&hidden[start..start + dim]) {
            *acc += x;
        }
    }
    let n = tokens.max(1) as f32;
    v.iter_mut().for_each(|x| *x /= n);
    normalize(&mut v);
    v
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Splits indices sorted by length into runs whose longest is at most 1.5× its shortest
/// (plus a few tokens): padding a run to its longest then wastes at most a third of it.
fn length_groups(sorted: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (pos, &i) in sorted.iter().enumerate() {
        let first = len(sorted[start]);
        if len(i) > first + first / 2 + 4 {
            groups.push(&sorted[start..pos]);
            start = pos;
        }
    }
    if start < sorted.len() {
        groups.push(&sorted[start..]);
    }
    groups
}

fn candle(e: candle_core::Error) -> BertError {
    BertError::Candle(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_groups_bound_the_padding_and_keep_every_index() {
        let lens = [3, 4, 5, 9, 10, 30, 31, 200];
        let order: Vec<usize> = (0..lens.len()).collect();
        let groups = length_groups(&order, |i| lens[i]);
        assert_eq!(groups, vec![&[0, 1, 2][..], &[3, 4], &[5, 6], &[7]]);
        assert!(length_groups(&[], |i| i).is_empty());
    }
}
