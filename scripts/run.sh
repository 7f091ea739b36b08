#!/usr/bin/env bash
# Builds and runs the relay with the web panel. Installs cmake and make (needed to build Pingora
# and jemalloc) when they are missing, and Node.js with npm (to build the panel in web/) too.
# The panel (web/dist) is rebuilt when web/ changed, then embedded with `--features panel`.
# RELAY_NO_PANEL=1 builds the relay alone, without Node. When the Node.js found is older than 20,
# the relay is built without the panel, with a message saying so.
# Arguments are passed to `claude-relay`, e.g. `./scripts/run.sh --config conf/relay.yaml`.
# RELAY_BUILD_ONLY=1 builds without running (scripts/install.sh uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
if [ "${RELAY_NO_PANEL:-}" != 1 ]; then
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "run: ${missing[*]} needed to build the relay and its panel; installing with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}"
fi
features=()
if [ "${RELAY_NO_PANEL:-}" != 1 ]; then
  if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "run: Node.js $(node --version) is too old for the panel's build (20 or newer); building the relay without the panel" >&2
  else
    # Rebuild web/dist when a source file is newer than it.
    if [ ! -f web/dist/index.html ] || [ -n "$(find web/src web/index.html web/stats.html web/package-lock.json web/vite.config.js -newer web/dist/index.html -print -quit)" ]; then
      npm ci --prefix web --no-audit --no-fund
      npm run build --prefix web
    fi
    features=(--features panel)
  fi
fi
if [ "${RELAY_BUILD_ONLY:-}" = 1 ]; then
  exec cargo build --release --bin claude-relay "${features[@]}"
fi
exec cargo run --release --bin claude-relay "${features[@]}" -- "$@"
