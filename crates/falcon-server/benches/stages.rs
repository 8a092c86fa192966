//! The request path stage by stage, so a regression shows up in one stage: normalise and
//! hash (the cache key, HMAC-SHA256), the in-process cache's get and insert (unique keys, a full cache:
//! every insert evicts), the request id, and the response's serialisation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure should stop it loudly
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use falcon_app::adapters::cache::MemoryCache;
use falcon_app::text_key::TextKey;
use falcon_backend::Prediction;
use falcon_server::http::api::{InferResponse, new_request_id};

const TEXT: &str =
    "The service was quick and the staff were friendly, but the food arrived cold and the bill was simply wrong.";

fn bench(c: &mut Criterion) {
    let key = TextKey::new(b"the benchmark's text hash key").unwrap();
    let cache_key = |version: &str, text: &str| key.cache_key("sentiment", version, text);
    c.bench_function("stage_normalize_and_cache_key", |b| {
        b.iter(|| cache_key("v1", &falcon_model::normalize(black_box(TEXT))))
    });

    let prediction = Arc::new(Prediction { class: 2, confidence: 0.9, probabilities: vec![0.05, 0.05, 0.9] });
    let cache = MemoryCache::new(10_000, Duration::from_secs(3600));
    let now = Instant::now();
    for i in 0..10_000 {
        cache.put_now(&cache_key("v1", &format!("warm {i}")), Arc::clone(&prediction), now);
    }
    let keys: Vec<String> = (0..100_000).map(|i| cache_key("v1", &format!("unique {i}"))).collect();
    let mut i = 0;
    c.bench_function("stage_cache_insert_full_cache", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            cache.put_now(&keys[i], Arc::clone(&prediction), now);
        })
    });
    let hit = cache_key("v1", "unique 5");
    cache.put_now(&hit, Arc::clone(&prediction), now);
    c.bench_function("stage_cache_get_hit", |b| b.iter(|| cache.get_now(black_box(&hit), now)));
    c.bench_function("stage_cache_get_miss", |b| b.iter(|| cache.get_now(black_box("cache:absent"), now)));

    c.bench_function("stage_request_id", |b| b.iter(new_request_id));

    let labels: Vec<String> = ["negative", "neutral", "positive"].map(String::from).to_vec();
    let response = InferResponse {
        prediction: prediction.label(&labels).to_owned(),
        confidence: prediction.confidence,
        probabilities: prediction.by_label(&labels).map(|(l, p)| (l.to_owned(), p)).collect(),
        cache_hit: false,
        idempotency_hit: false,
        worker_id: "worker-1".into(),
        model: "sentiment".into(),
        model_version: "v1".into(),
        processing_time_ms: 0.094,
        request_id: new_request_id(),
    };
    let mut buf = Vec::with_capacity(512);
    c.bench_function("stage_response_json", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&response)).unwrap();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
