#!/usr/bin/env bash
# Builds the parts of the local test node that are not in the control plane program: containerd
# (daemon, runc shim, ctr), the CNI loopback plugin and crane (packs the test images) from the Go
# module proxy, and installs runc from Debian's packages when it is missing. The kubelet and
# kube-scheduler are part of the control plane program (scripts/build-controlplane.sh).
# Cached in $VAULTSYNC_CACHE/bin; rebuilt only when this script (the versions in it) changes.
# VAULTSYNC_SKIP_NODE_TESTS=1 skips it.
set -euo pipefail
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
bin="$cache/bin"
containerd_version=v2.4.2
cni_plugins_version=v1.9.1
crane_version=v0.22.1

if [ "${VAULTSYNC_SKIP_NODE_TESTS:-}" = 1 ]; then
  exit 0
fi

# runc comes from the distribution: it needs cgo and libseccomp, and Debian's is built with both.
if ! command -v runc >/dev/null && [ ! -x /usr/sbin/runc ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing runc (Debian package)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q runc >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q runc >/dev/null; }
  else
    echo "error: the test node needs runc: install your distribution's package (Debian: apt-get install runc)" >&2
    exit 1
  fi
fi

stamp=$(sha256sum "$0" | cut -c1-16)
if [ -x "$bin/containerd" ] && [ -x "$bin/cni/loopback" ] && [ -x "$bin/crane" ] &&
  [ "$(cat "$bin/.node-stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "error: Go (1.26 or newer) is needed to build the test node" >&2; exit 1; }
echo "building the test node's containerd, CNI plugin and crane (a few minutes on 2 cores)..." >&2
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Static binaries without cgo; the storage drivers that would need C libraries are left out.
export CGO_ENABLED=0 GOBIN="$work"
go install -trimpath -tags 'no_btrfs no_devmapper no_zfs' \
  -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version" \
  "github.com/containerd/containerd/v2/cmd/containerd@$containerd_version" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$containerd_version" \
  "github.com/containerd/containerd/v2/cmd/ctr@$containerd_version"
go install -trimpath -ldflags='-s -w' "github.com/containernetworking/plugins/plugins/main/loopback@$cni_plugins_version"
go install -trimpath -ldflags='-s -w' "github.com/google/go-containerregistry/cmd/crane@$crane_version"
mkdir -p "$bin/cni"
for b in containerd containerd-shim-runc-v2 ctr crane; do mv "$work/$b" "$bin/$b"; done
mv "$work/loopback" "$bin/cni/loopback"
echo "$stamp" > "$bin/.node-stamp"
echo "built the test node's pieces in $(( $(date +%s) - start ))s" >&2
