//! Falcon's sentiment classifier: tokenisation, TF-IDF over word 1–2-grams, multinomial
//! logistic regression, training, evaluation and the compact, checksummed model file.
//! It implements `falcon_backend::Backend` as the `tfidf` backend.
//!
//! Pure and synchronous: no async, no I/O beyond reading data and model files.
#![forbid(unsafe_code)]

pub mod dataset;
pub mod error;
pub mod eval;
pub mod format;
pub mod logistic;
pub mod model;
pub mod tfidf;
pub mod tokenize;
pub mod train;

pub use dataset::{CsvColumns, Dataset, LABELS, load_csv, load_vader_dir};
pub use error::ModelError;
pub use model::{FORMAT_VERSION, MAX_INPUT_CHARS, ModelMeta, Prediction, SentimentModel};
pub use tokenize::normalize;
pub use train::{Fitted, TrainOptions, build, fit, train};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A small labelled set that trains in milliseconds.
    fn tiny() -> Dataset {
        let pos =
            ["great movie", "i love it", "wonderful and great", "love this", "so good", "great fun", "good great"];
        let neg = ["terrible movie", "i hate it", "awful and bad", "hate this", "so bad", "bad boring", "awful awful"];
        let neu = ["the movie", "it is a film", "a film it is", "this is it", "the film", "a movie", "is the"];
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        for (k, set) in [neg, neu, pos].iter().enumerate() {
            for t in set.iter() {
                texts.push((*t).to_owned());
                labels.push(k);
            }
        }
        let label_names = LABELS.iter().map(|&l| l.to_owned()).collect();
        Dataset { texts, labels, label_names, sha256: "test".into(), files: vec![] }
    }

    fn trained() -> SentimentModel {
        let opts = TrainOptions { tfidf: tfidf::TfidfConfig { min_df: 1, ..Default::default() }, ..Default::default() };
        train(&tiny(), &opts).unwrap()
    }

    #[test]
    fn training_is_deterministic_except_created_at() {
        let a = trained();
        let b = trained();
        assert_eq!(a.model_version(), b.model_version());
        assert_eq!(a.coefficients(), b.coefficients());
        assert_eq!(a.meta().metrics, b.meta().metrics);
        assert_eq!(a.model_version().len(), 16);
    }

    #[test]
    fn trained_model_separates_clear_cases() {
        let m = trained();
        assert_eq!(m.labels()[m.predict("what a great great movie").class], "positive");
        assert_eq!(m.labels()[m.predict("awful, I hate it").class], "negative");
        let p = m.predict("anything at all");
        assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(p.confidence, p.probabilities[p.class]);
    }

    #[test]
    fn model_file_round_trips_exactly() {
        let m = trained();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        m.save(&path).unwrap();
        let back = SentimentModel::load(&path).unwrap();
        assert_eq!(back.model_version(), m.model_version());
        assert_eq!(back.meta(), m.meta());
        for text in ["great movie", "so bad", "zzz"] {
            assert_eq!(back.predict(text), m.predict(text));
        }
    }

    #[test]
    fn every_term_is_found_and_others_are_not() {
        let m = trained();
        let terms = m.vocab_terms();
        assert!(!terms.is_empty());
        for (i, t) in terms.iter().enumerate() {
            assert_eq!(m.feature_index(t), Some(i as u32), "{t}");
        }
        for t in ["", "zzz", "great movie!", "grea"] {
            assert_eq!(m.feature_index(t), None, "{t}");
        }
    }

    fn load_bytes(bytes: Vec<u8>) -> Result<SentimentModel, ModelError> {
        SentimentModel::from_bytes(model::Bytes::Shared(bytes.into()), Path::new("m.bin"))
    }

    #[test]
    fn truncated_or_damaged_files_are_rejected() {
        let bytes = trained().to_bytes().to_vec();
        let err = load_bytes(bytes[..bytes.len() / 2].to_vec()).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        let err = load_bytes(flipped).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(matches!(load_bytes(Vec::new()).unwrap_err(), ModelError::Corrupt { .. }));
    }

    #[test]
    fn tampered_weights_with_a_fixed_checksum_fail_the_content_check() {
        use sha2::{Digest, Sha256};
        let mut bytes = trained().to_bytes().to_vec();
        let body = bytes.len() - 32;
        // The last intercept, then a checksum that matches the tampered file.
        bytes[body - 1] ^= 0x01;
        let sum = Sha256::digest(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum);
        let err = load_bytes(bytes).unwrap_err();
        assert!(matches!(err, ModelError::Integrity { .. }), "{err}");
    }

    #[test]
    fn other_format_versions_and_foreign_files_are_rejected() {
        let mut future = trained().to_bytes().to_vec();
        future[8..12].copy_from_slice(&3u32.to_le_bytes());
        let err = load_bytes(future).unwrap_err();
        assert!(matches!(err, ModelError::Incompatible { found: 3, supported: 2, .. }), "{err}");
        let err = load_bytes(br#"{"format":"falcon-sentiment-model","format_version":1}"#.to_vec()).unwrap_err();
        assert!(matches!(err, ModelError::Incompatible { found: 1, .. }), "{err}");
        let err =
            load_bytes(b"\x80\x81garbage that is long enough to have a checksum at its end".to_vec()).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = SentimentModel::load(Path::new("/nonexistent/model.bin")).unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/model.bin"));
    }

    #[test]
    fn an_endless_file_is_refused_without_reading_it_all() {
        let err = SentimentModel::load(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a model file"), "{err}");
    }
}
