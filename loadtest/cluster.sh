#!/usr/bin/env bash
# Ingest on each engine in one run, every NATS server with sync_interval: always:
# embedded; JetStream R1 and R3 with one gateway node; R3 with three nodes; each
# JetStream row beside the raw publisher (same message, same concurrency, no HTTP) on
# the same servers. Then end-to-end delivery lag through three nodes, and the bytes
# each stored callback takes. 127.0.0.1 only; every process is stopped at the end.
#   loadtest/cluster.sh        (SECS=8 per run, CONN=64, RATE=1000 for the lag run)
# Writes a markdown table to loadtest/cluster-results.md (OUT) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
CONN=${CONN:-64}
RATE=${RATE:-1000}
SECRET=cluster-secret
OUT=${OUT:-loadtest/cluster-results.md}
BIN=target/release
cargo build --release --bin cbgate --example callback_load --example js_publisher --example merchant_stub
NATS=${NATS_SERVER:-$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")/nats-server}
[ -x "$NATS" ] || NATS=$(command -v nats-server)
source loadtest/harness.sh

nats_pids=()
runs=0
# nats_up N: N clustered servers (one: no cluster) on 24222.., routes 26222.., http 28322..
nats_up() {
  local n=$1 routes="" i
  runs=$((runs + 1))
  for i in $(seq "$n"); do routes+="\"nats://127.0.0.1:$((26221 + i))\","; done
  for i in $(seq "$n"); do
    local conf="$work/nats-$i.conf"
    {
      echo "server_name: n$i"
      echo "listen: \"127.0.0.1:$((24221 + i))\""
      echo "http: \"127.0.0.1:$((28321 + i))\""
      echo "jetstream { store_dir: \"$work/js-$runs-$i\", sync_interval: always }"
      [ "$n" -gt 1 ] && echo "cluster { name: bench, listen: \"127.0.0.1:$((26221 + i))\", routes: [${routes%,}] }"
    } >"$conf"
    start "$NATS" -c "$conf"
    nats_pids+=("${pids[-1]}")
  done
  for i in $(seq "$n"); do
    for _ in $(seq 200); do
      curl -sf "http://127.0.0.1:$((28321 + i))/healthz" >/dev/null && break
      sleep 0.05
    done
  done
}
nats_down() {
  for p in "${nats_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${nats_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  nats_pids=()
}
nats_urls() {
  local n=$1 out="" i
  for i in $(seq "$n"); do out+="\"nats://127.0.0.1:$((24221 + i))\","; done
  echo "[${out%,}]"
}

# js_config N_NATS REPLICAS ENDPOINT_TOML: a node's config on the JetStream engine.
js_config() {
  cat <<EOF
[storage]
engine = "jetstream"
nats_urls = $(nats_urls "$1")
replicas = $2
partitions = 64
max_bytes = "4GiB"
[log]
level = "warn"
access = false
[[projects]]
id = 1234
secrets = ["$SECRET"]
${3:-}
EOF
}

gw_pids=()
# gateways CONFIG COUNT: COUNT nodes on 28081.. (admin 29091..); sets `urls` to their
# callback URLs. (Not in a $(...) subshell: the harness must see the processes.)
gateways() {
  local i
  urls=""
  for i in $(seq "$2"); do
    start "$BIN/cbgate" serve --config "$1" --listen "127.0.0.1:$((28080 + i))" --admin-listen "127.0.0.1:$((29090 + i))"
    gw_pids+=("${pids[-1]}")
  done
  for i in $(seq "$2"); do
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$((29090 + i))/readyz" >/dev/null && break
      sleep 0.05
    done
    urls+="http://127.0.0.1:$((28080 + i))/callbacks,"
  done
  urls=${urls%,}
}
gateways_down() {
  for p in "${gw_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${gw_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  gw_pids=()
}

op=1
rows=()
# row SCENARIO TARGET JSON [FLOOR_RPS FLOOR_WITH_READS_RPS]
row() {
  rows+=("$(python3 - "$@" <<'PY'
import json, sys
scenario, target, raw = sys.argv[1:4]
floors = [float(x) for x in sys.argv[4:6]]
d = json.loads(raw)
ratios = " | ".join(f"{d['rps'] / f:.2f}x" for f in floors) if floors else " | "
print(f"| {scenario} | {target} | {d['rps']:.0f} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {' '.join(d['statuses'])} | {ratios} |")
PY
)")
}
load() { # load URLS: distinct callbacks over CONN connections for SECS; sets `result`
  result=$("$BIN/examples/callback_load" "$1" $SECRET 1234 --connections "$CONN" --seconds "$SECS" --start-op "$op" --count 5000000)
  op=$((op + 5000000))
}
rps() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['rps'])" "$1"; }

# 1. Embedded, one node (redb, fdatasync per group commit).
cat >"$work/embedded.toml" <<EOF
[storage]
dir = "$work/embedded"
[log]
level = "warn"
access = false
[[projects]]
id = 1234
secrets = ["$SECRET"]
EOF
gateways "$work/embedded.toml" 1
load "$urls"
row "embedded" "1 gateway" "$result"
gateways_down

# 2. JetStream R1 and R3: the raw publisher first, then cbgate on the same servers.
for setup in "1 1" "3 3"; do
  read -r n r <<<"$setup"
  nats_up "$n"
  raw=$("$BIN/examples/js_publisher" nats://127.0.0.1:24222 --replicas "$r" --concurrency "$CONN" --seconds "$SECS")
  row "raw publisher R$r" "$n nats-server" "$raw"
  floor=$(rps "$raw")
  # The same, with every partition read back as it is written (cbgate's delivery reads).
  raw=$("$BIN/examples/js_publisher" nats://127.0.0.1:24222 --replicas "$r" --concurrency "$CONN" --seconds "$SECS" --read)
  row "raw publisher R$r + reads" "$n nats-server" "$raw"
  floor_read=$(rps "$raw")
  js_config "$n" "$r" >"$work/js-$r.toml"
  for nodes in 1 3; do
    [ "$r" = 1 ] && [ "$nodes" = 3 ] && continue
    gateways "$work/js-$r.toml" "$nodes"
    load "$urls"
    row "jetstream R$r" "$nodes gateway(s), $n nats-server" "$result" "$floor" "$floor_read"
    gateways_down
  done
  if [ "$r" = 3 ]; then
    # What one stored callback costs: bytes on disk, per replica.
    sizing=$(curl -s "http://127.0.0.1:28322/jsz?streams=true" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for a in d.get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"] == "CBGATE":
            n, size = s["state"]["messages"], s["state"]["bytes"]
            print(f"{n} callbacks stored, {size / max(n, 1):.0f} bytes each on disk per replica")
')
    mem=$(curl -s "http://127.0.0.1:28322/varz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mem"])')
  fi
  nats_down
done

# 3. End to end through three nodes at R3: delivery lag from send to the endpoint.
nats_up 3
start "$BIN/examples/merchant_stub" 127.0.0.1:29000
wait_port 29000
js_config 3 3 '[[projects.endpoints]]
name = "stub"
url = "http://127.0.0.1:29000/callbacks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"' >"$work/js-lag.toml"
gateways "$work/js-lag.toml" 3
lag_load=$("$BIN/examples/callback_load" "$urls" $SECRET 1234 --connections 16 --seconds "$SECS" \
  --start-op "$op" --count 5000000 --stamp --rate "$RATE")
sent=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['sent'])" "$lag_load")
for _ in $(seq 600); do
  delivered=$(curl -s http://127.0.0.1:29000/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["deliveries"])')
  [ "$delivered" -ge "$sent" ] && break
  sleep 0.1
done
stats=$(curl -s http://127.0.0.1:29000/stats)
gateways_down
nats_down

{
  echo "Run $(date -u +%FT%TZ) on $(nproc) cores, nats-server $("$NATS" --version | awk '{print $2}') with sync_interval: always;"
  echo "$SECS s per row, $CONN connections (cbgate) or $CONN publishers in flight (raw), all on 127.0.0.1."
  echo
  echo "| scenario | target | req/s | p50 ms | p99 ms | answers | vs raw publisher | vs raw + reads |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Delivery through 3 nodes at R3, $RATE callbacks/s over 16 connections: $sent sent, $delivered delivered; stub: $stats"
  echo "Sizing (R3): ${sizing:-n/a}; nats-server n1 RSS after the runs: $((${mem:-0} / 1048576)) MiB."
} | tee "$OUT"
