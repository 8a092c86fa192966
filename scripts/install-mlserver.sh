#!/usr/bin/env bash
# Installs MLServer 1.7.1, the peer make bench measures Falcon against, into .tools/mlserver
# (its own venv), when missing. Pinned with what it needs to run here: uvloop 0.21.0 (with
# 0.23 its inference worker dies: "There is no current event loop"), and the scikit-learn and
# joblib the peer's model (scripts/peer/) is trained and loaded with.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/mlserver
if "$venv/bin/python" -c "import mlserver, sklearn, joblib" >/dev/null 2>&1; then
  exit 0
fi
echo "installing MLServer 1.7.1 into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "mlserver==1.7.1" "uvloop==0.21.0" "scikit-learn==1.6.1" "joblib==1.6.0"
