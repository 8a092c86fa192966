#!/usr/bin/env bash
# `make bench-minilm`: the MiniLM backend against PyTorch, and over HTTP, in one run.
#
# 1. Sentences/s at batch 1, 8 and 32 for Falcon's backend on both its runtimes (candle and
#    ONNX Runtime, crates/falcon-bert/benches/throughput.rs) and for PyTorch
#    sentence-transformers (scripts/bench_minilm_torch.py, in .tools/torch-venv), on the same
#    texts (BENCH_TEXT_COUNT VADER tweets, about 20 tokens each) with the same thread count
#    (BENCH_THREADS, default: the cores). Targets: >= 1.0x PyTorch at batch 32, >= 1.5x at
#    batch 1 (for the default runtime).
# 2. A release worker with MODEL_BACKEND=minilm at 50 connections (unique texts, cache and
#    request log off), on each runtime (BENCH_HTTP_RUNTIMES, default "onnx candle"): dynamic
#    batching on (MAX_BATCH_SIZE 32, MAX_BATCH_WAIT_MS 5) against off (MAX_BATCH_SIZE 1),
#    interleaved; throughput (target: on >= 2x off), p50/p99, and p99 at a fixed offered rate
#    (half of what batching off sustains).
# 3. RSS of the worker idle after start and after the load (target <= 250 MB), and the
#    weights' load time.
# Prints a Markdown report and writes bench/minilm.json. Needs a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/throwaway.sh
. scripts/lib/throwaway.sh
./scripts/fetch-minilm.sh
./scripts/ensure-torch.sh
threads=${BENCH_THREADS:-$(nproc)}
# ONNX Runtime's telemetry SDK off in the in-process benchmark (the falcon binary sets it itself).
export ORT_DISABLE_TELEMETRY=1
connections=${BENCH_CONNECTIONS:-50}
duration=${BENCH_DURATION:-20}
export MINILM_DIR=${MINILM_DIR:-$PWD/.tools/models/all-MiniLM-L6-v2}
dir=$(mktemp -d)
pid=""
cleanup() { stop_worker; rm -rf "$dir"; }
trap cleanup EXIT

# The same texts for both runtimes: VADER tweets (data/vader, CC BY 4.0), one a line.
texts=$dir/texts.txt
awk -F'\t' -v n="${BENCH_TEXT_COUNT:-512}" 'NR <= n { sub(/\r$/, "", $3); print $3 }' data/vader/tweets_GroundTruth.txt >"$texts"

echo "## Sentences/s, $threads threads, $(wc -l <"$texts") VADER tweets"
export BENCH_TEXTS=$texts BENCH_BATCHES=${BENCH_BATCHES:-1,8,32} BENCH_SECONDS=${BENCH_SECONDS:-4} BENCH_ROUNDS=${BENCH_ROUNDS:-3}
RAYON_NUM_THREADS=$threads BENCH_THREADS=$threads cargo bench --locked -q -p falcon-bert --bench throughput 2>"$dir/candle.err" | grep '^{' >"$dir/candle.json" \
  || { cat "$dir/candle.err"; exit 1; }
BENCH_THREADS=$threads .tools/torch-venv/bin/python scripts/bench_minilm_torch.py 2>"$dir/torch.err" | grep '^{' >"$dir/torch.json" \
  || { cat "$dir/torch.err"; exit 1; }
grep -h 'tokens each' "$dir/candle.err" || true
# HTTP with the default runtime (auto: ONNX Runtime when the folder has its graph).

# HTTP: one release worker per setting, interleaved rounds.
cargo build --release --locked -q -p falcon-cli
bin=$PWD/target/release/falcon
start_worker() { # name, then env
  local name=$1
  shift
  port=$(free_port)
  log=$dir/worker-$name.log
  (cd "$dir" && exec env HOST=127.0.0.1 PORT="$port" WORKER_ID=bench CACHE_ENABLED=false REQUEST_LOG_ENABLED=false \
    MODEL_BACKEND=minilm INFERENCE_THREADS=1 MINILM_THREADS="$threads" "$@" "$bin" serve >"$log" 2>&1) &
  pid=$!
  for _ in $(seq 600); do
    grep -q '"Worker listening"' "$log" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$log"
  exit 1
}
load() { # label, then falcon load arguments
  local label=$1
  shift
  "$bin" load --addr "127.0.0.1:$port" --connections "$connections" --rounds 1 --warmup 2 --scenario unique-text "$@" \
    | grep '^{' | sed "s/^{/{\"setting\":\"$label\",/" >>"$dir/http.json"
}
: >"$dir/http.json"
: >"$dir/rss.txt"
rounds=${BENCH_HTTP_ROUNDS:-2}
start_setting() { # runtime, on|off
  if [ "$2" = on ]; then
    start_worker "$1-on" MINILM_RUNTIME="$1" MAX_BATCH_SIZE=32 MAX_BATCH_WAIT_MS=5
  else
    start_worker "$1-off" MINILM_RUNTIME="$1" MAX_BATCH_SIZE=1 MAX_BATCH_WAIT_MS=0
  fi
  sleep 2
}
for rt in ${BENCH_HTTP_RUNTIMES:-onnx candle}; do
  for round in $(seq "$rounds"); do
    for setting in off on; do
      start_setting "$rt" "$setting"
      idle=$(rss_mb)
      load_ms=$(sed -n 's/.*"load_ms":\([0-9.]*\).*"message":"Model loaded".*/\1/p' "$log" | head -1)
      load "$rt-$setting" --duration "$(awk -v d="$duration" -v r="$rounds" 'BEGIN { print d / r }')"
      loaded=$(rss_mb)
      echo "$rt-$setting $round $idle $loaded ${load_ms:-0}" >>"$dir/rss.txt"
      stop_worker
    done
  done
  # Fixed offered rate: half of what this runtime sustained with batching off.
  rate=$(python3 -c "import json,sys; rs=[json.loads(l)['rps'] for l in open(sys.argv[1]) if json.loads(l)['setting']==sys.argv[2]]; print(round(sum(rs)/len(rs)/2, 1))" "$dir/http.json" "$rt-off")
  echo "$rt $rate" >>"$dir/rates.txt"
  for setting in off on; do
    start_setting "$rt" "$setting"
    load "$rt-$setting-fixed" --duration "$(awk -v d="$duration" 'BEGIN { print d / 2 }')" --rate "$rate"
    stop_worker
  done
done

mkdir -p bench
python3 - "$dir" "$threads" "$connections" <<'PY'
import json, sys, statistics
d, threads, connections = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rates = dict((l.split()[0], float(l.split()[1])) for l in open(f"{d}/rates.txt"))
def lines(name):
    return [json.loads(l) for l in open(f"{d}/{name}") if l.strip()]
falcon = lines("candle.json")
torch = {r["batch"]: r for r in lines("torch.json")}
http = lines("http.json")
rss = [l.split() for l in open(f"{d}/rss.txt")]
mark = lambda ok: "✓" if ok else "✗"
runtimes = sorted({r["runtime"] for r in falcon}, key=lambda r: r != "onnx")
print("\n| batch | PyTorch sentences/s | " + " | ".join(f"Falcon {r} sentences/s | ratio" for r in runtimes) + " | target (default runtime) |")
print("|---|---|" + "---|---|" * len(runtimes) + "---|")
ratios = {}
for b in sorted(torch):
    cells = []
    for r in runtimes:
        f = next(x for x in falcon if x["runtime"] == r and x["batch"] == b)
        ratio = f["sentences_per_s"] / torch[b]["sentences_per_s"]
        ratios[f"{r}@{b}"] = ratio
        cells.append(f"{f['sentences_per_s']:.1f} | {ratio:.2f}×")
    target = {1: 1.5, 32: 1.0}.get(b)
    t = f"≥ {target}× {mark(ratios[f'{runtimes[0]}@{b}'] >= target)}" if target else "—"
    print(f"| {b} | {torch[b]['sentences_per_s']:.1f} | " + " | ".join(cells) + f" | {t} |")
loads = ", ".join(f"{r} {next(x for x in falcon if x['runtime'] == r)['load_s']:.2f} s" for r in runtimes)
print(f"\nweights load: {loads}, PyTorch {torch[min(torch)]['load_s']:.2f} s")
def agg(setting):
    rs = [r for r in http if r["setting"] == setting]
    return {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")} | {"failed": sum(r["failed"] for r in rs)}
print(f"\n## HTTP /infer, MiniLM, {connections} connections, unique texts (cache and request log off)\n")
print("| runtime | dynamic batching | req/s | p50 ms | p99 ms | failed | p99 at a fixed offered rate |")
print("|---|---|---|---|---|---|---|")
gains = {}
for rt in rates:
    off, on = agg(f"{rt}-off"), agg(f"{rt}-on")
    foff, fon = agg(f"{rt}-off-fixed"), agg(f"{rt}-on-fixed")
    print(f"| {rt} | off (MAX_BATCH_SIZE 1) | {off['rps']:.1f} | {off['p50_ms']:.1f} | {off['p99_ms']:.1f} | {off['failed']} | {foff['p99_ms']:.1f} ms at {rates[rt]:.0f} req/s |")
    print(f"| {rt} | on (32, 5 ms) | {on['rps']:.1f} | {on['p50_ms']:.1f} | {on['p99_ms']:.1f} | {on['failed']} | {fon['p99_ms']:.1f} ms at {rates[rt]:.0f} req/s |")
    gains[rt] = on["rps"] / off["rps"]
print()
for rt, gain in gains.items():
    print(f"throughput on/off, {rt}: {gain:.2f}× (target ≥ 2× {mark(gain >= 2)})")
for rt in rates:
    rows = [r for r in rss if r[0].startswith(rt + "-")]
    idle = max(float(r[2]) for r in rows)
    loaded = max(float(r[3]) for r in rows)
    print(f"RSS, {rt}: {idle:.1f} MB idle after start, {loaded:.1f} MB after the load (target ≤ 250 MB {mark(max(idle, loaded) <= 250)}); "
          f"model load {statistics.median(float(r[4]) for r in rows):.0f} ms")
json.dump({"threads": threads, "falcon": falcon, "torch": torch, "ratios": ratios, "http": http,
           "fixed_rates": rates, "http_gain": gains, "rss": rss},
          open("bench/minilm.json", "w"), indent=1)
PY
