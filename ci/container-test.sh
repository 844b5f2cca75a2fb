#!/usr/bin/env bash
# The resource image end to end, the way Concourse runs it: `docker run -i` with the request
# on stdin and the step's directory mounted; `out` privileged with a /scratch volume, building
# with the container's own dockerd. Against a docker-registry on this machine, reached from the
# containers through the bridge gateway (so also over `insecure_registries`).
# Needs a Docker daemon (DOCKER_HOST) and the image (ci/build-image.sh; built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

IMAGE=${DOCKHAND_IMAGE:-dockhand-resource:dev}
bin=$PWD/target/release
work=$(mktemp -d /tmp/dockhand-container-test.XXXXXX)
on_exit "rm -rf '$work'"

step() { log "container test: $*"; CURRENT_STEP=$*; }
fail() { echo "container test FAILED at: ${CURRENT_STEP:-set-up}: $*" >&2; exit 1; }
json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1:]: v=v[int(k)] if isinstance(v,list) else v[k]
print(v)' "$@"; }

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  ci/build-image.sh >/dev/null
fi

# Concourse runs privileged resource types with --privileged. Some sandboxes (this project's
# CI among them) lack a capability (CAP_SYS_RESOURCE) that --privileged asks for; there, the
# nearest equivalent is used: every other capability, no seccomp/AppArmor confinement,
# writable /proc and /sys paths and the host's cgroups.
step "privileged flags"
if docker run --rm --privileged --entrypoint true "$IMAGE" >/dev/null 2>&1; then
  privileged=(--privileged)
else
  log "this machine refuses --privileged containers; using all capabilities it allows instead"
  privileged=(--cap-add=ALL --cap-drop=SYS_RESOURCE --security-opt seccomp=unconfined
    --security-opt apparmor=unconfined --security-opt systempaths=unconfined
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
fi

# `out` as Concourse runs a privileged put: the request on stdin, the step's directory ($1)
# mounted, /scratch a volume; its output in $work/$2.json and $work/$2.log.
container_out() {
  if ! echo "$3" | docker run -i --rm "${privileged[@]}" -v "$work/scratch:/scratch" \
      -v "$1:/tmp/build/put" "$IMAGE" /opt/resource/out /tmp/build/put \
      >"$work/$2.json" 2>"$work/$2.log"; then
    tail -n 40 "$work/$2.log" >&2
    fail "out exited non-zero"
  fi
}

step "registry"
start_registry 0.0.0.0
# The bridge's gateway: `inspect` names it only when docker0 existed before dockerd started
# (on a fresh machine dockerd creates it and leaves Gateway out), so also ask the interface.
gateway=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
if [ -z "$gateway" ]; then
  gateway=$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
fi
[ -n "$gateway" ] || fail "cannot tell the docker bridge's gateway address"
inside="$gateway:$REGISTRY_PORT"

step "push a base image from the host"
docker save dockhand-test/busybox:latest -o "$work/busybox.tar"
echo "{\"source\":{\"repository\":\"$REGISTRY/busybox\"},\"params\":{\"image\":\"busybox.tar\"}}" |
  "$bin/out" "$work" >"$work/base.json" 2>"$work/base.log" || { cat "$work/base.log" >&2; fail "host out"; }

step "out in the container builds with its own dockerd and pushes"
mkdir -p "$work/put/src" "$work/scratch"
printf 'FROM %s/busybox:latest\nRUN echo built-in-container > /proof\n' "$inside" >"$work/put/src/Dockerfile"
request="{\"source\":{\"repository\":\"$inside/app\",\"tag\":\"1.0\",\"insecure_registries\":[\"$inside\"]},\"params\":{\"build\":\"src\",\"tag_as_latest\":true}}"
container_out "$work/put" out "$request"
digest=$(json_field version digest <"$work/out.json")
skopeo_digest=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$REGISTRY/app:1.0")
[ "$digest" = "$skopeo_digest" ] || fail "out said $digest, skopeo sees $skopeo_digest"
latest=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$REGISTRY/app:latest")
[ "$latest" = "$digest" ] || fail "latest is $latest, not $digest"

step "out in the container builds with BuildKit and a secret"
mkdir -p "$work/put-bk/src"
printf 'FROM %s/busybox:latest\nRUN --mount=type=secret,id=token cp /run/secrets/token /proof-secret\n' \
  "$inside" >"$work/put-bk/src/Dockerfile"
printf 'in-container-secret' >"$work/put-bk/token"
request="{\"source\":{\"repository\":\"$inside/app-buildkit\",\"insecure_registries\":[\"$inside\"]},\"params\":{\"build\":\"src\",\"docker_buildkit\":1,\"secrets\":{\"token\":{\"source\":\"token\"}}}}"
container_out "$work/put-bk" out-bk "$request"
! grep -q in-container-secret "$work/out-bk.log" "$work/out-bk.json" || fail "the secret was printed"
bk_digest=$(json_field version digest <"$work/out-bk.json")
echo "{\"source\":{\"repository\":\"$REGISTRY/app-buildkit\"},\"version\":{\"digest\":\"$bk_digest\"}}" |
  "$bin/in" "$work/get-bk" >/dev/null 2>"$work/get-bk.log" || { cat "$work/get-bk.log" >&2; fail "host in"; }
[ "$(cat "$work/get-bk/rootfs/proof-secret")" = in-container-secret ] || fail "the build did not see the secret"

step "check in the container"
source_json="{\"repository\":\"$inside/app\",\"tag\":\"1.0\",\"insecure_registries\":[\"$inside\"]}"
versions=$(echo "{\"source\":$source_json}" | docker run -i --rm "$IMAGE" /opt/resource/check 2>"$work/check.log") ||
  { cat "$work/check.log" >&2; fail "check exited non-zero"; }
[ "$(echo "$versions" | json_field 0 digest)" = "$digest" ] || fail "check gave $versions"

step "in in the container equals in on the host"
mkdir -p "$work/get"
echo "{\"source\":$source_json,\"version\":{\"tag\":\"1.0\",\"digest\":\"$digest\"}}" |
  docker run -i --rm -v "$work/get:/tmp/build/get" "$IMAGE" /opt/resource/in /tmp/build/get \
  >"$work/in.json" 2>"$work/in.log" || { cat "$work/in.log" >&2; fail "in exited non-zero"; }
echo "{\"source\":{\"repository\":\"$REGISTRY/app\"},\"version\":{\"tag\":\"1.0\",\"digest\":\"$digest\"}}" |
  "$bin/in" "$work/host-get" >/dev/null 2>"$work/host-in.log" || { cat "$work/host-in.log" >&2; fail "host in"; }
[ "$(cat "$work/get/rootfs/proof")" = built-in-container ] || fail "the rootfs lacks the build's file"
listing() {
  (cd "$1" && find . -printf '%p %y %m %U:%G %s %l\n' | sort &&
    find . -type f -print0 | sort -z | xargs -0 sha256sum)
}
if ! diff <(listing "$work/get/rootfs") <(listing "$work/host-get/rootfs") >"$work/rootfs.diff"; then
  head -n 20 "$work/rootfs.diff" >&2
  fail "the rootfs differs from the host's"
fi

log "container test: out, check and in in the container all passed"
