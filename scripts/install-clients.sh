#!/usr/bin/env bash
# Installs the pinned real clients that tests/clients_openai.rs, tests/clients_gemini.rs and
# tests/gateway_contract.rs drive through the relay:
# - the openai and google-genai Python SDKs into the tests' virtualenv, by default
#   $HOME/.cache/claude-relay/venv (RELAY_VENV overrides it; created here like
#   scripts/install-schemathesis.sh does when missing);
# - Codex CLI, Gemini CLI and Claude Code with npm into $RELAY_CLIENTS/node (default
#   $HOME/.cache/claude-relay/clients/node), so the binaries are
#   $RELAY_CLIENTS/node/node_modules/.bin/{codex,gemini,claude}. Claude Code's npm package
#   brings its native binary (about 400 MB) as an optional dependency for the platform.
# Idempotent, and quick when the pinned versions are already there. Needs python3 with venv and
# PyPI for the SDKs, npm (Node 20 or later for Gemini CLI) and the npm registry for the CLIs; on
# Debian/Ubuntu, as root, it installs python3-venv, nodejs and npm with apt when they are missing.
# Each client is installed on its own: a failure of one is reported, the others are still
# installed, and the exit status is 1 when any failed.
set -euo pipefail

OPENAI_PY_VERSION=3.57.0
CODEX_VERSION=0.171.0
GENAI_PY_VERSION=3.6.1
GEMINI_CLI_VERSION=0.61.0
# The Claude Code release the gateway contract suite was last checked with (README says so too).
CLAUDE_CODE_VERSION=2.1.332
venv="${RELAY_VENV:-$HOME/.cache/claude-relay/venv}"
clients="${RELAY_CLIENTS:-$HOME/.cache/claude-relay/clients}"
node_prefix="$clients/node"
codex="$node_prefix/node_modules/.bin/codex"
gemini="$node_prefix/node_modules/.bin/gemini"
claude="$node_prefix/node_modules/.bin/claude"

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

# The version of the Python distribution $1 in the virtualenv, or nothing.
py_version() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$1" 2>/dev/null
}

# Installs the Python distribution $1 at version $2 into the virtualenv (made when missing).
install_py() {
  local dist=$1 version=$2
  if [ "$(py_version "$dist")" = "$version" ]; then
    return 0
  fi
  echo "install-clients: installing $dist $version (Python) into $venv"
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
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$dist==$version" || return 1
  [ "$(py_version "$dist")" = "$version" ] || return 1
  echo "install-clients: $dist (Python) $version"
}

# Installs the npm package $1 at version $2 into $node_prefix unless the binary $3 already
# prints that version.
install_npm() {
  local package=$1 version=$2 bin=$3
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$version"; then
    return 0
  fi
  echo "install-clients: installing $package $version into $node_prefix"
  if ! command -v npm >/dev/null; then
    apt_install nodejs npm || {
      echo "install-clients: npm is needed (Debian/Ubuntu: apt-get install nodejs npm)" >&2
      return 1
    }
  fi
  mkdir -p "$node_prefix"
  npm install --prefix "$node_prefix" --no-audit --no-fund --loglevel=error --save-exact "$package@$version" || return 1
  # Claude Code's postinstall puts its native binary in place; when npm skipped install scripts,
  # run it by hand.
  if ! "$bin" --version 2>/dev/null | grep -qF "$version" && [ -f "$node_prefix/node_modules/$package/install.cjs" ]; then
    (cd "$node_prefix/node_modules/$package" && node install.cjs) || return 1
  fi
  "$bin" --version | grep -F "$version"
}

status=0
install_py openai "$OPENAI_PY_VERSION" || { echo "install-clients: the openai Python SDK could not be installed" >&2; status=1; }
install_py google-genai "$GENAI_PY_VERSION" || { echo "install-clients: the google-genai Python SDK could not be installed" >&2; status=1; }
install_npm @openai/codex "$CODEX_VERSION" "$codex" || { echo "install-clients: Codex CLI could not be installed" >&2; status=1; }
install_npm @google/gemini-cli "$GEMINI_CLI_VERSION" "$gemini" || { echo "install-clients: Gemini CLI could not be installed" >&2; status=1; }
install_npm @anthropic-ai/claude-code "$CLAUDE_CODE_VERSION" "$claude" || { echo "install-clients: Claude Code could not be installed" >&2; status=1; }
exit "$status"
