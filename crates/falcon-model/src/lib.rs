//! Falcon's sentiment classifier: tokenisation, TF-IDF over word 1–2-grams, multinomial
//! logistic regression, training, evaluation and the versioned model file.
//!
//! Pure and synchronous: no async, no I/O beyond reading data and model files.
#![forbid(unsafe_code)]

pub mod dataset;
pub mod error;
pub mod eval;
pub mod logistic;
pub mod model;
pub mod tfidf;
pub mod tokenize;
pub mod train;

pub use dataset::{Dataset, LABELS, load_vader_dir};
pub use error::ModelError;
pub use model::{FORMAT_VERSION, Prediction, SentimentModel};
pub use tokenize::normalize;
pub use train::{TrainOptions, train};

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
        Dataset { texts, labels, sha256: "test".into(), files: vec![] }
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
        let path = dir.path().join("m.json");
        m.save(&path).unwrap();
        let back = SentimentModel::load(&path).unwrap();
        assert_eq!(back.model_version(), m.model_version());
        assert_eq!(back.meta(), m.meta());
        for text in ["great movie", "so bad", "zzz"] {
            assert_eq!(back.predict(text), m.predict(text));
        }
    }

    #[test]
    fn truncated_file_is_rejected() {
        let bytes = trained().to_json();
        let err = SentimentModel::from_json(&bytes[..bytes.len() / 2], Path::new("m.json")).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn tampered_weights_fail_the_integrity_check() {
        let text = String::from_utf8(trained().to_json()).unwrap();
        let pos = text.find("\"intercept\":[").unwrap() + "\"intercept\":[".len();
        let tampered = format!("{}9{}", &text[..pos], &text[pos..]);
        let err = SentimentModel::from_json(tampered.as_bytes(), Path::new("m.json")).unwrap_err();
        assert!(matches!(err, ModelError::Integrity { .. }), "{err}");
    }

    #[test]
    fn other_format_versions_and_foreign_files_are_rejected() {
        let text = String::from_utf8(trained().to_json()).unwrap();
        let future = text.replace("\"format_version\":1", "\"format_version\":2");
        let err = SentimentModel::from_json(future.as_bytes(), Path::new("m.json")).unwrap_err();
        assert!(matches!(err, ModelError::Incompatible { found: 2, supported: 1, .. }), "{err}");
        let err = SentimentModel::from_json(b"{\"hello\":1}", Path::new("m.json")).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
        let err = SentimentModel::from_json(b"\x80\x81garbage", Path::new("m.json")).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = SentimentModel::load(Path::new("/nonexistent/model.json")).unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/model.json"));
    }
}
