#!/usr/bin/env bash
# HTTP benchmark: a release worker on a free loopback port, driven by `falcon load` with
# 50 keep-alive connections per scenario: GET /healthz (the floor), POST /infer with one
# repeated text (cache hits), POST /infer with a unique text per request (real inference).
# Prints req/s, p50/p99 and each scenario's throughput as a ratio to /healthz.
#   BENCH_DURATION (s, default 10), BENCH_CONNECTIONS (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${BENCH_DURATION:-10}
connections=${BENCH_CONNECTIONS:-50}
cargo build --release --locked -q -p falcon-cli
bin=target/release/falcon
log=$(mktemp)
pid=""
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -f "$log"' EXIT
# The worker logs its bound address once it listens.
HOST=127.0.0.1 PORT=0 WORKER_ID=bench "$bin" serve >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  addr=$(sed -n 's/.*"address":"\([^"]*\)".*"message":"Worker listening".*/\1/p' "$log" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "${addr:-}" ] || { echo "worker did not start:"; cat "$log"; exit 1; }
echo "worker at $addr ($(nproc) cores shared by worker and load generator), ${duration}s per scenario, $connections connections"
"$bin" load --addr "$addr" --connections "$connections" --duration "$duration"
