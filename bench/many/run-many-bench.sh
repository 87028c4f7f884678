#!/usr/bin/env bash
# bench/many: how many connections one listening context completes when many
# peers connect at once, and the listener's memory per connection in
# progress (issue 12). Runs tests/many/many_lab.py (root: it builds a lab)
# and prints its BENCH lines. Figures, not assertions.
#   bash bench/many/run-many-bench.sh [BUILD_DIR] [PEERS] [DELAY_MS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
peers=${2:-50}
delay=${3:-20}
if [ "$(id -u)" != 0 ]; then
    echo "bench/many needs root (network namespaces)" >&2
    exit 77
fi
export NTCP_LAB_NETEMQ=${NTCP_LAB_NETEMQ:-$build/lab/netem-q}
python3 tests/many/many_lab.py --lab "$build/lab/ntcp-lab" --many "$build/tests/many/ntcp_many" \
    --stuntd "$build/cmd/ntcp-stuntd" --brokerd "$build/src/broker/ntcp-brokerd" \
    --peers "$peers" --delay "$delay" | grep -E 'BENCH|x [a-z0-9-]+ (ok|FAILED)|time to an echoed|^(PASS|FAIL)'
