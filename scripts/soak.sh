#!/usr/bin/env bash
# Soak runs of feeds served as a log (tests/benches/soak.rs): a 1M-record
# backfill with the follower's Prosody, then the publisher's corvidd,
# restarted in the middle; 5 reports/s for 2 minutes to a follower at 100k,
# throttled by Debian's mod_limits and exempted. About 17 minutes on 2
# cores. CORVID_SOAK_10M=1 adds the 10M-record capacity run (about an
# hour). Arguments name runs (restarts, live, capacity); none runs all.
# Exits non-zero when a goal is missed. Run after scripts/test.sh (which
# installs Prosody 0.12 and 13).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p corvid-tests --bench soak -- "$@"
