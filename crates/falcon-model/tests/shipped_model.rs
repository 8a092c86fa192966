//! The model compiled into the binary (`models/classifier.bin`) is what `falcon train`
//! makes from `data/`: same weights, same version, predictions within 1e-5 of the
//! full-precision weights on every held-out sentence, and it clears the quality bar.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use falcon_model::{SentimentModel, TrainOptions, build, fit, load_vader_dir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_model_clears_the_bar_and_is_reproducible_from_the_shipped_data() {
    let shipped = SentimentModel::shipped().unwrap();
    let on_disk = SentimentModel::load(&root().join("models/classifier.bin")).unwrap();
    assert_eq!(on_disk.to_bytes(), shipped.to_bytes(), "the binary embeds models/classifier.bin");
    let m = &shipped.meta().metrics;
    assert!(m.accuracy >= 0.68, "accuracy {}", m.accuracy);
    assert!(m.macro_f1 >= 0.60, "macro-F1 {}", m.macro_f1);
    assert_eq!(m.n, 4741, "a 20 % stratified test split of 23,703 sentences");

    let data = load_vader_dir(&root().join("data/vader")).unwrap();
    assert_eq!(shipped.meta().training.data_sha256, data.sha256, "model trained on other data");
    let fitted = fit(&data, &TrainOptions::default()).unwrap();
    let retrained = build(&data, &fitted).unwrap();
    assert_eq!(retrained.model_version(), shipped.model_version(), "retraining with the defaults changes the weights");
    assert_eq!(retrained.meta().metrics, shipped.meta().metrics);

    // f32 storage against the optimiser's f64 weights, on the whole held-out split.
    let mut worst = 0.0f64;
    for &i in &fitted.test_idx {
        let full = fitted.predict_proba(&data.texts[i]);
        let served = shipped.predict(&data.texts[i]);
        let best = (0..full.len()).fold(0, |b, k| if full[k] > full[b] { k } else { b });
        assert_eq!(served.class, best, "label changed for held-out sentence {i}");
        for (a, b) in full.iter().zip(&served.probabilities) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-5, "max |Δp| {worst:e} over the held-out split");
}
