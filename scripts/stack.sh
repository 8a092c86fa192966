#!/usr/bin/env bash
# The compose topology run natively: real nginx (deploy/nginx/conf.d/falcon.conf, templated
# to loopback ports) in front of three `falcon serve` workers, with Redis and Postgres from
# the environment (REDIS_URL, DATABASE_URL) or throwaway ones started here.
#
#   scripts/stack.sh up | down | status
#   scripts/stack.sh start|stop|kill|restart worker-N     # drills: SIGTERM, SIGKILL
#   scripts/stack.sh start|stop|restart redis|postgres    # the stack's own Redis / Postgres
#   scripts/stack.sh logs worker-N [-f]                   # a worker's JSON log lines
#   scripts/stack.sh env worker-N                         # the running worker's environment
#   scripts/stack.sh reload worker-N                      # SIGHUP: load MODEL_PATH again
#   scripts/stack.sh stats                                # the workers' RSS, CPU and age (docker stats)
#   scripts/stack.sh redis-cli [ARGS...]                  # redis-cli on the stack's Redis
#   scripts/stack.sh psql [ARGS...]                       # psql as falcon on falcon_inference
#   scripts/stack.sh pg_isready                           # pg_isready on the stack's Postgres
#   scripts/stack.sh falcon log prune --dry-run           # a falcon command with the stack's Redis and Postgres
#   scripts/stack.sh render-nginx                         # only write STACK_DIR/nginx/*.conf
#
# Settings (environment):
#   STACK_DIR            state, logs and throwaway data       (default: .stack)
#   STACK_NGINX_PORT     the load balancer                    (default: 8088)
#   STACK_STATUS_PORT    nginx stub_status                    (default: 8089)
#   STACK_WORKER_PORTS   three worker ports                   (default: "8000 8001 8002")
#   STACK_NGINX_RATE     nginx per-client /infer limit        (default: 2000r/s, as deployed;
#                        load tests raise it so they measure the workers, not the limit)
#   STACK_NGINX_BURST    its burst                            (default: 4000)
#   FALCON_BIN           the falcon binary (default: target/release/falcon, built if missing)
#   REDIS_URL / DATABASE_URL   use these instead of throwaway Redis / Postgres
#   any other worker setting (LOG_LEVEL, LOG_BUFFER_SIZE, ...) is passed through to the
#   workers; each has its own spool under STACK_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STACK_DIR=${STACK_DIR:-$ROOT/.stack}
mkdir -p "$STACK_DIR"
STACK_DIR=$(cd "$STACK_DIR" && pwd)
ENV_FILE=$STACK_DIR/stack.env

# shellcheck source=lib/throwaway.sh
. "$ROOT/scripts/lib/throwaway.sh"

die() { echo "stack: $*" >&2; exit 1; }
as_root_rm() { rm -rf "$@"; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_redis() {
  local port
  port=$(start_throwaway_redis "$STACK_DIR/redis" --maxmemory 256mb --maxmemory-policy volatile-lru) \
    || die "throwaway redis-server did not start"
  echo "$port" >"$STACK_DIR/redis.port"
  echo "redis://127.0.0.1:$port/0"
}

# The compose names: role falcon (trust auth here), database falcon_inference, so the
# runbook's `psql -U falcon -d falcon_inference` works against this stack too.
start_postgres() {
  local port
  port=$(start_throwaway_postgres "$STACK_DIR/postgres") || die "throwaway Postgres did not start"
  echo "$port" >"$STACK_DIR/postgres.port"
  psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE falcon LOGIN" -c "CREATE DATABASE falcon_inference OWNER falcon" >/dev/null \
    || die "could not create the falcon role and database"
  echo "postgres://falcon@127.0.0.1:$port/falcon_inference"
}

# start|stop redis|postgres: only the stack's own (throwaway) ones, on their old ports.
dependency() {
  local verb=$1 what=$2
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  case $what in
    redis)
      [ "$STACK_OWN_REDIS" = 1 ] || die "Redis is not this stack's own ($STACK_REDIS_URL)"
      case $verb in
        stop) stop_throwaway_redis "$STACK_DIR/redis" ;;
        start)
          pid_alive "$STACK_DIR/redis/redis.pid" && die "redis is already running"
          THROWAWAY_PORT=$(cat "$STACK_DIR/redis.port") start_throwaway_redis "$STACK_DIR/redis" \
            --maxmemory 256mb --maxmemory-policy volatile-lru >/dev/null || die "redis-server did not start"
          ;;
      esac
      ;;
    postgres)
      [ "$STACK_OWN_POSTGRES" = 1 ] || die "Postgres is not this stack's own ($STACK_DATABASE_URL)"
      case $verb in
        stop) stop_postgres ;;
        start)
          pid_alive "$STACK_DIR/postgres/data/postmaster.pid" && die "postgres is already running"
          start_throwaway_postgres_again "$STACK_DIR/postgres" "$(cat "$STACK_DIR/postgres.port")" \
            || die "Postgres did not start (see $STACK_DIR/postgres/server.log)"
          ;;
      esac
      ;;
    *) die "unknown dependency '$what' (redis or postgres)" ;;
  esac
  echo "stack: $what: $verb done"
}

stop_postgres() { stop_throwaway_postgres "$STACK_DIR/postgres"; }

write_nginx_conf() {
  local nginx=$STACK_DIR/nginx ports=(${STACK_WORKER_PORTS:-8000 8001 8002}) user_line=""
  local STACK_NGINX_PORT=${STACK_NGINX_PORT:-8088} STACK_STATUS_PORT=${STACK_STATUS_PORT:-8089}
  mkdir -p "$nginx/logs" "$nginx/tmp"
  [ "$(id -u)" -ne 0 ] || user_line="user root;"
  sed -e "s#server worker-1:8000#server 127.0.0.1:${ports[0]}#" \
      -e "s#server worker-2:8000#server 127.0.0.1:${ports[1]}#" \
      -e "s#server worker-3:8000#server 127.0.0.1:${ports[2]}#" \
      -e "s#listen 80;#listen 127.0.0.1:$STACK_NGINX_PORT;#" \
      -e "s#listen 8080;#listen 127.0.0.1:$STACK_STATUS_PORT;#" \
      -e "s#/var/log/nginx/#$nginx/logs/#g" \
      -e "s#zone=falcon_infer:10m rate=2000r/s;#zone=falcon_infer:10m rate=${STACK_NGINX_RATE:-2000r/s};#" \
      -e "s#zone=falcon_infer burst=4000 nodelay;#zone=falcon_infer burst=${STACK_NGINX_BURST:-4000} nodelay;#" \
      deploy/nginx/conf.d/falcon.conf >"$nginx/falcon.conf"
  cat >"$nginx/nginx.conf" <<EOF
# Generated by scripts/stack.sh from deploy/nginx/nginx.conf and conf.d/falcon.conf.
$user_line
worker_processes 2;
pid $nginx/nginx.pid;
error_log $nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    keepalive_timeout 65s;
    server_tokens off;
    client_body_temp_path $nginx/tmp/body;
    proxy_temp_path $nginx/tmp/proxy;
    fastcgi_temp_path $nginx/tmp/fastcgi;
    uwsgi_temp_path $nginx/tmp/uwsgi;
    scgi_temp_path $nginx/tmp/scgi;
    include $nginx/falcon.conf;
}
EOF
}

# worker-N -> index N (1..3)
worker_index() {
  [[ $1 =~ ^worker-([123])$ ]] || die "unknown worker '$1' (worker-1, worker-2 or worker-3)"
  echo "${BASH_REMATCH[1]}"
}

start_worker() {
  local name=$1 n port ports
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  n=$(worker_index "$name")
  ports=($STACK_WORKER_PORTS)
  port=${ports[$((n - 1))]}
  pid_alive "$STACK_DIR/$name.pid" && die "$name is already running"
  # Settings for this worker: the caller's environment, then the stack's own. The stack's
  # nginx runs on this host, so loopback is the one proxy trusted for X-Forwarded-For; the
  # three workers share one text hash key file (the first makes it). As in compose,
  # the workers see POSTGRES_* and DEBUG_MEMORY_GROWTH, so `scripts/stack.sh env` answers
  # the runbook's printenv checks.
  local pg_port=${STACK_DATABASE_URL##*@127.0.0.1:}
  pg_port=${pg_port%%/*}
  WORKER_ID=$name HOST=127.0.0.1 PORT=$port \
    REDIS_URL=$STACK_REDIS_URL DATABASE_URL=$STACK_DATABASE_URL \
    POSTGRES_HOST=127.0.0.1 POSTGRES_PORT=$pg_port POSTGRES_DB=falcon_inference POSTGRES_USER=falcon \
    DEBUG_MEMORY_GROWTH=${DEBUG_MEMORY_GROWTH:-false} \
    DEBUG_MEMORY_GROWTH_MB_PER_REQUEST=${DEBUG_MEMORY_GROWTH_MB_PER_REQUEST:-0} \
    LOG_SPOOL_DIR=$STACK_DIR/spool-$name TRUSTED_PROXIES=${TRUSTED_PROXIES:-127.0.0.1/32} \
    TEXT_HASH_KEY_FILE=${TEXT_HASH_KEY_FILE:-$STACK_DIR/text_hash.key} \
    setsid "$FALCON_BIN" serve >>"$STACK_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STACK_DIR/$name.pid"
  wait_http "http://127.0.0.1:$port/readyz" 30 || die "$name did not become ready (see $STACK_DIR/$name.log)"
  echo "stack: $name ready on http://127.0.0.1:$port (pid $(cat "$STACK_DIR/$name.pid"))"
}

# SIGTERM and wait for the drain to finish (the worker exits by itself).
stop_worker() {
  local name=$1 pidf=$STACK_DIR/$1.pid pid
  pid_alive "$pidf" || { rm -f "$pidf"; return 0; }
  pid=$(cat "$pidf")
  kill -TERM "$pid"
  for _ in $(seq 1 400); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; echo "stack: $name did not stop in 40 s; killed" >&2; }
  rm -f "$pidf"
}

kill_worker() {
  local pidf=$STACK_DIR/$1.pid
  pid_alive "$pidf" || die "$1 is not running"
  kill -KILL "$(cat "$pidf")"
  rm -f "$pidf"
}

cmd_up() {
  [ -f "$ENV_FILE" ] && pid_alive "$STACK_DIR/nginx/nginx.pid" && die "already up (scripts/stack.sh down first)"
  command -v nginx >/dev/null || die "nginx not found (scripts/ensure-test-deps.sh installs it)"
  local bin=${FALCON_BIN:-$ROOT/target/release/falcon}
  if [ ! -x "$bin" ]; then
    echo "stack: building $bin"
    cargo build --release --locked -p falcon-cli
  fi
  local nginx_port=${STACK_NGINX_PORT:-8088} status_port=${STACK_STATUS_PORT:-8089}
  local worker_ports=${STACK_WORKER_PORTS:-8000 8001 8002}
  # If any step below fails, stop whatever was started: nothing is left running.
  trap 'echo "stack: up failed; stopping what was started" >&2; cmd_down >&2' EXIT
  local redis_url=${REDIS_URL:-} database_url=${DATABASE_URL:-} own_redis=0 own_pg=0
  # A stack brought down earlier in this STACK_DIR left its throwaway data (down keeps the
  # logs): a new stack starts from empty ones, or initdb would refuse the old directory.
  as_root_rm "$STACK_DIR/postgres" "$STACK_DIR/redis" "$STACK_DIR"/spool-worker-*
  [ -n "$redis_url" ] || { redis_url=$(start_redis); own_redis=1; }
  [ -n "$database_url" ] || { database_url=$(start_postgres); own_pg=1; }
  cat >"$ENV_FILE" <<EOF
FALCON_BIN=$bin
STACK_NGINX_PORT=$nginx_port
STACK_STATUS_PORT=$status_port
STACK_WORKER_PORTS="$worker_ports"
STACK_REDIS_URL=$redis_url
STACK_DATABASE_URL=$database_url
STACK_OWN_REDIS=$own_redis
STACK_OWN_POSTGRES=$own_pg
EOF
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  for w in worker-1 worker-2 worker-3; do start_worker "$w"; done
  write_nginx_conf
  nginx -t -q -c "$STACK_DIR/nginx/nginx.conf" -p "$STACK_DIR/nginx" || die "nginx -t failed"
  nginx -c "$STACK_DIR/nginx/nginx.conf" -p "$STACK_DIR/nginx"
  wait_http "http://127.0.0.1:$nginx_port/nginx-health" 10 || die "nginx did not come up"
  trap - EXIT
  cmd_status
}

# Stops everything this STACK_DIR started, also after an `up` that failed half-way: it
# goes by pid files and data directories, not by what stack.env says.
cmd_down() {
  if pid_alive "$STACK_DIR/nginx/nginx.pid"; then
    nginx -c "$STACK_DIR/nginx/nginx.conf" -p "$STACK_DIR/nginx" -s quit || true
    for _ in $(seq 1 50); do pid_alive "$STACK_DIR/nginx/nginx.pid" || break; sleep 0.1; done
  fi
  for w in worker-1 worker-2 worker-3; do stop_worker "$w"; done
  stop_throwaway_redis "$STACK_DIR/redis"
  stop_postgres
  rm -f "$ENV_FILE"
  echo "stack: down (logs kept in $STACK_DIR)"
}

cmd_status() {
  [ -f "$ENV_FILE" ] || { echo "stack: not up"; return 1; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  local ports=($STACK_WORKER_PORTS) ok=0 i
  printf '%-10s %-26s %s\n' component address state
  for i in 1 2 3; do
    local url="http://127.0.0.1:${ports[$((i - 1))]}"
    local state=down
    pid_alive "$STACK_DIR/worker-$i.pid" && state="running (pid $(cat "$STACK_DIR/worker-$i.pid"))"
    curl -fsS -o /dev/null --max-time 1 "$url/readyz" 2>/dev/null && state="$state, ready" || ok=1
    printf '%-10s %-26s %s\n' "worker-$i" "$url" "$state"
  done
  local lb="http://127.0.0.1:$STACK_NGINX_PORT"
  local state=down
  curl -fsS -o /dev/null --max-time 1 "$lb/nginx-health" 2>/dev/null && state=up || ok=1
  printf '%-10s %-26s %s\n' nginx "$lb" "$state"
  printf '%-10s %-26s\n' redis "$STACK_REDIS_URL"
  printf '%-10s %-26s\n' postgres "$STACK_DATABASE_URL"
  echo "check: make check-health STACK=native"
  return $ok
}

cmd_logs() {
  worker_index "${1:?worker-N}" >/dev/null
  [ -f "$STACK_DIR/$1.log" ] || die "no log for $1 in $STACK_DIR"
  if [ "${2:-}" = "-f" ]; then tail -n 20 -f "$STACK_DIR/$1.log"; else cat "$STACK_DIR/$1.log"; fi
}

cmd_env() {
  worker_index "${1:?worker-N}" >/dev/null
  pid_alive "$STACK_DIR/$1.pid" || die "$1 is not running"
  tr '\0' '\n' <"/proc/$(cat "$STACK_DIR/$1.pid")/environ" | sort
}

cmd_stats() {
  local w
  printf '%-10s %8s %10s %6s %12s\n' worker pid rss_mib cpu% elapsed
  for w in worker-1 worker-2 worker-3; do
    if pid_alive "$STACK_DIR/$w.pid"; then
      # shellcheck disable=SC2046
      printf '%-10s %8s %10.1f %6s %12s\n' "$w" $(ps -o pid=,rss=,pcpu=,etime= -p "$(cat "$STACK_DIR/$w.pid")" \
        | awk '{ printf "%s %s %s %s", $1, $2 / 1024, $3, $4 }')
    else
      printf '%-10s %8s\n' "$w" down
    fi
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) [ -f "$ENV_FILE" ] || die "not up"; worker_index "${2:?worker-N}" >/dev/null; kill_worker "$2" ;;
  render-nginx) write_nginx_conf; echo "$STACK_DIR/nginx/nginx.conf" ;;
  start|stop|restart)
    [ -f "$ENV_FILE" ] || die "not up"
    case "${2:?worker-N, redis or postgres}" in
      redis|postgres)
        [ "$1" = start ] || dependency stop "$2"
        [ "$1" = stop ] || dependency start "$2"
        ;;
      *)
        worker_index "$2" >/dev/null
        [ "$1" = start ] || stop_worker "$2"
        [ "$1" = stop ] || start_worker "$2"
        ;;
    esac
    ;;
  logs) cmd_logs "${@:2}" ;;
  env) cmd_env "${2:-}" ;;
  reload)
    worker_index "${2:?worker-N}" >/dev/null
    pid_alive "$STACK_DIR/$2.pid" || die "$2 is not running"
    kill -HUP "$(cat "$STACK_DIR/$2.pid")"
    echo "stack: $2: SIGHUP sent (the outcome is its \"Model reloaded\" or \"Model reload failed\" log line)"
    ;;
  redis-cli) [ -f "$ENV_FILE" ] || die "not up"; source "$ENV_FILE"; redis-cli -u "$STACK_REDIS_URL" "${@:2}" ;;
  psql) [ -f "$ENV_FILE" ] || die "not up"; source "$ENV_FILE"; psql "$STACK_DATABASE_URL" "${@:2}" ;;
  falcon) [ -f "$ENV_FILE" ] || die "not up"; source "$ENV_FILE"
    REDIS_URL=$STACK_REDIS_URL DATABASE_URL=$STACK_DATABASE_URL "$FALCON_BIN" "${@:2}" ;;
  pg_isready) [ -f "$ENV_FILE" ] || die "not up"; source "$ENV_FILE"; pg_isready -d "$STACK_DATABASE_URL" ;;
  stats) cmd_stats ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
