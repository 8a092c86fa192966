//! The request path's share of the request log: encoding a record and appending it to the
//! spool journal (what `RequestLog::record` does before the response goes out). Target:
//! ≤ 2 µs a record. Also the writer's decode, per record.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure should stop it loudly
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use falcon_app::adapters::request_log::LogRecord;

fn record() -> LogRecord {
    LogRecord {
        text_hash: Some(format!("{:064x}", 42)),
        text_length: Some(120),
        prediction: Some("positive".into()),
        confidence: Some(0.91),
        probabilities: Some(r#"{"negative":0.04,"neutral":0.05,"positive":0.91}"#.into()),
        success: true,
        processing_time_ms: 0.4,
        inference_time_ms: Some(0.01),
        client_ip: Some("127.0.0.1".into()),
        ..LogRecord::new(uuid::Uuid::now_v7().to_string(), "bench", "bench")
    }
}

fn bench(c: &mut Criterion) {
    let r = record();
    let mut buf = Vec::new();
    c.bench_function("log_record_encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&r).encode(0, &mut buf);
        })
    });
    buf.clear();
    r.encode(0, &mut buf);
    let encoded = buf.clone();
    c.bench_function("log_record_decode", |b| b.iter(|| LogRecord::decode(black_box(&encoded)).unwrap()));

    let dir = tempfile::tempdir().unwrap();
    let options = falcon_journal::Options { segment_bytes: 16 << 20, max_bytes: 1 << 30 };
    let (journal, mut reader, _) = falcon_journal::Journal::open(dir.path(), "bench", options).unwrap();
    c.bench_function("log_record_encode_and_journal_append", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(50_000);
                let started = Instant::now();
                for _ in 0..n {
                    buf.clear();
                    r.encode(0, &mut buf);
                    journal.append(&buf).unwrap();
                }
                timed += started.elapsed();
                done += n;
                // Untimed: the writer's side, so the journal stays small.
                let _ = journal.prepare_spare();
                loop {
                    let batch = reader.read(100_000).unwrap();
                    if batch.frames.is_empty() {
                        break;
                    }
                    reader.commit(batch.end).unwrap();
                }
            }
            timed
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
