//! Prediction latency of the shipped model. Target: p50 ≤ 10 µs for a 20-word sentence
//! on one core. Criterion's "time" line is the median-centred estimate per call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use falcon_model::SentimentModel;

/// 20 words.
const SENTENCE: &str =
    "The service was quick and the staff were friendly, but the food arrived cold and the bill was simply wrong.";

fn bench(c: &mut Criterion) {
    let model = match SentimentModel::shipped() {
        Ok(m) => m,
        Err(e) => panic!("benchmark needs the shipped model: {e}"),
    };
    assert_eq!(SENTENCE.split_whitespace().count(), 20);
    c.bench_function("predict_20_words", |b| b.iter(|| model.predict(black_box(SENTENCE))));
    c.bench_function("normalize_20_words", |b| b.iter(|| falcon_model::normalize(black_box(SENTENCE))));
    let long = SENTENCE.repeat(100);
    c.bench_function("load_shipped_model", |b| b.iter(|| SentimentModel::shipped().map(|m| m.n_features())));
    c.bench_function("predict_2000_words", |b| b.iter(|| model.predict(black_box(&long))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
