#!/usr/bin/env bash
# The merchant listener's figures in one command (issue 17), 127.0.0.1 only, every load
# bounded in time (about 3 minutes after the build):
#   loadtest/merchant.sh     (SECS=8 per row, CONN=64 connections when saturated,
#                             RATE=500 req/s for equal-load rows, ROUNDS=3)
# - Payment Page signing: cbgate's POST /payment-page/sign against the platform's Python SDK
#   in a gunicorn handler doing the same (loadtest/python_payment_page.py: token, JSON,
#   required parameters, URL, signature), saturated and at RATE.
# - Gate API proxy: POST /gate/v2/payment/mobile/sale through cbgate to the stub against the
#   signed body straight to the stub, at RATE, in ROUNDS alternating rounds; the added
#   latency is cbgate's p50/p99 minus the direct call's, median of the rounds.
# Writes a markdown table to stdout and to loadtest/merchant-results.md; stops every process
# it started (harness.sh). Installs ecommpay-sdk and gunicorn (pip) if missing. Builds into
# $CARGO_TARGET_DIR when set.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
CONN=${CONN:-64}
RATE=${RATE:-500}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-loadtest/merchant-results.md}
SECRET=bench-secret
TOKEN=bench-merchant-token-0123456789

export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
python3 -c "import payment_page_sdk, gunicorn" 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check ecommpay-sdk==1.0.6 gunicorn
cargo build --release --bin cbgate --example merchant_stub --example body_load
BIN=${CARGO_TARGET_DIR:-target}/release
source loadtest/harness.sh

# cbgate: project 1234 with a merchant token; the Gate API is the stub on :19000.
{
  gateway_config 18181 19191 data "merchant_token = \"$TOKEN\""
  printf '[merchant]\nlisten = "127.0.0.1:18182"\ngate_url = "http://127.0.0.1:19000"\n'
  printf 'payment_page_url = "https://paymentpage.platform.test/payment"\n'
} >"$work/cbgate.toml"
"$BIN/cbgate" check-config "$work/cbgate.toml" >/dev/null

start "$BIN/examples/merchant_stub" 127.0.0.1:19000
start "$BIN/cbgate" serve --config "$work/cbgate.toml"
(cd loadtest && CBGATE_SECRET=$SECRET CBGATE_TOKEN=$TOKEN exec gunicorn -k gthread -w "$(nproc)" --threads 8 \
  -b 127.0.0.1:18071 python_payment_page:app --log-level warning) >>"$work/procs.log" 2>&1 &
pids+=($!)
for p in 19000 18182 18071; do wait_port $p; done

# The seeds' Kassa24 Payment Page parameters (Cyrillic names, as a KZ shop sends them)
# and the seeds' Mobile Commerce sale.
cat >"$work/page.json" <<'EOF'
{"project_id":1234,"payment_id":"payment_47","customer_id":"customer_123","customer_first_name":"Жанна","customer_last_name":"Әбенова","customer_email":"johndoe@example.com","customer_phone":"77011234567","payment_currency":"KZT","payment_amount":100000,"force_payment_method":"kassa24","language_code":"ru","payment_description":"Оплата заказа №47"}
EOF
cat >"$work/sale.json" <<'EOF'
{"general":{"project_id":1234,"payment_id":"payment_47"},"customer":{"id":"customer_123","ip_address":"198.51.100.47","first_name":"John","last_name":"Doe","email":"johndoe@example.com"},"account":{"number":"71234567890"},"payment":{"currency":"KZT","amount":100000}}
EOF
# What the stub gets from cbgate: the same body with general.signature.
sig=$("$BIN/cbgate" sign --secret "$SECRET" "$work/sale.json")
sed "s|\"payment_id\":\"payment_47\"}|\"payment_id\":\"payment_47\",\"signature\":\"$sig\"}|" "$work/sale.json" >"$work/sale.signed.json"
grep -q '"signature"' "$work/sale.signed.json"

# Each target must answer 200 before it is measured.
for target in "http://127.0.0.1:18182/payment-page/sign" "http://127.0.0.1:18071/payment-page/sign"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" --data-binary @"$work/page.json" "$target")
  [ "$code" = 200 ] || { echo "$target answered $code" >&2; exit 1; }
done

auth="Authorization: Bearer $TOKEN"
# load URL BODY [FLAGS]: one body_load run as "rps|p50|p99|p99.9|errors|ratio".
load() {
  "$BIN/examples/body_load" "$1" "$2" --header "$auth" --seconds "$SECS" ${3:-} | python3 loadtest/row.py load "${4:-}"
}
rows=()
row() { # scenario target result
  IFS='|' read -r rps p50 p99 p999 err ratio <<<"$3"
  rows+=("| $1 | $2 | $rps | $p50 | $p99 | $p999 | $err | $ratio |")
  echo "$1 / $2: $rps req/s, p50 $p50 ms, p99 $p99 ms" >&2
}

# 1. Payment Page signing, saturated: the Python SDK is the baseline.
r=$(load http://127.0.0.1:18071/payment-page/sign "$work/page.json" "--connections $CONN" base)
row "Payment Page signing, $CONN connections" "Python ecommpay-sdk, gunicorn gthread -w $(nproc)" "$r"
py=$(cut -d'|' -f1 <<<"$r")
r=$(load http://127.0.0.1:18182/payment-page/sign "$work/page.json" "--connections $CONN" "$py")
row "Payment Page signing, $CONN connections" "cbgate /payment-page/sign" "$r"
# 2. The same at an equal load both sustain.
r=$(load http://127.0.0.1:18071/payment-page/sign "$work/page.json" "--connections 16 --rate $RATE")
row "Payment Page signing @$RATE/s" "Python ecommpay-sdk, gunicorn" "$r"
r=$(load http://127.0.0.1:18182/payment-page/sign "$work/page.json" "--connections 16 --rate $RATE")
row "Payment Page signing @$RATE/s" "cbgate /payment-page/sign" "$r"

# 3. Gate API proxy against a direct call to the stub, alternating rounds at RATE.
direct=(); proxied=()
for i in $(seq "$ROUNDS"); do
  r=$(load http://127.0.0.1:19000/v2/payment/mobile/sale "$work/sale.signed.json" "--connections 16 --rate $RATE")
  direct+=("$r"); row "Gate API sale @$RATE/s, round $i" "stub direct" "$r"
  r=$(load http://127.0.0.1:18182/gate/v2/payment/mobile/sale "$work/sale.json" "--connections 16 --rate $RATE")
  proxied+=("$r"); row "Gate API sale @$RATE/s, round $i" "cbgate → stub" "$r"
done
# Saturated, for the proxy's throughput.
r=$(load http://127.0.0.1:19000/v2/payment/mobile/sale "$work/sale.signed.json" "--connections $CONN" base)
row "Gate API sale, $CONN connections" "stub direct" "$r"
base=$(cut -d'|' -f1 <<<"$r")
r=$(load http://127.0.0.1:18182/gate/v2/payment/mobile/sale "$work/sale.json" "--connections $CONN" "$base")
row "Gate API sale, $CONN connections" "cbgate → stub" "$r"

added=$(python3 - "${direct[@]}" -- "${proxied[@]}" <<'PY'
import statistics, sys
args = sys.argv[1:]
cut = args.index("--")
def col(rows, i):
    return statistics.median(float(r.split("|")[i]) for r in rows)
d, p = args[:cut], args[cut + 1:]
print("p50 %.3f ms (%.3f → %.3f), p99 %.3f ms (%.3f → %.3f)" % (
    col(p, 1) - col(d, 1), col(d, 1), col(p, 1), col(p, 2) - col(d, 2), col(d, 2), col(p, 2)))
PY
)

{
  echo "Run of $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD), $(nproc) CPUs, SECS=$SECS CONN=$CONN RATE=$RATE ROUNDS=$ROUNDS"
  echo
  echo "| scenario | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | ratio to baseline |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Gate API proxy added latency at $RATE/s (median of $ROUNDS rounds, cbgate minus direct): $added"
} | tee "$OUT"
