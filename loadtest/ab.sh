#!/usr/bin/env bash
# A/B of two cbgate binaries under the same load, alternating rounds so machine noise
# hits both alike: distinct callbacks (callback_load) and terminal verify (oha).
#   loadtest/ab.sh OLD_BIN NEW_BIN [ROUNDS=3]     (SECS=6 per run, CONN=64; 127.0.0.1 only)
# Prints req/s, p99 and the gateway's CPU µs per request per round, and the median
# ratio NEW/OLD per scenario.
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

# The gateway's CPU time so far, in clock ticks (user + system, all threads).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# line SCENARIO TICKS_BEFORE TICKS_AFTER JSON: "SCENARIO rps p99_ms cpu_us_per_request" from
# callback_load's or oha's JSON.
line() {
  python3 - "$@" "$hz" <<'PY'
import json, sys
scenario, before, after, path, hz = sys.argv[1:]
d = json.load(open(path))
if "summary" in d:  # oha
    n = sum((d.get("statusCodeDistribution") or {}).values())
    rps, p99 = d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p99"] * 1000
else:  # callback_load
    n, rps, p99 = d["sent"], d["rps"], d["p99_ms"]
print(scenario, round(rps), round(p99, 2), round((float(after) - float(before)) / float(hz) / n * 1e6, 1))
PY
}

# run BIN ROUND: one gateway on fresh data, both scenarios, a line each.
run() {
  gateway_config 18081 19091 "data-$2" >"$work/c.toml"
  start "$1" serve --config "$work/c.toml"
  local g=${pids[-1]} t
  wait_port 18081
  t=$(ticks "$g")
  target/release/examples/callback_load http://127.0.0.1:18081/callbacks $SECRET 1234 --connections "$CONN" \
    --seconds "$SECS" --start-op 1 >"$work/load.json"
  line callbacks "$t" "$(ticks "$g")" "$work/load.json"
  t=$(ticks "$g")
  oha -z "${SECS}s" -c "$CONN" --no-tui --output-format json -m POST -T application/json -D "$work/verify.signed.json" \
    http://127.0.0.1:18081/terminal >"$work/oha.json"
  line terminal "$t" "$(ticks "$g")" "$work/oha.json"
  kill "$g"; wait "$g" 2>/dev/null || true
  rm -rf "$work/data-$2"
}

# Not in a pipeline: run must start its gateway in this shell, so the exit trap stops it.
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    run "$bin" "$side$round" >"$work/round.txt"
    sed "s/^/$side $round /" "$work/round.txt" | tee -a "$work/ab.txt"
  done
done
python3 - "$work/ab.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for scenario in ("callbacks", "terminal"):
    a = [float(r[3]) for r in rows if r[0] == "A" and r[2] == scenario]
    b = [float(r[3]) for r in rows if r[0] == "B" and r[2] == scenario]
    ca = [float(r[5]) for r in rows if r[0] == "A" and r[2] == scenario]
    cb = [float(r[5]) for r in rows if r[0] == "B" and r[2] == scenario]
    print(f"{scenario}: A median {statistics.median(a):.0f} req/s ({statistics.median(ca):.1f} µs CPU/request), "
          f"B median {statistics.median(b):.0f} req/s ({statistics.median(cb):.1f} µs CPU/request), "
          f"B/A {statistics.median(b) / statistics.median(a):.3f}")
PY
