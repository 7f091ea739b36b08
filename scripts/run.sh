#!/usr/bin/env bash
# Builds and runs the relay. Installs cmake (needed to build Pingora) when it is missing.
# Arguments are passed to `claude-relay`, e.g. `./scripts/run.sh --config conf/relay.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null; then
  echo "run: cmake is needed to build Pingora; installing it with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake
fi
exec cargo run --release --bin claude-relay -- "$@"
