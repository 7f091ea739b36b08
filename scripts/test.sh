#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, the store contract on the embedded store
# and on a real Redis, the integration tests that run the real binary against mock upstreams, and
# the schemathesis run against the admin API (its pinned version is installed into
# $HOME/.cache/claude-relay/venv first when missing, unless RELAY_SCHEMATHESIS names an `st`
# binary), and the real OpenAI and Gemini clients (the openai and google-genai Python SDKs into
# the same virtualenv, Codex CLI and Gemini CLI into $HOME/.cache/claude-relay/clients;
# scripts/install-clients.sh) driven through the relay; the web panel is built (npm) and embedded
# (`--features panel`), and its browser tests run in Debian's Chromium (installed with apt-get).
#
# Redis: the tests use the Redis at RELAY_TEST_REDIS_URL (default redis://127.0.0.1:6379/) when
# one answers there. When none does (a fresh machine), or with RELAY_TEST_REDIS=private, this
# script starts a private redis-server (no persistence, in a temporary directory) on a free port,
# points RELAY_TEST_REDIS_URL at it for the tests, and stops it when it exits. redis-server is
# installed with apt-get when missing (some tests start Redis servers of their own too).
# Pointing RELAY_TEST_REDIS_URL at a port where nothing listens therefore runs the suite as on a
# machine without Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
  echo "test.sh: redis-server is needed by the Redis tests; installing it with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  # A failed install is reported by the tests that need Redis; the other tests still run.
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null; } ||
    echo "test.sh: redis-server could not be installed; the Redis tests will fail" >&2
fi

# ss (iproute2) reads a test upstream's TCP counters (tests/relay_core.rs).
if ! command -v ss >/dev/null; then
  echo "test.sh: ss (iproute2) is needed by a relay test; installing it with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iproute2 >/dev/null; } ||
    echo "test.sh: iproute2 could not be installed; the test that needs ss will fail" >&2
fi

# Whether a Redis answers PING at the URL $1.
redis_answers() {
  local url=$1
  if command -v redis-cli >/dev/null; then
    timeout 3 redis-cli -u "$url" ping 2>/dev/null | grep -q PONG
    return
  fi
  # Without redis-cli: host and port from redis://[user[:password]@]host[:port][/db].
  local rest=${url#*://}
  rest=${rest##*@}
  rest=${rest%%/*}
  local host=${rest%:*} port=6379
  [ "$host" != "$rest" ] && port=${rest##*:}
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && head -c 5 <&3' "$host" "$port" 2>/dev/null |
    grep -Eq '^(\+PONG|-NOAU)'
}

redis_url=${RELAY_TEST_REDIS_URL:-redis://127.0.0.1:6379/}
if [ "${RELAY_TEST_REDIS:-}" != private ] && redis_answers "$redis_url"; then
  echo "test.sh: the Redis tests use the Redis at $redis_url" >&2
else
  [ "${RELAY_TEST_REDIS:-}" = private ] || echo "test.sh: no Redis answers at $redis_url; starting a private one" >&2
  redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/relay-test-redis.XXXXXX")
  redis_pid=""
  stop_redis() {
    if [ -n "$redis_pid" ]; then
      kill "$redis_pid" 2>/dev/null || true
      wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$redis_dir"
  }
  trap stop_redis EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    # Taken ports answer (or refuse differently); a free one refuses the connection.
    if timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>/dev/null; then continue; fi
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
      --dir "$redis_dir" --logfile "$redis_dir/redis.log" &
    redis_pid=$!
    for _ in $(seq 1 50); do
      if redis_answers "redis://127.0.0.1:$port/"; then break 2; fi
      kill -0 "$redis_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
  done
  if [ -z "$redis_pid" ]; then
    echo "test.sh: could not start a private redis-server; the Redis tests will fail" >&2
    cat "$redis_dir/redis.log" >&2 2>/dev/null || true
  else
    export RELAY_TEST_REDIS_URL="redis://127.0.0.1:$port/"
    echo "test.sh: the Redis tests use a private redis-server at $RELAY_TEST_REDIS_URL (pid $redis_pid)" >&2
  fi
fi

if [ -z "${RELAY_SCHEMATHESIS:-}" ]; then
  # A failed install is reported by the test that needs it; the other tests still run.
  ./scripts/install-schemathesis.sh || echo "test.sh: schemathesis could not be installed; tests/admin_schemathesis.rs will fail" >&2
fi
# Likewise for the clients of tests/clients_openai.rs and tests/clients_gemini.rs.
./scripts/install-clients.sh || echo "test.sh: a client could not be installed; tests/clients_openai.rs or tests/clients_gemini.rs will fail" >&2
# The web panel: its build (web/dist, embedded with the cargo feature `panel`) and the browser
# tests (tests/panel_browser.rs: Debian's Chromium driven by playwright-core from web/node_modules).
# Chromium comes from apt, never from a download script. RELAY_NO_PANEL=1 tests the relay alone.
features=()
if [ "${RELAY_NO_PANEL:-}" != 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    echo "test.sh: Debian's chromium is needed by tests/panel_browser.rs; installing it with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } ||
      echo "test.sh: chromium could not be installed; tests/panel_browser.rs will fail" >&2
  fi
  npm ci --prefix web --no-audit --no-fund
  npm run build --prefix web
  features=(--features panel)
fi
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast "${features[@]}" "$@"
else
  cargo test --workspace --no-fail-fast "${features[@]}" "$@"
fi
