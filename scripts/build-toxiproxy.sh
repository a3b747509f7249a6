#!/usr/bin/env bash
# Builds Toxiproxy (Shopify's TCP fault proxy, pinned) from the Go module proxy into the cache outside
# the clone. The fault tests (operator/tests/chaos*.rs) put it between the operator and the vaults and
# Entra, and drive it through its HTTP API.
set -euo pipefail
version=v2.12.0
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
bin="$cache/bin"
if [ -x "$bin/toxiproxy-server" ] && [ "$(cat "$bin/.toxiproxy-version" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "error: Go is needed to build Toxiproxy" >&2; exit 1; }
echo "building Toxiproxy $version..." >&2
mkdir -p "$bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Outside any module, `go install pkg@version` builds exactly the module's own go.sum.
(cd "$work" && GOBIN="$work" go install -trimpath -ldflags='-s -w' "github.com/Shopify/toxiproxy/v2/cmd/server@$version")
mv "$work/server" "$bin/toxiproxy-server"
echo "$version" > "$bin/.toxiproxy-version"
