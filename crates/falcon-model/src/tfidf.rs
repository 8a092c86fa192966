//! TF-IDF over word n-grams, with the same weighting as scikit-learn's `TfidfVectorizer`
//! (smooth idf, optional sublinear tf, L2-normalised rows), producing sparse vectors.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::tokenize::for_each_ngram;

/// A sparse vector: `(feature index, value)` pairs sorted by index, indices unique.
pub type SparseVec = Vec<(u32, f64)>;

/// The L2-normalised TF-IDF vector of a document from the feature indices of its n-grams
/// (one per occurrence, any order). The one definition of the weighting: training
/// (`Vectorizer::transform`) and serving (`SentimentModel::predict`) both call it.
pub fn weigh(mut hits: Vec<u32>, sublinear_tf: bool, idf: impl Fn(u32) -> f64) -> SparseVec {
    hits.sort_unstable();
    let mut out: SparseVec = Vec::with_capacity(hits.len());
    for i in hits {
        match out.last_mut() {
            Some((last, count)) if *last == i => *count += 1.0,
            _ => out.push((i, 1.0)),
        }
    }
    let mut norm = 0.0;
    for (i, v) in &mut out {
        let tf = if sublinear_tf { 1.0 + v.ln() } else { *v };
        *v = tf * idf(*i);
        norm += *v * *v;
    }
    if norm > 0.0 {
        let norm = norm.sqrt();
        for (_, v) in &mut out {
            *v /= norm;
        }
    }
    out
}

/// How the vectoriser builds features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TfidfConfig {
    /// Smallest n-gram length (1 = unigrams).
    pub min_n: usize,
    /// Largest n-gram length.
    pub max_n: usize,
    /// Keep an n-gram only if it occurs in at least this many training documents (a count).
    pub min_df: usize,
    /// Use `1 + ln(tf)` instead of the raw count.
    pub sublinear_tf: bool,
}

impl Default for TfidfConfig {
    fn default() -> Self {
        Self { min_n: 1, max_n: 2, min_df: 1, sublinear_tf: true }
    }
}

/// A fitted vectoriser: the vocabulary and each term's inverse document frequency.
#[derive(Debug, Clone)]
pub struct Vectorizer {
    config: TfidfConfig,
    terms: Vec<String>,
    idf: Vec<f64>,
    index: HashMap<String, u32>,
}

impl Vectorizer {
    /// Learns the vocabulary and idf weights from normalised documents (`normalize`). Terms
    /// are sorted, so the same documents always give the same feature indices.
    pub fn fit(docs: &[String], config: TfidfConfig) -> Self {
        let mut df: HashMap<String, usize> = HashMap::new();
        let mut seen: Vec<String> = Vec::new();
        for doc in docs {
            seen.clear();
            for_each_ngram(doc, config.min_n, config.max_n, |g| seen.push(g.to_owned()));
            seen.sort_unstable();
            seen.dedup();
            for g in seen.drain(..) {
                *df.entry(g).or_insert(0) += 1;
            }
        }
        let mut kept: Vec<(String, usize)> = df.into_iter().filter(|(_, n)| *n >= config.min_df.max(1)).collect();
        kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let n_docs = docs.len() as f64;
        let idf = kept.iter().map(|(_, n)| ((1.0 + n_docs) / (1.0 + *n as f64)).ln() + 1.0).collect();
        let terms = kept.into_iter().map(|(t, _)| t).collect();
        Self::build(config, terms, idf)
    }

    /// Rebuilds a vectoriser from stored parts, checking that they fit together.
    pub fn from_parts(config: TfidfConfig, terms: Vec<String>, idf: Vec<f64>) -> Result<Self, String> {
        if terms.len() != idf.len() {
            return Err(format!("{} terms but {} idf weights", terms.len(), idf.len()));
        }
        if config.min_n == 0 || config.min_n > config.max_n {
            return Err(format!("bad n-gram range {}..={}", config.min_n, config.max_n));
        }
        if let Some(bad) = idf.iter().find(|w| !w.is_finite() || **w <= 0.0) {
            return Err(format!("idf weight {bad} is not a positive finite number"));
        }
        if terms.len() > u32::MAX as usize {
            return Err("vocabulary too large".into());
        }
        let v = Self::build(config, terms, idf);
        if v.index.len() != v.terms.len() {
            return Err("vocabulary has duplicate terms".into());
        }
        Ok(v)
    }

    fn build(config: TfidfConfig, terms: Vec<String>, idf: Vec<f64>) -> Self {
        let index = terms.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Self { config, terms, idf, index }
    }

    /// The L2-normalised TF-IDF vector of one normalised document (`normalize`). Unknown
    /// n-grams are ignored; a document with no known n-gram gives the empty vector.
    pub fn transform(&self, normalized: &str) -> SparseVec {
        let mut hits: Vec<u32> = Vec::with_capacity(normalized.len() / 2);
        for_each_ngram(normalized, self.config.min_n, self.config.max_n, |g| {
            if let Some(&i) = self.index.get(g) {
                hits.push(i);
            }
        });
        weigh(hits, self.config.sublinear_tf, |i| self.idf[i as usize])
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// True when the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The configuration it was fitted with.
    pub fn config(&self) -> TfidfConfig {
        self.config
    }

    /// Terms in feature-index order.
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// Inverse document frequencies in feature-index order.
    pub fn idf(&self) -> &[f64] {
        &self.idf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::normalize;

    fn docs(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| normalize(t)).collect()
    }

    fn raw(min_df: usize) -> TfidfConfig {
        TfidfConfig { min_n: 1, max_n: 2, min_df, sublinear_tf: false }
    }

    #[test]
    fn min_df_is_a_document_count() {
        let v = Vectorizer::fit(&docs(&["good movie", "good film", "bad bad"]), raw(2));
        assert_eq!(v.terms(), ["good"]);
        let v = Vectorizer::fit(&docs(&["good movie", "good film", "bad bad"]), raw(1));
        assert_eq!(v.terms(), ["bad", "bad bad", "film", "good", "good film", "good movie", "movie"]);
    }

    #[test]
    fn idf_matches_smooth_formula() {
        // 3 docs; "good" in 2 of them: ln(4/3) + 1. "bad" in 1: ln(4/2) + 1.
        let v = Vectorizer::fit(&docs(&["good movie", "good film", "bad"]), raw(1));
        let idf = |t: &str| v.idf()[v.terms().iter().position(|x| x == t).unwrap()];
        assert!((idf("good") - ((4.0f64 / 3.0).ln() + 1.0)).abs() < 1e-12);
        assert!((idf("bad") - (2.0f64.ln() + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn transform_is_l2_normalised_and_counts_repeats() {
        let v = Vectorizer::fit(&docs(&["a b", "a c", "b c"]), raw(1));
        let x = v.transform(&normalize("a a b"));
        let norm: f64 = x.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-12);
        // idf of a and b is equal, "a" occurs twice: its weight is twice b's.
        let a = v.terms().iter().position(|t| t == "a").unwrap() as u32;
        let b = v.terms().iter().position(|t| t == "b").unwrap() as u32;
        let get = |i| x.iter().find(|(j, _)| *j == i).unwrap().1;
        assert!((get(a) / get(b) - 2.0).abs() < 1e-12);
        assert!(x.windows(2).all(|w| w[0].0 < w[1].0), "indices sorted and unique");
    }

    #[test]
    fn sublinear_tf_dampens_repeats() {
        let cfg = TfidfConfig { sublinear_tf: true, ..raw(1) };
        let v = Vectorizer::fit(&docs(&["a b", "a c", "b c"]), cfg);
        let x = v.transform(&normalize("a a b"));
        let a = v.terms().iter().position(|t| t == "a").unwrap() as u32;
        let b = v.terms().iter().position(|t| t == "b").unwrap() as u32;
        let get = |i| x.iter().find(|(j, _)| *j == i).unwrap().1;
        assert!((get(a) / get(b) - (1.0 + 2.0f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn unknown_text_gives_empty_vector() {
        let v = Vectorizer::fit(&docs(&["a b", "a c"]), raw(1));
        assert!(v.transform(&normalize("zzz qqq")).is_empty());
    }

    #[test]
    fn from_parts_rejects_mismatched_parts() {
        assert!(Vectorizer::from_parts(raw(1), vec!["a".into()], vec![]).is_err());
        assert!(Vectorizer::from_parts(raw(1), vec!["a".into(), "a".into()], vec![1.0, 1.0]).is_err());
        assert!(Vectorizer::from_parts(raw(1), vec!["a".into()], vec![f64::NAN]).is_err());
    }
}
