//! The binary model file: compact, checksummed, and read in place.
//!
//! The JSON file it replaces was 18.6 MB, took ~650 ms to parse and left ~117 MB resident
//! in a worker: a `String` and a hash-map slot per vocabulary term. This layout is read
//! where it lies (the shipped model straight from the binary's read-only data, a file from
//! one buffer): lookups hash an n-gram into a table stored in the file and compare it with
//! the term's bytes, weights are little-endian `f32`s read on use. Nothing is copied per
//! term, so loading is one checksum pass.
//!
//! ```text
//! offset      size        content (integers little-endian)
//! 0           8           magic "FALCONTF"
//! 8           4           format version (u32)
//! 12          4           header length H (u32)
//! 16          H           header: JSON (metadata, label names, shape of the sections)
//! 16+H        T           terms: every vocabulary term's UTF-8 bytes, in feature order
//!             4(n+1)      term offsets into the terms section (u32), n = features
//!             4·S         hash table: S slots (a power of two) of feature index + 1 (0 = empty)
//!             4n          idf (f32)
//!             4nk         coefficients, feature-major (f32), k = classes
//!             8k          intercepts (f64)
//! end-32      32          SHA-256 of every byte before it
//! ```
//!
//! `model_version` is a hash of the labels, the TF-IDF settings and the sections: the
//! content that decides predictions, not the training time or the evaluation report.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::eval::Evaluation;
use crate::logistic::{FitReport, TrainConfig};
use crate::tfidf::TfidfConfig;

pub const MAGIC: &[u8; 8] = b"FALCONTF";
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

/// The model file layout this build reads and writes (version 1 was the JSON file).
pub const FORMAT_VERSION: u32 = 2;
/// Larger files are refused before they are read (a wrong `MODEL_PATH` such as
/// `/dev/zero` must fail, not fill memory).
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
const CHECKSUM_BYTES: usize = 32;
const PREAMBLE_BYTES: usize = 16;

/// Descriptive metadata: everything but the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Content hash of labels, TF-IDF settings, vocabulary and weights.
    pub model_version: String,
    /// RFC 3339 time of training; differs between two otherwise identical runs.
    pub created_at: String,
    pub labels: Vec<String>,
    pub training: TrainingInfo,
    /// Metrics on the held-out test split.
    pub metrics: Evaluation,
}

/// The header: metadata plus the shape of the sections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    #[serde(flatten)]
    pub meta: ModelMeta,
    pub n_features: usize,
    pub terms_bytes: usize,
    pub table_slots: usize,
}

/// Bytes a model reads from: the binary's own read-only data, or a loaded file.
#[derive(Debug, Clone)]
pub enum Bytes {
    Static(&'static [u8]),
    Shared(Arc<[u8]>),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Static(b) => b,
            Self::Shared(b) => b,
        }
    }
}

/// Why a file is not a model this build can serve.
#[derive(Debug)]
pub(crate) enum FormatError {
    Corrupt(String),
    Incompatible(u32),
    Integrity { expected: String, actual: String },
}

/// Where each section lies in the file.
#[derive(Debug, Clone, Copy)]
struct Layout {
    terms: usize,
    offsets: usize,
    table: usize,
    idf: usize,
    coef: usize,
    intercept: usize,
    end: usize,
}

impl Layout {
    fn of(header_len: usize, h: &Header, n_classes: usize) -> Option<Self> {
        let n = h.n_features;
        let terms = PREAMBLE_BYTES.checked_add(header_len)?;
        let offsets = terms.checked_add(h.terms_bytes)?;
        let table = offsets.checked_add(n.checked_add(1)?.checked_mul(4)?)?;
        let idf = table.checked_add(h.table_slots.checked_mul(4)?)?;
        let coef = idf.checked_add(n.checked_mul(4)?)?;
        let intercept = coef.checked_add(n.checked_mul(n_classes)?.checked_mul(4)?)?;
        let end = intercept.checked_add(n_classes.checked_mul(8)?)?;
        Some(Self { terms, offsets, table, idf, coef, intercept, end })
    }
}

/// A decoded model: metadata, and the sections as views into its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub meta: ModelMeta,
    pub vocab: Vocab,
    pub idf: F32s,
    pub coef: F32s,
    pub intercept: Vec<f64>,
}

/// A run of little-endian `f32`s inside the model's bytes.
#[derive(Debug, Clone)]
pub(crate) struct F32s {
    bytes: Bytes,
    start: usize,
    len: usize,
}

impl F32s {
    /// The `i`-th value; 0.0 past the end (callers stay in bounds: decode checked the sizes).
    #[inline]
    pub fn get(&self, i: usize) -> f64 {
        let at = self.start + 4 * i;
        self.bytes
            .as_ref()
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0.0, |b| f64::from(f32::from_le_bytes(b)))
    }

    pub fn to_vec(&self) -> Vec<f64> {
        (0..self.len).map(|i| self.get(i)).collect()
    }
}

/// The vocabulary: term → feature index through a hash table stored in the file.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    bytes: Bytes,
    n: usize,
    terms: usize,
    offsets: usize,
    table: usize,
    mask: usize,
}

impl Vocab {
    fn u32_at(&self, at: usize) -> Option<u32> {
        self.bytes.as_ref().get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes)
    }

    /// The bytes of feature `i`'s term.
    fn term(&self, i: usize) -> Option<&[u8]> {
        let start = self.u32_at(self.offsets + 4 * i)? as usize;
        let end = self.u32_at(self.offsets + 4 * (i + 1))? as usize;
        self.bytes.as_ref().get(self.terms + start..self.terms + end)
    }

    /// The feature index of `term`, if it is in the vocabulary.
    #[inline]
    pub fn get(&self, term: &str) -> Option<u32> {
        let mut slot = hash(term.as_bytes()) as usize & self.mask;
        loop {
            let entry = self.u32_at(self.table + 4 * slot)?;
            if entry == 0 {
                return None;
            }
            let index = entry - 1;
            if self.term(index as usize)? == term.as_bytes() {
                return Some(index);
            }
            slot = (slot + 1) & self.mask;
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    /// Every term, in feature order.
    pub fn terms(&self) -> Vec<String> {
        (0..self.n).map(|i| String::from_utf8_lossy(self.term(i).unwrap_or_default()).into_owned()).collect()
    }
}

/// FNV-1a, 64-bit: stable across builds and platforms (the table is stored in the file),
/// and cheap for short n-grams.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What goes into a model file.
pub(crate) struct Parts<'a> {
    pub meta: ModelMeta,
    pub terms: &'a [String],
    pub idf: &'a [f64],
    /// Feature-major, `n_features × n_classes`.
    pub coef: &'a [f64],
    pub intercept: &'a [f64],
}

/// Sections of a model, in file order, with `meta.model_version` unset.
fn sections(p: &Parts<'_>) -> Result<(Vec<u8>, usize, usize), String> {
    let n = p.terms.len();
    let mut out = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    for t in p.terms {
        offsets.push(u32::try_from(out.len()).map_err(|_| "vocabulary over 4 GiB")?);
        out.extend_from_slice(t.as_bytes());
    }
    offsets.push(u32::try_from(out.len()).map_err(|_| "vocabulary over 4 GiB")?);
    let terms_bytes = out.len();
    for o in offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    let slots = (2 * n).next_power_of_two().max(8);
    let mut table = vec![0u32; slots];
    for (i, t) in p.terms.iter().enumerate() {
        let mut slot = hash(t.as_bytes()) as usize & (slots - 1);
        while table[slot] != 0 {
            slot = (slot + 1) & (slots - 1);
        }
        table[slot] = u32::try_from(i + 1).map_err(|_| "too many features")?;
    }
    for e in table {
        out.extend_from_slice(&e.to_le_bytes());
    }
    for &v in p.idf {
        out.extend_from_slice(&(v as f32).to_le_bytes());
    }
    for &v in p.coef {
        out.extend_from_slice(&(v as f32).to_le_bytes());
    }
    for &v in p.intercept {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok((out, terms_bytes, slots))
}

fn content_version(labels: &[String], tfidf: &TfidfConfig, sections: &[u8]) -> String {
    let mut h = Sha256::new();
    // Serialising plain strings and numbers cannot fail.
    h.update(serde_json::to_vec(&(labels, tfidf)).unwrap_or_default());
    h.update(sections);
    hex::encode(&h.finalize()[..8])
}

/// Encodes a model file; sets `model_version` from the content. Returns the bytes and the
/// version.
pub(crate) fn encode(p: Parts<'_>) -> Result<(Vec<u8>, String), String> {
    let (body, terms_bytes, table_slots) = sections(&p)?;
    let mut meta = p.meta;
    meta.model_version = content_version(&meta.labels, &meta.training.tfidf, &body);
    let version = meta.model_version.clone();
    let header = Header { meta, n_features: p.terms.len(), terms_bytes, table_slots };
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(PREAMBLE_BYTES + header.len() + body.len() + CHECKSUM_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&u32::try_from(header.len()).map_err(|_| "header over 4 GiB")?.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok((out, version))
}

/// Checks and decodes a model file: magic, version, checksum, header, section sizes,
/// content hash, and that every weight is finite.
pub(crate) fn decode(bytes: Bytes) -> Result<Decoded, FormatError> {
    let corrupt = |m: &str| FormatError::Corrupt(m.to_owned());
    let b = bytes.as_ref();
    if b.first() == Some(&b'{') {
        return Err(FormatError::Incompatible(1));
    }
    if b.len() < PREAMBLE_BYTES + CHECKSUM_BYTES || &b[..8] != MAGIC {
        return Err(corrupt("not a Falcon model file (bad magic bytes)"));
    }
    let u32_at = |at: usize| b.get(at..at + 4).and_then(|s| <[u8; 4]>::try_from(s).ok()).map(u32::from_le_bytes);
    let version = u32_at(8).ok_or_else(|| corrupt("truncated"))?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Incompatible(version));
    }
    let (content, sum) = b.split_at(b.len() - CHECKSUM_BYTES);
    if Sha256::digest(content).as_slice() != sum {
        return Err(corrupt("checksum mismatch (truncated or damaged file)"));
    }
    let header_len = u32_at(12).ok_or_else(|| corrupt("truncated"))? as usize;
    let header = content.get(PREAMBLE_BYTES..PREAMBLE_BYTES + header_len).ok_or_else(|| corrupt("truncated header"))?;
    let header: Header = serde_json::from_slice(header).map_err(|e| FormatError::Corrupt(format!("header: {e}")))?;
    let k = header.meta.labels.len();
    if k < 2 {
        return Err(corrupt("a model needs at least two labels"));
    }
    let tfidf = header.meta.training.tfidf;
    if tfidf.min_n == 0 || tfidf.min_n > tfidf.max_n {
        return Err(FormatError::Corrupt(format!("bad n-gram range {}..={}", tfidf.min_n, tfidf.max_n)));
    }
    if !header.table_slots.is_power_of_two() || header.table_slots <= header.n_features {
        return Err(corrupt("bad hash table size"));
    }
    let layout = Layout::of(header_len, &header, k).ok_or_else(|| corrupt("section sizes overflow"))?;
    if layout.end != content.len() {
        return Err(FormatError::Corrupt(format!(
            "sections need {} bytes, the file has {}",
            layout.end,
            content.len()
        )));
    }
    let actual = content_version(&header.meta.labels, &tfidf, &content[layout.terms..layout.end]);
    if actual != header.meta.model_version {
        return Err(FormatError::Integrity { expected: header.meta.model_version, actual });
    }
    let n = header.n_features;
    let f32s = |start: usize, len: usize| F32s { bytes: bytes.clone(), start, len };
    let idf = f32s(layout.idf, n);
    let coef = f32s(layout.coef, n * k);
    if (0..n).any(|i| !(idf.get(i).is_finite() && idf.get(i) > 0.0)) {
        return Err(corrupt("an idf weight is not a positive finite number"));
    }
    if (0..n * k).any(|i| !coef.get(i).is_finite()) {
        return Err(corrupt("a coefficient is not finite"));
    }
    let intercept: Vec<f64> = content[layout.intercept..layout.end]
        .chunks_exact(8)
        .filter_map(|c| <[u8; 8]>::try_from(c).ok().map(f64::from_le_bytes))
        .collect();
    if intercept.iter().any(|v| !v.is_finite()) {
        return Err(corrupt("an intercept is not finite"));
    }
    let vocab = Vocab {
        bytes: bytes.clone(),
        n,
        terms: layout.terms,
        offsets: layout.offsets,
        table: layout.table,
        mask: header.table_slots - 1,
    };
    // Offsets must rise within the terms section, or a lookup could read past it.
    let mut last = 0;
    for i in 0..=n {
        let o = vocab.u32_at(layout.offsets + 4 * i).unwrap_or(u32::MAX) as usize;
        if o < last || o > header.terms_bytes || (i == 0 && o != 0) {
            return Err(corrupt("term offsets out of order"));
        }
        last = o;
    }
    Ok(Decoded { meta: header.meta, vocab, idf, coef, intercept })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_function() {
        // Test vectors of FNV-1a 64 (the hash table is stored in files: it must never change).
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
