#!/usr/bin/env bash
# Installs the pinned schemathesis (the `st` CLI that fuzzes the admin API from its OpenAPI
# document in tests/admin_schemathesis.rs) into a virtualenv outside the clone, by default
# $HOME/.cache/claude-relay/venv (RELAY_VENV overrides it). Idempotent, and quick when the pinned
# version is already there. Needs python3 with venv and PyPI; on Debian/Ubuntu, as root, it
# installs python3-venv when venv is missing.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
venv="${RELAY_VENV:-$HOME/.cache/claude-relay/venv}"
st="$venv/bin/st"

if [ -x "$st" ] && "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  exit 0
fi
echo "install-schemathesis: installing schemathesis $SCHEMATHESIS_VERSION into $venv"
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "install-schemathesis: python3 with the venv module is needed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
if [ ! -x "$venv/bin/pip" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
"$st" --version
