#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the store contract on the embedded store and on a real
# Redis (127.0.0.1:6379, or RELAY_TEST_REDIS_URL), and the integration tests that run the real
# binary against mock upstreams.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
