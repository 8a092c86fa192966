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
TMPDIR=$suite cargo test --workspace --locked "$@"
rc=$?
echo "make test: cargo test took $(($(date +%s) - started)) s"
./scripts/check-leftovers.sh "$suite" || rc=1
rm -rf "$suite"
exit $rc
