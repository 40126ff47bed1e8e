#!/usr/bin/env bash
# Every suite against the real binary: hostile input, merchant faults, the breaker, a
# damaged journal record, dead critical threads, disk faults (ENOSPC and EIO through an LD_PRELOAD shim) and the crash suite
# (CBGATE_CRASH_ROUNDS rounds of SIGKILL, default 50), each printing its figures; then every
# fuzz target for SECONDS each (default 20). Exits non-zero on the first failure.
#
#   tests/suites.sh [SECONDS]
#   CBGATE_CRASH_ROUNDS=500 tests/suites.sh 120    # the long run
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
python3 -m pip install -q -r tests/requirements.txt
cargo test --test it -- hostile:: faults:: breaker:: quarantine:: watchdog:: disk:: crash:: --show-output
fuzz/run.sh "$secs"
