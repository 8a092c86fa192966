#!/usr/bin/env bash
# `make flamegraph [FLAME_SCENARIO=unique-text] [FLAME_SECONDS=5] [FLAME_OUT=...]`: a CPU flamegraph
# of a release worker (embedded defaults: in-process cache, SQLite request log) at saturation
# under `falcon load` (50 connections). perf samples every thread of the worker (cpu-clock,
# DWARF call graphs); inferno (pinned, installed into .tools/cargo) folds and draws it. The
# root frames are the threads (tokio-rt-worker, inference-N, request-log-writer, sqlx-sqlite),
# so their shares are the first thing the picture shows.
#   SCENARIO       healthz | same-text | unique-text (default; make passes FLAME_SCENARIO)
#   FLAME_OUT      the SVG (default target/flamegraph-<scenario>.svg)
#   perf comes from Debian's linux-perf package; it needs perf_event_paranoid <= 2 (the default).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/throwaway.sh
. scripts/lib/throwaway.sh
scenario=${SCENARIO:-unique-text}
seconds=${FLAME_SECONDS:-5}
out=${FLAME_OUT:-target/flamegraph-$scenario.svg}
command -v perf >/dev/null || { echo "flamegraph: perf is missing (apt-get install linux-perf)" >&2; exit 2; }
inferno=.tools/cargo/bin
[ -x "$inferno/inferno-flamegraph" ] || cargo install --locked --quiet --root .tools/cargo inferno@0.12.3
cargo build --release --locked -q -p falcon-cli --bin falcon
bin=$PWD/target/release/falcon
dir=$(mktemp -d)
pid=""
cleanup() {
  stop_worker
  rm -rf "$dir"
}
trap cleanup EXIT
port=$(free_port)
env HOST=127.0.0.1 PORT="$port" WORKER_ID=flamegraph REQUEST_LOG_SQLITE_PATH="$dir/log.db" LOG_SPOOL_DIR="$dir/spool" \
  "$bin" serve >"$dir/worker.log" 2>&1 &
pid=$!
wait_http "http://127.0.0.1:$port/readyz" 30 || { cat "$dir/worker.log"; exit 1; }
"$bin" load --addr "127.0.0.1:$port" --scenario "$scenario" --duration "$((seconds + 3))" --rounds 1 --warmup 0 \
  >"$dir/load.out" &
load=$!
sleep 1.5
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$dir/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$load"
head -n1 "$dir/load.out"
perf script -i "$dir/perf.data" 2>/dev/null | "$inferno/inferno-collapse-perf" >"$dir/folded"
mkdir -p "$(dirname "$out")"
"$inferno/inferno-flamegraph" --inverted --minwidth 0.5 --title "falcon serve, POST /infer $scenario at saturation ($(git describe --always --dirty))" \
  <"$dir/folded" >"$out"
# Each thread's share of the samples (the first frame of every folded stack).
awk '{ n = $NF; split($1, f, ";"); sub(/-[0-9]+$/, "", f[1]); t[f[1]] += n; all += n }
  END { for (k in t) printf "  %-22s %5.1f %%\n", k, 100 * t[k] / all }' "$dir/folded" | sort -k2 -nr
echo "flamegraph: $out"
