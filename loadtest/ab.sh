#!/usr/bin/env bash
# A/B of two cbgate binaries under the same load, alternating rounds so machine noise
# hits both alike: distinct callbacks (callback_load) and terminal verify (oha).
#   loadtest/ab.sh OLD_BIN NEW_BIN [ROUNDS=3]     (SECS=6 per run, CONN=64; 127.0.0.1 only)
# Prints req/s and p99 per round and the median ratio NEW/OLD per scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 ROUNDS=${3:-3}
SECS=${SECS:-6}
CONN=${CONN:-64}
SECRET=ab-secret
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --example merchant_stub --example callback_load
source loadtest/harness.sh
start target/release/examples/merchant_stub 127.0.0.1:19000
loadtest/bodies.sh "$work" $SECRET 1234 "$A"

# run BIN ROUND: one gateway on fresh data, both scenarios; prints "callbacks rps p99" and "terminal rps p99".
run() {
  gateway_config 18081 19091 "data-$2" >"$work/c.toml"
  start "$1" serve --config "$work/c.toml"
  local g=${pids[-1]}
  wait_port 18081
  target/release/examples/callback_load http://127.0.0.1:18081/callbacks $SECRET 1234 --connections "$CONN" \
    --seconds "$SECS" --start-op 1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print("callbacks", round(d["rps"]), d["p99_ms"])'
  oha -z "${SECS}s" -c "$CONN" --no-tui --output-format json -m POST -T application/json -D "$work/verify.signed.json" \
    http://127.0.0.1:18081/terminal \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("terminal", round(d["summary"]["requestsPerSec"]), round(d["latencyPercentiles"]["p99"]*1000, 2))'
  kill "$g"; wait "$g" 2>/dev/null || true
  rm -rf "$work/data-$2"
}

for round in $(seq "$ROUNDS"); do
  run "$A" "a$round" | sed "s/^/A $round /"
  run "$B" "b$round" | sed "s/^/B $round /"
done | tee "$work/ab.txt"
python3 - "$work/ab.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for scenario in ("callbacks", "terminal"):
    a = [float(r[3]) for r in rows if r[0] == "A" and r[2] == scenario]
    b = [float(r[3]) for r in rows if r[0] == "B" and r[2] == scenario]
    print(f"{scenario}: A median {statistics.median(a):.0f} req/s, B median {statistics.median(b):.0f} req/s, "
          f"B/A {statistics.median(b) / statistics.median(a):.3f}")
PY
