#!/usr/bin/env bash
# Signed request bodies for oha, one file per scenario, made by `cbgate sign`:
#   loadtest/bodies.sh DIR SECRET [PROJECT=1234] [CBGATE=target/release/cbgate]
#   callback.signed.json       the seed's Kassa24 Terminal callback (POST /callbacks: 200, then duplicates)
#   verify.signed.json         a kiosk verify (POST /terminal)
#   check_deposit.signed.json  a kiosk check_deposit (POST /terminal)
#   bad_signature.json         the callback with one signature character changed (POST /callbacks: 400)
# then, for example:
#   oha -z 10s -c 64 -m POST -T application/json -D DIR/verify.signed.json http://127.0.0.1:8080/terminal
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1 secret=$2 project=${3:-1234} cbgate=${4:-target/release/cbgate}
mkdir -p "$dir"
python3 - "$dir" "$project" <<'PY'
import json, sys
out, project = sys.argv[1], int(sys.argv[2])
vectors = json.load(open("tests/data/signature.json"))["vectors"]
seed = next(v for v in vectors if v["name"].startswith("seed:kassa24_terminal(Monetix)#7:callback"))
callback = json.loads(seed["payload_json"])
callback["project_id"] = project
bodies = {
    "callback": callback,
    "verify": {"type": "verify", "customer_id": "7123456789", "project_id": project},
    "check_deposit": {"type": "check_deposit", "project_id": project, "customer_id": "7123456789",
                      "amount": 150000, "currency": "KZT", "payment_method": "kassa24"},
}
for name, body in bodies.items():
    # Pretty-printed, as the platform sends it.
    open(f"{out}/{name}.json", "w").write(json.dumps(body, indent=2))
PY
for name in callback verify check_deposit; do
  "$cbgate" sign --secret "$secret" --attach "$dir/$name.json" >"$dir/$name.signed.json"
done
python3 - "$dir" <<'PY'
import json, sys
body = json.load(open(sys.argv[1] + "/callback.signed.json"))
sig = body["signature"]
body["signature"] = ("B" if sig[0] == "A" else "A") + sig[1:]
open(sys.argv[1] + "/bad_signature.json", "w").write(json.dumps(body))
PY
