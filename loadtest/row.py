"""One table row from a load tool's JSON on stdin: rps|p50|p99|p99.9|errors|ratio.
Usage: oha ... --output-format json | python3 row.py oha [BASELINE_RPS|base]
       callback_load ...            | python3 row.py load [BASELINE_RPS|base]
       cbgate simulate --json ...   | python3 row.py simulate [BASELINE_RPS|base]
       k6 run --summary-export F --summary-trend-stats 'med,p(99),p(99.9)'; row.py k6 <F
Errors are transport errors plus any answer that is not 2xx."""
import json
import sys

tool, base = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
d = json.load(sys.stdin)
if tool == "oha":
    s, p = d["summary"], d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution") or {}
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    # Requests still in flight when -z ends are reported as "aborted due to deadline".
    bad += sum(v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k)
    rps, lat = s["requestsPerSec"], [(p[k] or 0) * 1000 for k in ("p50", "p99", "p99.9")]
elif tool == "simulate":
    # Expected 400s are part of the mix; errors are wrong answers and transport errors.
    bad = d["mismatch_count"] + d["transport_errors"]
    rps, lat = d["requests_per_second"], [d["p50_ms"], d["p99_ms"], d["p999_ms"]]
elif tool == "k6":
    # Failed checks and iterations k6 could not start on schedule.
    m = d["metrics"]
    t = m["http_req_duration"]
    bad = m["checks"]["fails"] + m.get("dropped_iterations", {}).get("count", 0)
    rps, lat = m["http_reqs"]["rate"], [t["med"], t["p(99)"], t["p(99.9)"]]
else:
    bad = sum(int(x.split(":")[1]) for x in d["statuses"] if not x.startswith("2"))
    rps, lat = d["rps"], [d["p50_ms"], d["p99_ms"], d["p999_ms"]]
# BASELINE_RPS: a number gives the ratio, "base" marks the baseline row itself.
ratio = {"": "—", "base": "baseline"}.get(base) or "%.2fx" % (rps / float(base))
print("%.0f|%.2f|%.2f|%.2f|%d|%s" % (rps, lat[0], lat[1], lat[2], bad, ratio))
