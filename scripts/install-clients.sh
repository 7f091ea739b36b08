#!/usr/bin/env bash
# Installs the pinned real OpenAI clients that tests/clients_openai.rs drives through the relay:
# - the openai Python SDK into the tests' virtualenv, by default $HOME/.cache/claude-relay/venv
#   (RELAY_VENV overrides it; created here like scripts/install-schemathesis.sh does when missing);
# - Codex CLI with npm into $RELAY_CLIENTS/node (default $HOME/.cache/claude-relay/clients/node),
#   so the binary is $RELAY_CLIENTS/node/node_modules/.bin/codex.
# Idempotent, and quick when the pinned versions are already there. Needs python3 with venv and
# PyPI for the SDK, npm (Node 18 or later) and the npm registry for Codex; on Debian/Ubuntu, as
# root, it installs python3-venv, nodejs and npm with apt when they are missing. Each client is
# installed on its own: a failure of one is reported, the other is still installed, and the exit
# status is 1 when either failed.
set -euo pipefail

OPENAI_PY_VERSION=3.57.0
CODEX_VERSION=0.171.0
venv="${RELAY_VENV:-$HOME/.cache/claude-relay/venv}"
clients="${RELAY_CLIENTS:-$HOME/.cache/claude-relay/clients}"
node_prefix="$clients/node"
codex="$node_prefix/node_modules/.bin/codex"

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

install_openai_py() {
  if [ -x "$venv/bin/python" ] &&
    [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("openai"))' 2>/dev/null)" = "$OPENAI_PY_VERSION" ]; then
    return 0
  fi
  echo "install-clients: installing openai $OPENAI_PY_VERSION (Python) into $venv"
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv || {
      echo "install-clients: python3 with the venv module is needed (Debian/Ubuntu: apt-get install python3-venv)" >&2
      return 1
    }
  fi
  if [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_PY_VERSION"
  "$venv/bin/python" -c 'import openai; print("install-clients: openai (Python)", openai.__version__)'
}

install_codex() {
  if [ -x "$codex" ] && "$codex" --version 2>/dev/null | grep -qF "$CODEX_VERSION"; then
    return 0
  fi
  echo "install-clients: installing @openai/codex $CODEX_VERSION into $node_prefix"
  if ! command -v npm >/dev/null; then
    apt_install nodejs npm || {
      echo "install-clients: npm is needed (Debian/Ubuntu: apt-get install nodejs npm)" >&2
      return 1
    }
  fi
  mkdir -p "$node_prefix"
  npm install --prefix "$node_prefix" --no-audit --no-fund --loglevel=error --save-exact "@openai/codex@$CODEX_VERSION"
  "$codex" --version
}

status=0
install_openai_py || { echo "install-clients: the openai Python SDK could not be installed" >&2; status=1; }
install_codex || { echo "install-clients: Codex CLI could not be installed" >&2; status=1; }
exit "$status"
