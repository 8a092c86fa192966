#!/usr/bin/env bash
# HTTP benchmark: a release worker on a free loopback port, driven by `falcon load` with
# 50 keep-alive connections per scenario: GET /healthz (the floor), POST /infer with one
# repeated text (cache hits), POST /infer with a unique text per request (real inference).
# Prints req/s, p50/p99 and each scenario's throughput as a ratio to /healthz.
# Then the same against a throwaway redis-server, with the in-process L1 on and off
# (BENCH_REDIS=0 skips that part).
# Then /infer with the Postgres request log on vs off, twice: against the local Postgres on
# the same cores (BENCH_POSTGRES=0 skips), and against a throwaway Postgres pinned to the
# last core while the worker and load generator share the others, i.e. a database on its
# own hardware as in every deployment shape (BENCH_PG_ISOLATED=0 skips).
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
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  stop_throwaway_redis "$redis_dir/redis"
  rm -rf "$log" "$redis_dir"
}
trap cleanup EXIT

# Starts a worker with the given environment; sets $pid and $addr.
start_worker() {
  : >"$log"
  env HOST=127.0.0.1 PORT=0 WORKER_ID=bench REQUEST_LOG_SQLITE_PATH="$redis_dir/request_log.db" LOG_SPOOL_DIR="$redis_dir/spool" "$@" "$bin" serve >"$log" 2>&1 &
  pid=$!
  addr=""
  for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*"address":"\([^"]*\)".*"message":"Worker listening".*/\1/p' "$log" | head -n1)
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "worker did not start:"; cat "$log"; exit 1
}

stop_worker() {
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

echo "== embedded defaults (in-process cache, SQLite request log, spool on) =="
start_worker
echo "worker at $addr ($(nproc) cores shared by worker and load generator), ${duration}s per scenario, $connections connections"
"$bin" load --addr "$addr" --connections "$connections" --duration "$duration"
stop_worker

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
: >"$redis_dir/off.log"
env HOST=127.0.0.1 PORT=0 WORKER_ID=bench-off REQUEST_LOG_ENABLED=false "$bin" serve >"$redis_dir/off.log" 2>&1 &
off_pid=$!
for _ in $(seq 1 200); do
  off_addr=$(sed -n 's/.*"address":"\([^"]*\)".*"message":"Worker listening".*/\1/p' "$redis_dir/off.log" | head -n1)
  [ -n "$off_addr" ] && break
  sleep 0.05
done
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
