#!/usr/bin/env bash
# `make test`: the whole suite, then a check that it left nothing behind. Every temp dir
# the tests make goes under one suite directory (TMPDIR); afterwards no process may still
# run from it or name it, and it must be empty.
set -uo pipefail
cd "$(dirname "$0")/.."
suite=$(mktemp -d "${TMPDIR:-/tmp}/falcon-suite.XXXXXX")
# Throwaway Postgres clusters run as the postgres user and must reach their dirs in here.
chmod 0755 "$suite"
started=$(date +%s)
# The `falcon` binary turns ONNX Runtime's telemetry SDK off itself (it would leave a session
# file in TMPDIR); test binaries that load ONNX Runtime in process (falcon-bert's reference
# test, the backend factory's unit test) get the same switch from here.
export ORT_DISABLE_TELEMETRY=1
# Notes the tests leave for a person (what they skipped, and why), printed after the run.
notes=target/test-notes
rm -rf "$notes"
if [ $# -gt 0 ]; then
  TMPDIR=$suite cargo test --workspace --locked "$@"
  rc=$?
else
  # The failure drills compare latencies with and without a fault, and the memory checks
  # fit a slope or take a peak: they run after the rest, one at a time, on a machine no
  # other test is loading (the 600 stalled uploads of one would move another's slope).
  serial=(drills:: connections::an_abuse_run observability::without_the_drill_rss
    abuse::stalled_bodies abuse::a_batch_of_nested_arrays)
  TMPDIR=$suite cargo test --workspace --locked -- "${serial[@]/#/--skip=}"
  rc=$?
  TMPDIR=$suite cargo test -p falcon-cli --locked --test it -- --test-threads=1 "${serial[@]}" || rc=1
fi
echo "make test: cargo test took $(($(date +%s) - started)) s"
for note in "$notes"/*.txt; do
  [ -e "$note" ] || continue
  echo "--- note from the suite: $note"
  cat "$note"
done
./scripts/check-leftovers.sh "$suite" || rc=1
rm -rf "$suite"
exit $rc
