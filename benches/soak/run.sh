#!/usr/bin/env bash
# Soak test of claude-relay on Redis under mixed traffic, in one run (see README.md beside this).
#   benches/soak/run.sh [soak.py options, e.g. --minutes 2 --keep --redis-url redis://127.0.0.1:6379/0]
# Builds the release relay and the mock, installs redis-server (Debian package) when it is missing
# and no --redis-url is given, then runs soak.py, which prints a Markdown report, writes it to
# benches/soak/last-run.md and exits 1 when the relay's RSS grew or its stored usage is off.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ " $* " != *" --redis-url"* ]] && ! command -v redis-server >/dev/null 2>&1; then
    echo "run.sh: redis-server not found; installing the Debian package" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

cargo build --release --bin claude-relay --example mock_upstream
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

exec python3 benches/soak/soak.py \
    --relay-bin "$TARGET_DIR/release/claude-relay" \
    --mock-bin "$TARGET_DIR/release/examples/mock_upstream" \
    --out benches/soak/last-run.md "$@"
