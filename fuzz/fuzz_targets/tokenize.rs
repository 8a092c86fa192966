//! Tokenisation, normalisation and prediction of the shipped TF-IDF model on any text: no
//! panic, and every answer a probability distribution over the three classes.
#![no_main]

use std::sync::OnceLock;

use falcon_backend::Backend;
use falcon_model::SentimentModel;
use falcon_model::tokenize::{normalize, tokenize};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static SentimentModel {
    static MODEL: OnceLock<SentimentModel> = OnceLock::new();
    MODEL.get_or_init(|| SentimentModel::shipped().unwrap_or_else(|e| panic!("the shipped model loads: {e}")))
}

fuzz_target!(|text: &str| {
    let tokens = tokenize(text);
    assert!(tokens.iter().all(|t| !t.is_empty()), "no empty token");
    let model = model();
    let p = model.predict(text);
    // The response cache keys on the normalised text, so two texts with one normal form
    // share an answer: that is right only if the model answers the normal form the same.
    let key = normalize(text);
    assert_eq!(model.normalize(text), key);
    assert_eq!(model.predict(&key).probabilities, p.probabilities, "normal form {key:?} answers differently");
    assert_eq!(p.probabilities.len(), 3);
    assert!(p.class < 3);
    assert!(p.probabilities.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)), "{:?}", p.probabilities);
    let sum: f64 = p.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-9, "probabilities sum to {sum}");
    assert_eq!(p.confidence, p.probabilities[p.class]);
});
