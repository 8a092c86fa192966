#!/usr/bin/env bash
# Request-log writer throughput: 100,000 records through the real writer into a scratch
# database on the local PostgreSQL (PGHOST/PGPORT/PGUSER, default 127.0.0.1:5432 postgres),
# dropped afterwards. Prints rows/s per batch size; the target is >= 20,000 rows/s.
set -euo pipefail
cd "$(dirname "$0")/.."
host=${PGHOST:-127.0.0.1} port=${PGPORT:-5432} user=${PGUSER:-postgres}
db="falcon_bench_$$"
psql -h "$host" -p "$port" -U "$user" -q -c "CREATE DATABASE $db"
trap 'psql -h "$host" -p "$port" -U "$user" -q -c "DROP DATABASE IF EXISTS $db"' EXIT
cargo run --release --locked -q -p falcon-app --example log_writer -- "postgres://$user@$host:$port/$db" "${BENCH_ROWS:-100000}"
