#!/usr/bin/env bash
# Builds and runs the relay. Installs cmake and make (needed to build Pingora and jemalloc) when
# they are missing.
# Arguments are passed to `claude-relay`, e.g. `./scripts/run.sh --config conf/relay.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  echo "run: ${missing[*]} needed to build Pingora and jemalloc; installing with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}"
fi
exec cargo run --release --bin claude-relay -- "$@"
