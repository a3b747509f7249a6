#!/usr/bin/env bash
# Builds the images the local test node runs, without a container engine: each image's program is
# built static (cargo, x86_64-unknown-linux-musl) and packed with crane into an image archive named
# ghcr.io/vaultsync/<image>:dev, in $VAULTSYNC_CACHE/images/<image>.tar. images/images.list says
# which program and settings each image has. An archive is repacked only when its program or
# settings changed; cargo decides what to recompile.
# Usage: scripts/build-images.sh [IMAGE...]   (default: every image in the list)
# VAULTSYNC_SKIP_NODE_TESTS=1 skips it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${VAULTSYNC_CACHE:-$HOME/.cache/vaultsync}"
target_dir="${CARGO_TARGET_DIR:-$cache/target}"
out="$cache/images"
crane="$cache/bin/crane"
target=x86_64-unknown-linux-musl
registry_prefix=ghcr.io/vaultsync
tag=dev

if [ "${VAULTSYNC_SKIP_NODE_TESTS:-}" = 1 ]; then
  exit 0
fi
[ -x "$crane" ] || "$here/scripts/build-node.sh"
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "adding the Rust target $target (static binaries for the images)..." >&2
  rustup target add "$target" >&2
fi
# ring compiles C for the target: that needs a C compiler for musl.
if ! command -v musl-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing musl-tools (Debian package, the C compiler for static binaries)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null; }
  else
    echo "error: building the images needs musl-gcc: install your distribution's musl tools (Debian: musl-tools)" >&2
    exit 1
  fi
fi

# The selected lines of the list: image package user ca-bundle.
declare -a images=()
while read -r image package user ca; do
  case "$image" in ''|'#'*) continue ;; esac
  if [ $# -eq 0 ] || printf '%s\n' "$@" | grep -qx "$image"; then
    images+=("$image $package $user $ca")
  fi
done < "$here/images/images.list"
if [ $# -gt 0 ] && [ ${#images[@]} -ne $# ]; then
  echo "error: unknown image in: $* (see images/images.list)" >&2
  exit 1
fi

build=(cargo build --locked --quiet --target "$target" --manifest-path "$here/Cargo.toml")
for line in "${images[@]}"; do
  read -r image package _ <<<"$line"
  build+=(-p "$package" --bin "$image")
done
"${build[@]}"

mkdir -p "$out"
work=$(mktemp -d)
registry_pid=""
cleanup() {
  [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# crane edits an image's configuration only in a registry: a private one on loopback, in memory,
# for as long as this script runs.
registry=""
start_registry() {
  "$crane" registry serve --address 127.0.0.1:0 2>"$work/registry.log" &
  registry_pid=$!
  for _ in $(seq 100); do
    port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")
    if [ -n "$port" ]; then
      registry="127.0.0.1:$port"
      return
    fi
    kill -0 "$registry_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: crane's registry did not start:" >&2
  cat "$work/registry.log" >&2
  exit 1
}

for line in "${images[@]}"; do
  read -r image package user ca <<<"$line"
  program="$target_dir/$target/debug/$image"
  stamp=$( (sha256sum "$program" "$0"; echo "$line") | sha256sum | cut -c1-16)
  if [ -f "$out/$image.tar" ] && [ "$(cat "$out/$image.stamp" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  [ -n "$registry" ] || start_registry
  root="$work/$image"
  install -D -m 0755 "$program" "$root/usr/local/bin/$image"
  if [ "$ca" = yes ]; then
    # The public CAs the operator trusts (a release image carries its build image's bundle, see the Containerfile).
    bundle=/etc/ssl/certs/ca-certificates.crt
    [ -f "$bundle" ] || { echo "error: $bundle is missing (Debian: apt-get install ca-certificates)" >&2; exit 1; }
    install -D -m 0644 "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  # A reproducible layer: sorted, owned by root, no timestamps.
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/$image-layer.tar" .
  "$crane" append --oci-empty-base -f "$work/$image-layer.tar" -t "$registry/$image:build" >/dev/null 2>"$work/crane.log" ||
    { cat "$work/crane.log" >&2; exit 1; }
  "$crane" mutate "$registry/$image:build" --set-platform linux/amd64 --user "$user" \
    --entrypoint "/usr/local/bin/$image" -t "$registry_prefix/$image:$tag" -o "$out/$image.tar.new" >/dev/null 2>"$work/crane.log" ||
    { cat "$work/crane.log" >&2; exit 1; }
  mv "$out/$image.tar.new" "$out/$image.tar"
  echo "$stamp" > "$out/$image.stamp"
  echo "packed $registry_prefix/$image:$tag" >&2
done
