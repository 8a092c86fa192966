//! The model in `models/` is what `falcon train` makes from `data/`: same weights, same
//! version, and it clears the quality bar on the held-out split.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use falcon_model::{SentimentModel, TrainOptions, load_vader_dir, train};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_model_clears_the_bar_and_is_reproducible_from_the_shipped_data() {
    let shipped = SentimentModel::load(&root().join("models/classifier.json")).unwrap();
    let m = &shipped.meta().metrics;
    assert!(m.accuracy >= 0.68, "accuracy {}", m.accuracy);
    assert!(m.macro_f1 >= 0.60, "macro-F1 {}", m.macro_f1);
    assert_eq!(m.n, 4741, "a 20 % stratified test split of 23,703 sentences");

    let data = load_vader_dir(&root().join("data/vader")).unwrap();
    assert_eq!(shipped.meta().training.data_sha256, data.sha256, "model trained on other data");
    let retrained = train(&data, &TrainOptions::default()).unwrap();
    assert_eq!(retrained.model_version(), shipped.model_version(), "retraining with the defaults changes the weights");
    assert_eq!(retrained.meta().metrics, shipped.meta().metrics);
}
