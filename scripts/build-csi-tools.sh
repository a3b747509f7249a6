#!/usr/bin/env bash
# Builds the CSI test tools from the Go module proxy: csi-sanity (kubernetes-csi/csi-test) and the
# Secrets Store CSI Driver, at the versions pinned in e2e/csi-tools/{sanity,driver}/go.mod (two
# modules: they need different CSI spec modules). Cached outside the clone and rebuilt only when
# those modules change.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/e2e/csi-tools"
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
bin="$cache/bin"
command -v go >/dev/null || { echo "error: Go (1.26 or newer) is needed to build the CSI test tools" >&2; exit 1; }
stamp=$(cat "$0" "$src"/*/go.mod "$src"/*/go.sum "$src"/*/*.go | sha256sum | cut -c1-16)
if [ -x "$bin/csi-sanity" ] && [ -x "$bin/secrets-store-csi-driver" ] \
  && [ "$(cat "$bin/.csi-tools-stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$bin"
echo "building csi-sanity and the Secrets Store CSI Driver (first build takes a few minutes)..." >&2
start=$(date +%s)
# -trimpath keeps this machine's paths out of the binaries; -s -w drops debug info (size).
(cd "$src/sanity" && go build -trimpath -ldflags='-s -w' -o "$bin/csi-sanity.new" \
  github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity)
cd "$src/driver"
go build -trimpath -ldflags='-s -w' -o "$bin/secrets-store-csi-driver.new" \
  sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver
# The driver's CRDs (SecretProviderClass, SecretProviderClassPodStatus) from the same module version.
crds=$(go list -m -f '{{.Dir}}' sigs.k8s.io/secrets-store-csi-driver)/config/crd/bases
mkdir -p "$cache/secrets-store-csi-driver"
cp "$crds"/*.yaml "$cache/secrets-store-csi-driver/"
chmod u+w "$cache/secrets-store-csi-driver/"*.yaml
mv "$bin/csi-sanity.new" "$bin/csi-sanity"
mv "$bin/secrets-store-csi-driver.new" "$bin/secrets-store-csi-driver"
echo "$stamp" > "$bin/.csi-tools-stamp"
echo "built the CSI test tools in $(( $(date +%s) - start ))s" >&2
