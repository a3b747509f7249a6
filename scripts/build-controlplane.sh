#!/usr/bin/env bash
# Builds the local test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, the kubelet and kubectl in one program) and helm from the Go module proxy.
# The result is cached outside the clone and rebuilt only when the Go module's sources change.
# The node's other pieces (containerd, runc, CNI) come from scripts/build-node.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/e2e/controlplane"
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
bin="$cache/bin"
command -v go >/dev/null || { echo "error: Go (1.26 or newer) is needed to build the test control plane" >&2; exit 1; }
stamp=$(cat "$0" "$src"/go.mod "$src"/go.sum "$src"/*.go | sha256sum | cut -c1-16)
if [ -x "$bin/controlplane" ] && [ -x "$bin/helm" ] && [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$bin"
echo "building the local control plane (first build takes 10-20 minutes on 2 cores)..." >&2
start=$(date +%s)
cd "$src"
# -trimpath keeps this machine's paths out of the binaries; -s -w drops debug info (size).
# The components report the Kubernetes version they were built from (clients check it).
kv=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$kv" | cut -d. -f2)
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags="$version_flags -X $pkg.gitVersion=$kv -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
done
go build -trimpath -ldflags="-s -w $version_flags" -o "$bin/controlplane.new" .
go build -trimpath -ldflags='-s -w' -o "$bin/helm.new" helm.sh/helm/v3/cmd/helm
mv "$bin/controlplane.new" "$bin/controlplane"
mv "$bin/helm.new" "$bin/helm"
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do ln -sf controlplane "$bin/$c"; done
echo "$stamp" > "$bin/.stamp"
echo "built the local control plane in $(( $(date +%s) - start ))s" >&2
