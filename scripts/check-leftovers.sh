#!/usr/bin/env bash
# check-leftovers.sh DIR: fails if a process still runs from DIR (its working directory),
# names DIR on its command line or in its environment, or if anything is left inside DIR.
# `make test` runs it on the directory that held every temp dir of the suite; every process
# the suite starts inherits TMPDIR=DIR, so a worker that stack.sh or bench.py started from
# the repository root is seen too.
set -uo pipefail
dir=$(cd "$1" && pwd)
bad=0
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$$" ] && continue
  cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
  cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
  environ=$( { tr '\0' '\n' <"$p/environ"; } 2>/dev/null) || environ=""
  if [[ "$cwd" == "$dir"* || "$cmd" == *"$dir"* || "$environ" == *"$dir"* ]]; then
    echo "leftover process $pid (cwd $cwd): $cmd"
    bad=1
  fi
done
left=$(find "$dir" -mindepth 1 -maxdepth 2 2>/dev/null | head -20)
if [ -n "$left" ]; then
  echo "leftover files in $dir:"
  echo "$left"
  bad=1
fi
if [ "$bad" = 0 ]; then
  echo "leftovers: none (no process from the suite runs, no temp dir remains)"
else
  echo "leftovers: the suite left the above behind"
fi
exit $bad
