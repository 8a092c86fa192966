#!/usr/bin/env bash
# Installs NVIDIA's load tool perf_analyzer into .tools/perf_analyzer (when missing), pinned,
# without installing anything on the system. `.tools/perf_analyzer/perf_analyzer` runs it.
#
# Where it comes from: the binary ships inside the tritonclient wheel (the PyPI package named
# perf-analyzer is an empty placeholder). 2.41.0's binary is built for glibc 2.35, so it runs on
# Debian 12 as it is (the 2.60 wheel's needs glibc 2.38); the wheels from 2.65 on no longer carry
# it. It links two libraries Debian 12 does not have installed: libb64 (Debian's own package
# libb64-0d, unpacked from `apt-get download`, not installed) and the CUDA runtime libcudart.so.12
# (NVIDIA's wheel nvidia-cuda-runtime-cu12; perf_analyzer loads it for CUDA shared memory, which
# the HTTP runs here never use: no GPU is needed). Each download is checked against its SHA-256.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/perf_analyzer
if "$dest/perf_analyzer" --version >/dev/null 2>&1; then
  exit 0
fi
echo "installing perf_analyzer (tritonclient 2.41.0) into $dest"
python=.tools/venv/bin/python
[ -x "$python" ] || python3 -m venv .tools/venv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip_download() {
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "$1" --python-version 3.11 -d "$tmp" "$2"
}
pip_download manylinux1_x86_64 tritonclient==2.41.0
pip_download manylinux2014_x86_64 nvidia-cuda-runtime-cu12==12.9.79
# apt's package lists may be missing or stale on a machine that had everything else: update
# them once if the download does not find the package.
if ! (cd "$tmp" && apt-get download libb64-0d=1.2-5+b1 >/dev/null 2>&1); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  (cd "$tmp" && apt-get download libb64-0d=1.2-5+b1 >/dev/null)
fi
(cd "$tmp" && sha256sum --check --quiet) <<'EOF'
cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629  tritonclient-2.41.0-py3-none-manylinux1_x86_64.whl
25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3  nvidia_cuda_runtime_cu12-12.9.79-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82  libb64-0d_1.2-5+b1_amd64.deb
EOF
mkdir -p "$dest/bin" "$dest/lib"
"$python" - "$tmp" "$dest" <<'EOF'
import pathlib, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel, member, target in [
    ("tritonclient-2.41.0-py3-none-manylinux1_x86_64.whl", "tritonclient-2.41.0.data/data/bin/perf_analyzer", "bin/perf_analyzer"),
    ("nvidia_cuda_runtime_cu12-12.9.79-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
     "nvidia/cuda_runtime/lib/libcudart.so.12", "lib/libcudart.so.12"),
]:
    with zipfile.ZipFile(tmp / wheel) as z:
        (dest / target).write_bytes(z.read(member))
EOF
dpkg-deb -x "$tmp"/libb64-0d_1.2-5+b1_amd64.deb "$tmp/b64"
cp "$tmp/b64/usr/lib/x86_64-linux-gnu/libb64.so.0d" "$dest/lib/"
chmod 755 "$dest/bin/perf_analyzer"
cat >"$dest/perf_analyzer" <<'EOF'
#!/bin/sh
# perf_analyzer with the libraries it was unpacked with (scripts/install-perf-analyzer.sh).
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/perf_analyzer" "$@"
EOF
chmod 755 "$dest/perf_analyzer"
"$dest/perf_analyzer" --version && echo
