#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, the store contract on the embedded store
# and on a real Redis (127.0.0.1:6379, or RELAY_TEST_REDIS_URL), the integration tests that run
# the real binary against mock upstreams, and the schemathesis run against the admin API (its
# pinned version is installed into $HOME/.cache/claude-relay/venv first when missing, unless
# RELAY_SCHEMATHESIS names an `st` binary).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${RELAY_SCHEMATHESIS:-}" ]; then
  # A failed install is reported by the test that needs it; the other tests still run.
  ./scripts/install-schemathesis.sh || echo "test.sh: schemathesis could not be installed; tests/admin_schemathesis.rs will fail" >&2
fi
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
