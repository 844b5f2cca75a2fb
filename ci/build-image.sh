#!/usr/bin/env bash
# Builds the resource image `dockhand-resource:dev` on a machine that cannot pull images:
# the runtime base is made with debootstrap (Debian bookworm, minbase, with the packages the
# image needs) and `docker import`ed once as dockhand-base/runtime:bookworm; the binaries come
# from this machine's `cargo build --release`. Prints the image size.
# Needs a Docker daemon (DOCKER_HOST or the local socket) and root for debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

IMAGE=${DOCKHAND_IMAGE:-dockhand-resource:dev}
BASE=dockhand-base/runtime:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=ca-certificates,git,openssh-client,docker.io,iptables

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  ensure_packages debootstrap
  root=$(mktemp -d /tmp/dockhand-rootfs.XXXXXX)
  on_exit "rm -rf '$root'"
  log "debootstrap bookworm into $root (a few minutes, once)"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root.log" \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale
  log "docker import $BASE"
  tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
fi

log "cargo build --release"
cargo build --release --locked -p dockhand-resource
mkdir -p dist
cp target/release/check dist/

log "docker build $IMAGE"
context=$(mktemp -d /tmp/dockhand-context.XXXXXX)
on_exit "rm -rf '$context'"
mkdir -p "$context/dist" "$context/docker"
cp dist/check "$context/dist/"
cp docker/Dockerfile "$context/docker/"
DOCKER_BUILDKIT=0 docker build -q -f "$context/docker/Dockerfile" --target prebuilt \
  --build-arg RUNTIME_IMAGE="$BASE" -t "$IMAGE" "$context" >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE: $((size / 1000000)) MB"
echo "$IMAGE $size"
