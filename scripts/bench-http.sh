#!/usr/bin/env bash
# HTTP benchmark of release builds on loopback, driven by `falcon load` (50 keep-alive
# connections; as cheap per request as wrk, which cross-checks it when installed):
# 1. the floor, a bare axum server with the same request and response shapes
#    (crates/falcon-cli/examples/floor.rs), and a worker with embedded defaults, taking
#    turns: GET /healthz, POST /infer with one repeated text (cache hits) and with a unique
#    text per request; each Falcon figure as a ratio to the floor's, with its target;
# 2. POST /infer/batch with 64 unique texts against single unique-text requests (texts/s);
# 3. the embedded request log on vs off (two workers side by side, interleaved): throughput
#    at saturation, p99 at half the log-off maximum (open loop), rows = requests;
# 4. a throwaway redis-server, in-process L1 on and off (BENCH_REDIS=0 skips);
# 5. the Postgres request log on vs off, against the local Postgres on the same cores
#    (BENCH_POSTGRES=0 skips) and a throwaway one pinned to the last core
#    (BENCH_PG_ISOLATED=0 skips).
#   BENCH_DURATION (s, default 10), BENCH_CONNECTIONS (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/throwaway.sh
. scripts/lib/throwaway.sh
duration=${BENCH_DURATION:-10}
connections=${BENCH_CONNECTIONS:-50}
cargo build --release --locked -q -p falcon-cli
bin=target/release/falcon
log=$(mktemp)
pid=""
redis_dir=$(mktemp -d)
cleanup() {
  stop_worker
  stop_throwaway_redis "$redis_dir/redis"
  rm -rf "$log" "$redis_dir"
}
trap cleanup EXIT

# Starts a worker writing its output to OUT, with the given environment; sets $pid and $addr.
launch_worker() { # OUT env...
  local out=$1; shift
  : >"$out"
  env HOST=127.0.0.1 PORT=0 WORKER_ID=bench REQUEST_LOG_SQLITE_PATH="$redis_dir/request_log.db" LOG_SPOOL_DIR="$redis_dir/spool" "$@" "$bin" serve >"$out" 2>&1 &
  pid=$!
  addr=""
  for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*"address":"\([^"]*\)".*"message":"Worker listening".*/\1/p' "$out" | head -n1)
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "worker did not start:"; cat "$out"; exit 1
}

start_worker() { launch_worker "$log" "$@"; }

# The floor: a bare axum server with the same request and response shapes (no middleware,
# no model, no cache, no log), started here, measured in the same run as the worker,
# taking turns with it round by round. Every figure is a ratio to it.
cargo build --release --locked -q -p falcon-cli --example floor
"target/release/examples/floor" 127.0.0.1:0 >"$redis_dir/floor.log" 2>&1 &
floor_pid=$!
trap 'kill "$floor_pid" 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 100); do
  floor_addr=$(sed -n 's/^listening on //p' "$redis_dir/floor.log")
  [ -n "$floor_addr" ] && break
  sleep 0.05
done
echo "== embedded defaults (in-process cache, SQLite request log, spool on) vs the floor =="
start_worker
echo "worker at $addr, floor at $floor_addr ($(nproc) cores shared by both and the load generator), ${duration}s per scenario in 3 rounds, $connections connections"
: >"$redis_dir/floor.json"; : >"$redis_dir/falcon.json"
for _ in 1 2 3; do
  "$bin" load --addr "$floor_addr" --connections "$connections" --duration "$(awk -v d="$duration" 'BEGIN { print d / 3 }')" --rounds 1 | grep '^{' >>"$redis_dir/floor.json"
  "$bin" load --addr "$addr" --connections "$connections" --duration "$(awk -v d="$duration" 'BEGIN { print d / 3 }')" --rounds 1 | grep '^{' >>"$redis_dir/falcon.json"
done
stop_worker
python3 - "$redis_dir/floor.json" "$redis_dir/falcon.json" <<'PY'
import json, sys
def load(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        s = out.setdefault(r["scenario"], {"ok": 0, "s": 0.0, "p99": []})
        s["ok"] += r["ok"]; s["s"] += r["duration_s"]; s["p99"].append(r["p99_ms"])
    return {k: (v["ok"] / v["s"], sorted(v["p99"])[len(v["p99"]) // 2]) for k, v in out.items()}
floor, falcon = load(sys.argv[1]), load(sys.argv[2])
targets = {"healthz": 0.85, "same-text": 0.75, "unique-text": 0.55}
print(f"{'scenario':<12} {'floor req/s':>12} {'falcon req/s':>13} {'ratio':>6} {'target':>7} {'falcon p99 ms':>14}")
for k in ["healthz", "same-text", "unique-text"]:
    (f, _), (w, p99) = floor[k], falcon[k]
    print(f"{k:<12} {f:>12.0f} {w:>13.0f} {w / f:>6.2f} {targets[k]:>7.2f} {p99:>14.2f}")
PY
if command -v wrk >/dev/null; then
  # The load generator is not the bottleneck: wrk (C, one thread) on the floor's GET.
  wrk_rps=$(wrk -t1 -c"$connections" -d"${duration}s" "http://$floor_addr/healthz" | sed -n 's/^Requests\/sec: *//p')
  echo "cross-check: wrk on the floor's GET /healthz: $wrk_rps req/s (falcon load's figure is in the floor row above)"
fi
kill "$floor_pid" 2>/dev/null || true

# The batch endpoint: texts/s of POST /infer/batch with 64 unique texts a request against
# single unique-text POST /infer, same worker (embedded defaults), taking turns.
echo "== POST /infer/batch (64 unique texts a request) vs POST /infer (one unique text) =="
start_worker
: >"$redis_dir/batch.json"
for _ in 1 2 3; do
  "$bin" load --addr "$addr" --connections "$connections" --duration "$(awk -v d="$duration" 'BEGIN { print d / 3 }')" --rounds 1 \
    --scenario unique-text unique-batch | grep '^{' >>"$redis_dir/batch.json"
done
stop_worker
python3 - "$redis_dir/batch.json" <<'PY'
import json, sys
tot = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = tot.setdefault(r["scenario"], [0, 0.0, []]); t[0] += r["ok"]; t[1] += r["duration_s"]; t[2].append(r["p99_ms"])
single = tot["unique-text"][0] / tot["unique-text"][1]
batch = tot["unique-batch"][0] / tot["unique-batch"][1]
print(f"single: {single:.0f} texts/s; batch: {batch:.0f} req/s = {batch * 64:.0f} texts/s; "
      f"ratio {batch * 64 / single:.2f} (target >= 5); batch p99 {sorted(tot['unique-batch'][2])[1]:.2f} ms")
PY

metric_value() { curl -s "http://$addr/metrics" | sed -n "s/^$1{[^}]*} //p"; }

# The request log's price on the embedded default: unique-text /infer at saturation with
# the log on (SQLite, spool on) and off, then both at a fixed offered rate of half the
# log-off maximum (open loop: latency from when each request was due).
echo "== embedded request log on vs off, unique text =="
# Both workers run at once (an idle one costs nothing) and take turns, three rounds each,
# so a slow moment of the shared machine falls on both alike.
rm -rf "$redis_dir/spool" "$redis_dir/request_log.db"*
start_worker
on_pid=$pid on_addr=$addr
launch_worker "$redis_dir/off.log" WORKER_ID=bench-off REQUEST_LOG_ENABLED=false
off_pid=$pid off_addr=$addr
# $pid and $addr are the log-on worker's again (stop_worker, metric_value).
pid=$on_pid addr=$on_addr
round() { # addr [--rate R] -> "rps p99"
  local a=$1; shift
  "$bin" load --addr "$a" --connections "$connections" --duration "$duration" --rounds 1 --scenario unique-text "$@" \
    | sed -n 's/.*"scenario":"unique-text".*"rps":\([0-9.]*\).*"p99_ms":\([0-9.]*\).*/\1 \2/p'
}
mean() { awk '{ s += $1; n++ } END { printf "%.0f", s / n }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
: >"$redis_dir/sat_on"; : >"$redis_dir/sat_off"
for _ in 1 2 3; do
  round "$on_addr" >>"$redis_dir/sat_on"
  round "$off_addr" >>"$redis_dir/sat_off"
done
on=$(cut -d' ' -f1 "$redis_dir/sat_on" | mean)
off=$(cut -d' ' -f1 "$redis_dir/sat_off" | mean)
half=$(awk -v r="$off" 'BEGIN { printf "%.0f", r / 2 }')
: >"$redis_dir/open_on"; : >"$redis_dir/open_off"
for _ in 1 2 3; do
  round "$on_addr" --rate "$half" >>"$redis_dir/open_on"
  round "$off_addr" --rate "$half" >>"$redis_dir/open_off"
done
p99_on=$(cut -d' ' -f2 "$redis_dir/open_on" | median)
p99_off=$(cut -d' ' -f2 "$redis_dir/open_off" | median)
kill "$off_pid"; wait "$off_pid" 2>/dev/null || true
# Let the writer catch up, then count: rows must equal every request made (warm-ups included).
for _ in $(seq 1 240); do
  [ "$(metric_value log_buffer_size)" = "0" ] && break
  sleep 0.5
done
dropped=$(metric_value dropped_logs_total)
made=$(metric_value 'inference_requests_total' | awk '{ s += $1 } END { print s }')
stop_worker
rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from inference_logs').fetchone()[0])" "$redis_dir/request_log.db")
echo "saturation (mean of 3 interleaved rounds): log on $on req/s, off $off req/s, on/off $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2f", a / b }') (target >= 0.85)"
echo "open loop at $half req/s, half the log-off maximum (median of 3 rounds): p99 log on $p99_on ms, off $p99_off ms, on/off $(awk -v a="$p99_on" -v b="$p99_off" 'BEGIN { printf "%.2f", a / b }') (target <= 1.2)"
echo "request log: $made requests made to the log-on worker, $rows rows, ${dropped:-?} dropped"

if [ "${BENCH_REDIS:-1}" = "1" ] && command -v redis-server >/dev/null; then
  redis_port=$(start_throwaway_redis "$redis_dir/redis")
  for l1 in 5 0; do
    echo "== throwaway Redis on :$redis_port, in-process L1 TTL ${l1}s =="
    start_worker REDIS_URL="redis://127.0.0.1:$redis_port/0" CACHE_L1_TTL_SECONDS="$l1"
    "$bin" load --addr "$addr" --connections "$connections" --duration "$duration"
    stop_worker
  done
fi

# The Postgres request log: /infer with logging on vs off, on a scratch database.
if [ "${BENCH_POSTGRES:-1}" = "1" ] && psql -h 127.0.0.1 -U postgres -q -c 'SELECT 1' >/dev/null 2>&1; then
  db="falcon_bench_http_$$"
  psql -h 127.0.0.1 -U postgres -q -c "CREATE DATABASE $db"
  rps() { sed -n 's/.*"scenario":"unique-text".*"rps":\([0-9.]*\).*/\1/p'; }
  echo "== Postgres request log on (DATABASE_URL) =="
  start_worker DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
  out=$("$bin" load --addr "$addr" --connections "$connections" --duration "$duration" --scenario healthz --scenario unique-text)
  echo "$out"
  on=$(echo "$out" | rps)
  dropped=$(curl -s "http://$addr/metrics" | sed -n 's/^dropped_logs_total{[^}]*} //p')
  stop_worker
  rows=$(psql -h 127.0.0.1 -U postgres -d "$db" -tA -c "SELECT count(*) FROM inference_logs")
  echo "== request log off (REQUEST_LOG_ENABLED=false) =="
  start_worker REQUEST_LOG_ENABLED=false
  out=$("$bin" load --addr "$addr" --connections "$connections" --duration "$duration" --scenario healthz --scenario unique-text)
  echo "$out"
  off=$(echo "$out" | rps)
  stop_worker
  psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $db"
  echo "unique-text /infer with the Postgres log on vs off: $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2f", a / b }') ($rows rows written, ${dropped:-?} dropped)"
fi
# The same with Postgres on a core of its own (taskset), and the worker and the load
# generator on the rest, for both runs.
cores=$(nproc)
if [ "${BENCH_PG_ISOLATED:-1}" = "1" ] && [ "$cores" -ge 2 ] && [ -n "$(pg_bin)" ] && command -v taskset >/dev/null; then
  pg_dir=$(mktemp -d)
  last=$((cores - 1))
  rest="0-$((cores - 2))"
  pg_port=$(start_throwaway_postgres "$pg_dir" "$last")
  stop_pg() { stop_throwaway_postgres "$pg_dir"; rm -rf "$pg_dir"; }
  trap 'stop_pg; cleanup' EXIT
  # Sets $out to the load report (not in a subshell: $pid must survive for stop_worker).
  run_pinned() { # env...
    start_worker "$@"
    taskset -cp "$rest" "$pid" >/dev/null
    taskset -c "$rest" "$bin" load --addr "$addr" --connections "$connections" --duration "$duration" \
      --scenario healthz --scenario unique-text >"$redis_dir/load.out"
    out=$(cat "$redis_dir/load.out")
  }
  echo "== Postgres pinned to CPU $last; worker and load generator on CPU $rest =="
  echo "-- request log on"
  run_pinned DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
  echo "$out"
  dropped=$(curl -s "http://$addr/metrics" | sed -n 's/^dropped_logs_total{[^}]*} //p')
  on=$(echo "$out" | sed -n 's/.*"scenario":"unique-text".*"rps":\([0-9.]*\).*/\1/p')
  stop_worker
  rows=$(psql -h 127.0.0.1 -p "$pg_port" -U postgres -tA -c "SELECT count(*) FROM inference_logs")
  echo "-- request log off"
  run_pinned REQUEST_LOG_ENABLED=false
  echo "$out"
  off=$(echo "$out" | sed -n 's/.*"scenario":"unique-text".*"rps":\([0-9.]*\).*/\1/p')
  stop_worker
  echo "unique-text /infer, Postgres on its own core, log on vs off: $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2f", a / b }') ($rows rows written, ${dropped:-?} dropped)"
fi
