#!/usr/bin/env bash
# The PyTorch peer for `make bench-minilm`, pinned, in its own venv: .tools/torch-venv with
# torch 2.15.0 and sentence-transformers 6.2.0 from PyPI (about 3.4 GB, about 5 minutes, once).
# Never used by `make test`; the worker never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=".tools/torch-venv"
if "$venv/bin/python" -c 'import torch, sentence_transformers; assert torch.__version__.startswith("2.15.0") and sentence_transformers.__version__ == "6.2.0"' 2>/dev/null; then
  exit 0
fi
echo "installing torch 2.15.0 + sentence-transformers 6.2.0 into $venv (about 3.4 GB)"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.15.0 sentence-transformers==6.2.0
