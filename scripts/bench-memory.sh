#!/usr/bin/env bash
# Memory and start-up of a release worker with the built-in model and the cache off (so
# the figure is the worker's own, not the cache's; BENCH_CACHE_ENABLED=true to include it): model load time and RSS at start-up,
# then RSS after BENCH_REQUESTS (default 100,000) unique-text requests from `falcon load`.
#   BENCH_CONNECTIONS (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/throwaway.sh
. scripts/lib/throwaway.sh
requests=${BENCH_REQUESTS:-100000}
connections=${BENCH_CONNECTIONS:-50}
cargo build --release --locked -q -p falcon-cli
bin=$PWD/target/release/falcon
dir=$(mktemp -d)
port=$(free_port)
pid=""
cleanup() {
  stop_worker
  rm -rf "$dir"
}
trap cleanup EXIT
served() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^inference_requests_total/ && /status="success"/ { n += $2 } END { print n + 0 }'; }

(cd "$dir" && exec env HOST=127.0.0.1 PORT="$port" WORKER_ID=bench CACHE_ENABLED=${BENCH_CACHE_ENABLED:-false} "$bin" serve >"$dir/log" 2>&1) &
pid=$!
wait_http "http://127.0.0.1:$port/readyz" 30 || { cat "$dir/log"; exit 1; }
sleep 1
load_ms=$(sed -n 's/.*"load_ms":\([0-9.]*\).*/\1/p' "$dir/log" | head -n1)
echo "model load: ${load_ms} ms (built-in model); RSS after start-up: $(rss_mb) MB"
while [ "$(served)" -lt "$requests" ]; do
  "$bin" load --addr "127.0.0.1:$port" --connections "$connections" --duration 1 --scenario unique-text >/dev/null
done
sleep 1
echo "RSS after $(served) unique-text requests (CACHE_ENABLED=${BENCH_CACHE_ENABLED:-false}, $connections connections): $(rss_mb) MB"
