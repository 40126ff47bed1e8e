#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), starting from the committed
# seeds (seeds/<target>) plus what earlier runs found (corpus/<target>, not committed).
# Exits non-zero on the first crash, leak, timeout or out-of-memory; the input that
# did it is in artifacts/<target>/ (reproduce: cargo +nightly fuzz run TARGET FILE).
#
#   fuzz/run.sh [SECONDS]        # CI: fuzz/run.sh 15 (six targets)
#
# Needs rustup's nightly toolchain (the machine image has one; installed here when
# missing) and cargo-fuzz (installed here when missing).
set -euo pipefail
secs=${1:-20}
cd "$(dirname "$0")"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=(canonical callback terminal_request merchant_answer config journal_record)
# Sanitizer builds share nothing with the gateway's: under CARGO_TARGET_DIR they get a
# folder of their own (cargo-fuzz looks for its binaries where --target-dir says).
target_dir=()
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  target_dir=(--target-dir "$CARGO_TARGET_DIR/fuzz")
fi
cargo +nightly fuzz build -O "${target_dir[@]}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  echo "== fuzz $t for ${secs}s"
  # -timeout: an input slower than 10 s is a finding (quadratic paths on 16 KiB).
  status=0
  cargo +nightly fuzz run -O "${target_dir[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units|SUMMARY|Test unit written)|panicked at" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
