#!/usr/bin/env python3
"""PyTorch sentence-transformers' sentences/s on the same texts, batch sizes and thread count as
crates/falcon-bert/benches/throughput.rs (`make bench-minilm` runs both in one run). Prints JSON
lines like the Rust side. Environment: MINILM_DIR, BENCH_TEXTS, BENCH_BATCHES, BENCH_SECONDS,
BENCH_ROUNDS, BENCH_THREADS."""
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402


def main():
    threads = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    texts = [l for l in open(os.environ["BENCH_TEXTS"], encoding="utf-8").read().splitlines() if l.strip()]
    batches = [int(b) for b in os.environ.get("BENCH_BATCHES", "1,8,32").split(",")]
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    started = time.perf_counter()
    model = SentenceTransformer(os.environ["MINILM_DIR"], device="cpu")
    load_s = time.perf_counter() - started
    pos = 0
    for batch in batches:
        def take():
            nonlocal pos
            chunk = [texts[(pos + i) % len(texts)] for i in range(batch)]
            pos = (pos + batch) % len(texts)
            return chunk

        for _ in range(3):
            model.encode(take(), batch_size=batch, normalize_embeddings=True)
        rates = []
        for _ in range(rounds):
            t0, done = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                done += len(model.encode(take(), batch_size=batch, normalize_embeddings=True))
            rates.append(done / (time.perf_counter() - t0))
        rates.sort()
        print(json.dumps({"runtime": "torch", "batch": batch, "sentences_per_s": round(rates[len(rates) // 2], 2),
                          "rounds": [round(r, 2) for r in rates], "load_s": round(load_s, 3), "threads": threads}),
              flush=True)


if __name__ == "__main__":
    main()
