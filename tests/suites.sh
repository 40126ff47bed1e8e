#!/usr/bin/env bash
# The hostile-input, merchant-fault and breaker suites against the real binary, then
# every fuzz target for SECONDS each (default 20). Exits non-zero on the first failure.
#
#   tests/suites.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
python3 -m pip install -q -r tests/requirements.txt
cargo test --test it -- hostile:: faults:: breaker:: quarantine:: watchdog::
fuzz/run.sh "$secs"
