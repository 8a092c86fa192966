#!/usr/bin/env bash
# Start-up time and memory of a release worker serving 1, 2 and 5 models (BENCH_MODELS) from
# a model repository (MODEL_REPOSITORY): the built-in sentiment model, plus models/classifier.bin
# under other names (each a TF-IDF model of the shipped one's size, loaded and checked on its
# own). Per count: the time from exec to "Worker listening", the models' load times, RSS once
# started, and RSS after BENCH_REQUESTS (default 200) requests to each model. The cache and the
# request log are off, so the figures are the models' and the worker's own. Prints a Markdown
# table (docs/benchmarks.md has one).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/throwaway.sh
. scripts/lib/throwaway.sh
requests=${BENCH_REQUESTS:-200}
cargo build --release --locked -q -p falcon-cli
bin=$PWD/target/release/falcon
model=$PWD/models/classifier.bin
dir=$(mktemp -d)
pid=""
cleanup() { stop_worker; rm -rf "$dir"; }
trap cleanup EXIT
now_ms() { echo $(($(date +%s%N) / 1000000)); }

echo "| models | exec to listening | model loads (sum) | RSS once started | RSS after $requests requests to each |"
echo "|---|---|---|---|---|"
for n in ${BENCH_MODELS:-1 2 5}; do
  repo=$dir/models-$n.toml
  names=(sentiment)
  {
    echo 'default = "sentiment"'
    printf '[models.sentiment]\nbackend = "tfidf"\n'
    for i in $(seq 2 "$n"); do
      printf '[models.copy%d]\nbackend = "tfidf"\npath = "%s"\n' "$i" "$model"
    done
  } >"$repo"
  for i in $(seq 2 "$n"); do names+=("copy$i"); done
  port=$(free_port)
  log=$dir/log-$n
  started=$(now_ms)
  (cd "$dir" && exec env HOST=127.0.0.1 PORT="$port" WORKER_ID=bench CACHE_ENABLED=false REQUEST_LOG_ENABLED=false \
    MODEL_REPOSITORY="$repo" "$bin" serve >"$log" 2>&1) &
  pid=$!
  until grep -q '"Worker listening"' "$log"; do
    if ! kill -0 "$pid" 2>/dev/null || [ $(($(now_ms) - started)) -gt 60000 ]; then cat "$log"; exit 1; fi
    sleep 0.005
  done
  listening=$(($(now_ms) - started))
  loads=$(sed -n 's/.*"load_ms":\([0-9.]*\).*"message":"Model loaded".*/\1/p' "$log" | awk '{ s += $1 } END { printf "%.0f", s }')
  sleep 1
  rss_started=$(rss_mb)
  for name in "${names[@]}"; do
    for i in $(seq "$requests"); do
      curl -s -o /dev/null -H 'content-type: application/json' \
        -d "{\"text\": \"request $i to $name: the product was fine, mostly\", \"model\": \"$name\"}" \
        "http://127.0.0.1:$port/infer"
    done
  done
  sleep 1
  echo "| $n | ${listening} ms | ${loads} ms | ${rss_started} MB | $(rss_mb) MB |"
  stop_worker
done
