#!/usr/bin/env bash
# Times the web panel with 2,000 keys, 50 accounts and 90 days of usage, on the embedded store and
# on Redis (see README.md beside this):
#   benches/panel/run.sh            # KEYS, ACCOUNTS, DAYS, RUNS, BACKENDS, REDIS_URL override
# Builds the panel (npm) and the release relay with it, the seeder and the mock upstream, then
# runs measure.mjs in Debian's Chromium; the report goes to benches/panel/last-run.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ]; then
    echo "run.sh: Debian's chromium is needed; installing it with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
[ -d web/node_modules ] || npm ci --prefix web --no-audit --no-fund
npm run build --prefix web >/dev/null
cargo build --release --features panel --bin claude-relay --example panel_seed --example mock_upstream
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [[ ",${BACKENDS:-embedded,redis}," == *,redis,* ]] &&
    ! redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/}" ping 2>/dev/null | grep -q PONG; then
    echo "run.sh: no Redis answers at ${REDIS_URL:-redis://127.0.0.1:6379/}; set REDIS_URL or BACKENDS=embedded" >&2
    exit 1
fi

RELAY_BIN="$TARGET_DIR/release/claude-relay" \
SEED_BIN="$TARGET_DIR/release/examples/panel_seed" \
MOCK_BIN="$TARGET_DIR/release/examples/mock_upstream" \
OUT=benches/panel/last-run.md \
    exec node benches/panel/measure.mjs
