#!/usr/bin/env bash
# `make fuzz`: builds the cargo fuzz targets under fuzz/ (libFuzzer) and runs each for
# FUZZ_SECONDS (default 60), starting from the committed seeds (fuzz/seeds/<target>) plus
# what earlier runs found (fuzz/corpus/<target>, not committed). A crash stops the run and
# leaves its input under fuzz/artifacts/<target>/; `cargo fuzz run <target> <file>` replays it.
#   FUZZ_TARGETS ("http_request tokenize log_record" by default), FUZZ_SECONDS,
#   FUZZ_SANITIZER (address, the default, or none)
# cargo-fuzz is installed pinned into .tools/cargo. cargo fuzz passes unstable compiler
# flags (-Z); this machine has only the stable toolchain (no other can be fetched here), so
# RUSTC_BOOTSTRAP=1 lets stable take them. With a nightly toolchain installed, run
# `cargo +nightly fuzz run …` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
cargo_fuzz=.tools/cargo/bin/cargo-fuzz
if ! "$cargo_fuzz" --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz into .tools/cargo"
  cargo install --quiet --locked cargo-fuzz@0.13.2 --root .tools/cargo
fi
export RUSTC_BOOTSTRAP=1
targets=${FUZZ_TARGETS:-$("$cargo_fuzz" list --fuzz-dir fuzz | tr '\n' ' ')}
echo "building the fuzz targets (sanitizer: $sanitizer)"
"$cargo_fuzz" build --fuzz-dir fuzz --sanitizer "$sanitizer"
summary=""
for target in $targets; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  echo "== $target: ${seconds}s =="
  out=$(mktemp)
  rc=0
  "$cargo_fuzz" run --fuzz-dir fuzz --sanitizer "$sanitizer" "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=4096 >"$out" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$out" | tail -n1)
  tail -n 4 "$out"
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: $target crashed (exit $rc); the input is under fuzz/artifacts/$target/:"
    grep -E 'panicked|ERROR|SUMMARY' "$out" | head -n 10
    rm -f "$out"
    exit 1
  fi
  rm -f "$out"
  summary+="$target: ${execs:-?} executions, ${cov:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) inputs, no crash"$'\n'
done
echo "== fuzz summary (${seconds}s each) =="
printf '%s' "$summary"
