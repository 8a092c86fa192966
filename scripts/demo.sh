#!/usr/bin/env bash
# `make demo`: a few requests through the load balancer, showing what Falcon answers.
#   BASE_URL (default http://localhost), or STACK=native for scripts/stack.sh's nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${STACK:-compose}" = native ] && [ -z "${BASE_URL:-}" ]; then
  # shellcheck disable=SC1090
  . "${STACK_DIR:-.stack}/stack.env"
  BASE_URL=http://127.0.0.1:$STACK_NGINX_PORT
fi
BASE_URL=${BASE_URL:-http://localhost}
short() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d.get(k) for k in sys.argv[1:] if k in d}))' "$@"; }
post() { curl -sS --max-time 5 -H 'Content-Type: application/json' "$@" "$BASE_URL/infer"; }

echo "== three texts"
for t in "I absolutely love this, best purchase ever!" "This is the worst service I have ever had." "The package arrived on Tuesday."; do
  printf '%-48s ' "$t"
  post -d "{\"text\": \"$t\"}" | short prediction confidence worker_id cache_hit
done
echo "== the same text again: served from the cache"
post -d '{"text": "I absolutely love this, best purchase ever!"}' | short prediction cache_hit worker_id
key="demo-$(date +%s)"
echo "== an idempotency key, twice: the second is a replay"
post -H "X-Idempotency-Key: $key" -d '{"text": "Pretty good overall"}' | short prediction idempotency_hit request_id
post -H "X-Idempotency-Key: $key" -d '{"text": "Pretty good overall"}' | short prediction idempotency_hit request_id
echo "== a bad request: a clear error with a stable error_type"
post -d '{"text": ""}' | short error_type message request_id
