//! Sentences per second of the MiniLM backend at batch sizes 1, 8 and 32 (`make
//! bench-minilm`, which runs PyTorch sentence-transformers on the same texts with the same
//! thread count in the same run). Not criterion: one figure per batch size, the median of a
//! few timed rounds, printed as JSON lines for the script to compare.
//!
//! Environment: `MINILM_DIR` (the encoder), `BENCH_TEXTS` (a file, one text per line),
//! `BENCH_BATCHES` (default `1,8,32`), `BENCH_SECONDS` (per round, default 3), `BENCH_ROUNDS`
//! (default 3), `BENCH_RUNTIMES` (default `candle,onnx`), `BENCH_THREADS` (ONNX Runtime's
//! threads; candle's are `RAYON_NUM_THREADS`: the script sets both alike; default: the cores).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed unwrap is a failed run

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use falcon_backend::Backend;
use falcon_bert::{Encoder, Runtime, SentenceClassifier};
use std::sync::Arc;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let dir = PathBuf::from(env_or("MINILM_DIR", ".tools/models/all-MiniLM-L6-v2"));
    let texts_file = std::env::var("BENCH_TEXTS").expect("BENCH_TEXTS: a file of texts, one a line");
    let texts: Vec<String> = std::fs::read_to_string(&texts_file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let batches: Vec<usize> = env_or("BENCH_BATCHES", "1,8,32").split(',').map(|b| b.trim().parse().unwrap()).collect();
    let seconds: f64 = env_or("BENCH_SECONDS", "3").parse().unwrap();
    let rounds: usize = env_or("BENCH_ROUNDS", "3").parse().unwrap();

    let threads: usize = env_or("BENCH_THREADS", "0").parse().unwrap();
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    for runtime in env_or("BENCH_RUNTIMES", "candle,onnx").split(',') {
        let runtime = Runtime::choose(Some(runtime), &dir).unwrap();
        run(&dir, runtime, threads, &texts, &batches, seconds, rounds);
    }
}

fn run(
    dir: &std::path::Path,
    runtime: Runtime,
    threads: usize,
    texts: &[String],
    batches: &[usize],
    seconds: f64,
    rounds: usize,
) {
    let started = Instant::now();
    let encoder = Encoder::load_with(dir, runtime, &Device::Cpu, threads).unwrap();
    let model = SentenceClassifier::new(Arc::new(encoder), falcon_bert::shipped_head().unwrap()).unwrap();
    let load_s = started.elapsed().as_secs_f64();
    let name = runtime.name();
    let tokens: usize = texts.iter().map(|t| model.encoder().tokenize(t).unwrap().ids.len()).sum();
    eprintln!(
        "{name}: {} texts, {:.1} tokens each on average, weights loaded in {load_s:.2} s, {threads} threads",
        texts.len(),
        tokens as f64 / texts.len() as f64
    );
    for &batch in batches {
        let mut next = 0;
        let mut take = || {
            let chunk: Vec<&str> = (0..batch).map(|i| texts[(next + i) % texts.len()].as_str()).collect();
            next = (next + batch) % texts.len();
            chunk
        };
        // Warm-up: the allocator and the caches.
        for _ in 0..3 {
            model.predict_batch(&take()).unwrap();
        }
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let (t0, mut done) = (Instant::now(), 0usize);
            while t0.elapsed() < Duration::from_secs_f64(seconds) {
                done += model.predict_batch(&take()).unwrap().len();
            }
            rates.push(done as f64 / t0.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{{\"runtime\":\"{name}\",\"batch\":{batch},\"sentences_per_s\":{median:.2},\"rounds\":{rates:?},\"load_s\":{load_s:.3},\"threads\":{threads}}}"
        );
    }
}
