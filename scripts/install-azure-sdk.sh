#!/usr/bin/env bash
# Installs Microsoft's Azure SDK for Python (identity, Key Vault secrets, keys, certificates), pinned
# by e2e/conformance/requirements.txt, into a cached virtual environment outside the clone. The
# conformance test (e2e/tests/azure_sdk.rs) drives the Key Vault and Entra test servers with it.
set -euo pipefail
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
requirements="$(cd "$(dirname "$0")/.." && pwd)/e2e/conformance/requirements.txt"
venv="$cache/azure-sdk"

# Reinstall when the pins change: the venv keeps a copy of the requirements it was made from.
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  command -v python3 >/dev/null || { echo "error: Python 3 is needed to install the Azure SDK" >&2; exit 1; }
  echo "installing the Azure SDK for Python..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$requirements"
  "$venv/bin/python" -c "import azure.identity, azure.keyvault.secrets, azure.keyvault.keys, azure.keyvault.certificates"
  cp "$requirements" "$venv/requirements.txt"
fi
