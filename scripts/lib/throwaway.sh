# Shared by the scripts that start their own servers: free loopback ports and throwaway
# redis-server and PostgreSQL instances in a directory of the caller's. Source it:
#   . "$(dirname "$0")/lib/throwaway.sh"
# Nothing here touches a shared Redis or Postgres.

# A free TCP port on 127.0.0.1 from 12000-19999: below the kernel's ephemeral range
# (32768-60999), so no outgoing connection takes it while a server is stopped and started
# again on it, and apart from the Rust suite's 20000-31999.
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(1000):
    port = random.randrange(12000, 20000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
else:
    raise SystemExit("no free port in 12000-19999")
PY
}

# Waits until `curl` gets a 2xx from $1, for at most $2 seconds.
wait_http() {
  local url=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# The worker a script started in the background, its pid in the caller's $pid: stop it and
# forget it (nothing to do when none runs).
stop_worker() {
  if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  pid=""
}

# That worker's resident memory, in MB.
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }

# The newest PostgreSQL server binaries (Debian's layout).
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# Postgres refuses to run as root: run its tools as the postgres user then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# start_throwaway_redis DIR [redis-server options...]: a daemonized redis-server keeping
# nothing on disk, pid and log in DIR. Prints its port (THROWAWAY_PORT if set, else a free one).
start_throwaway_redis() {
  local dir=$1 port
  shift
  port=${THROWAWAY_PORT:-$(free_port)}
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@" >/dev/null || return 1
  for _ in $(seq 1 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$port" ping >/dev/null 2>&1 || { echo "throwaway redis-server did not start" >&2; return 1; }
  echo "$port"
}

# stop_throwaway_redis DIR: stops it and waits until it is gone.
stop_throwaway_redis() {
  local pid
  [ -f "$1/redis.pid" ] || return 0
  pid=$(cat "$1/redis.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$1/redis.pid"
}

# start_throwaway_postgres DIR [CPU]: initdb + pg_ctl start in DIR/data (trust auth, user
# postgres), optionally pinned to CPU with taskset. Prints its port (THROWAWAY_PORT if set).
start_throwaway_postgres() {
  local dir=$1 cpu=${2:-} bin port pin=()
  bin=$(pg_bin)
  [ -n "$bin" ] || { echo "PostgreSQL server binaries not found (scripts/ensure-test-deps.sh installs them)" >&2; return 1; }
  port=${THROWAWAY_PORT:-$(free_port)}
  mkdir -p "$dir"
  [ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$dir"
  [ -z "$cpu" ] || pin=(taskset -c "$cpu")
  # Each step checks itself: callers run this in $(...), where errexit does not reach.
  as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null \
    || { echo "initdb failed in $dir" >&2; return 1; }
  as_pg "${pin[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
    || { echo "pg_ctl start failed (see $dir/server.log)" >&2; return 1; }
  echo "$port"
}

# start_throwaway_postgres_again DIR PORT: starts a stopped one on its old data and port.
start_throwaway_postgres_again() {
  as_pg "$(pg_bin)/pg_ctl" -D "$1/data" -l "$1/server.log" -w \
    -o "-p $2 -k $1 -c listen_addresses=127.0.0.1" start >/dev/null
}

# stop_throwaway_postgres DIR
stop_throwaway_postgres() {
  [ -d "$1/data" ] || return 0
  as_pg "$(pg_bin)/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}
