#!/usr/bin/env bash
# Load test of claude-relay against a local mock upstream, in one run (see README.md beside this).
#   benches/load/run.sh [loadtest.py options, e.g. --duration 3 --concurrency 1,50 --keep]
# Builds the release relay and the mock, installs wrk (Debian package) when it is missing, then runs
# loadtest.py, which prints a Markdown report and writes it to benches/load/last-run.md.
# The failover row (three accounts, one answering 429) is on; --no-failover-row leaves it out.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v wrk >/dev/null 2>&1; then
    echo "run.sh: wrk not found; installing the Debian package" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi

cargo build --release --bin claude-relay --example mock_upstream
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

# 1,000 slow streams hold ~2,000 sockets in the relay and 1,000 each in wrk and the mock.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

exec python3 benches/load/loadtest.py \
    --relay-bin "$TARGET_DIR/release/claude-relay" \
    --mock-bin "$TARGET_DIR/release/examples/mock_upstream" \
    --out benches/load/last-run.md --failover-row "$@"
