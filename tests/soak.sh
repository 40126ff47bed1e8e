#!/usr/bin/env bash
# The flakiness check: the whole `cargo test` RUNS times in a row (default 10) beside
# HOGS busy processes (`yes`, default 2: one per core of the 2-core machine), stopping
# at the first failure. A test that races the machine's speed fails here first.
# Each run's output is in $OUT/run-N.txt (default target/soak), one line per run in
# $OUT/summary.txt.
#
#   tests/soak.sh [RUNS] [HOGS]
set -euo pipefail
runs=${1:-10}
hogs=${2:-2}
cd "$(dirname "$0")/.."
out=${OUT:-target/soak}
mkdir -p "$out"
: > "$out/summary.txt"
cargo test --no-run > "$out/build.txt" 2>&1
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $hogs hogs" | tee -a "$out/summary.txt"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq "$hogs"); do
  yes > /dev/null &
  pids+=($!)
done
for i in $(seq "$runs"); do
  start=$(date +%s)
  if cargo test > "$out/run-$i.txt" 2>&1; then
    passed=$(grep -E '^test result' "$out/run-$i.txt" | awk '{s += $4} END {print s}')
    echo "run $i ok in $(( $(date +%s) - start )) s, $passed tests passed" | tee -a "$out/summary.txt"
  else
    echo "run $i FAILED (see $out/run-$i.txt):" | tee -a "$out/summary.txt"
    grep -E 'FAILED|panicked' "$out/run-$i.txt" | head -5 | tee -a "$out/summary.txt"
    exit 1
  fi
done
echo "all $runs runs passed" | tee -a "$out/summary.txt"
