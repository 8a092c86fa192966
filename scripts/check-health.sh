#!/usr/bin/env bash
# `make check-health`: the load balancer and each worker, as the runbook checks them.
#   BASE_URL     the load balancer          (default: http://localhost, the compose stack)
#   WORKER_URLS  the workers, space-separated (default: http://localhost:8000 ... :8002)
#   STACK=native reads both from the native stack (scripts/stack.sh) instead.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${STACK:-compose}" = native ]; then
  env_file=${STACK_DIR:-.stack}/stack.env
  [ -f "$env_file" ] || { echo "native stack not up (make stack-up)"; exit 1; }
  # shellcheck disable=SC1090
  . "$env_file"
  BASE_URL=${BASE_URL:-http://127.0.0.1:$STACK_NGINX_PORT}
  WORKER_URLS=${WORKER_URLS:-$(for p in $STACK_WORKER_PORTS; do printf 'http://127.0.0.1:%s ' "$p"; done)}
fi
BASE_URL=${BASE_URL:-http://localhost}
WORKER_URLS=${WORKER_URLS:-http://localhost:8000 http://localhost:8001 http://localhost:8002}
failed=0

check() { # name url
  local body code
  body=$(curl -sS --max-time 3 -w '\n%{http_code}' "$2" 2>&1)
  code=${body##*$'\n'}
  body=${body%$'\n'*}
  if [ "$code" = 200 ]; then
    printf '  OK    %-34s %s\n' "$1" "$(printf '%s' "$body" | tr -d '\n' | cut -c1-110)"
  else
    printf '  FAIL  %-34s %s %s\n' "$1" "${code:-no answer}" "$(printf '%s' "$body" | tr -d '\n' | cut -c1-110)"
    failed=1
  fi
}

echo "load balancer ($BASE_URL)"
check "nginx /nginx-health" "$BASE_URL/nginx-health"
check "via nginx /healthz" "$BASE_URL/healthz"
check "via nginx /readyz" "$BASE_URL/readyz"
for url in $WORKER_URLS; do
  echo "worker ($url)"
  check "/healthz" "$url/healthz"
  check "/readyz" "$url/readyz"
done
if [ $failed -eq 0 ]; then echo "all healthy"; else echo "UNHEALTHY: see FAIL lines above"; fi
exit $failed
