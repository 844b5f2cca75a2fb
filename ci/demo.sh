#!/usr/bin/env bash
# The product on an embedded default: a local registry, an example image pushed to it with
# out, then check, in, and check again with the version as cursor. Steps whose binary is not
# implemented yet are reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

ensure_packages
ensure_cargo
log "building the binaries (profile demo: release without LTO)"
cargo build --profile demo --locked --quiet -p dockhand-resource
bin=$PWD/target/demo
work=$(mktemp -d /tmp/dockhand-demo.XXXXXX)
on_exit "rm -rf $work"

log "starting a local registry"
start_registry 127.0.0.1
repository="$REGISTRY/demo/busybox"

# An OCI image layout made by hand from a busybox rootfs: one gzip layer, a config, a manifest.
make_example_image() {
  local layout=$work/layout blobs
  blobs=$layout/blobs/sha256
  mkdir -p "$blobs"
  ci/make-base-image.sh "$work/rootfs.tar" >/dev/null
  gzip -n -c "$work/rootfs.tar" >"$work/layer.tar.gz"
  local diff_id layer layer_size config config_digest config_size manifest manifest_digest
  diff_id=$(sha256sum "$work/rootfs.tar" | cut -d' ' -f1)
  layer=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$work/layer.tar.gz")
  mv "$work/layer.tar.gz" "$blobs/$layer"
  config=$(printf '{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id")
  config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  config_size=$(printf '%s' "$config" | wc -c)
  printf '%s' "$config" >"$blobs/$config_digest"
  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer" "$layer_size")
  manifest_digest=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
  printf '%s' "$manifest" >"$blobs/$manifest_digest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"demo"}}]}' \
    "$manifest_digest" "$(printf '%s' "$manifest" | wc -c)" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  echo "sha256:$manifest_digest"
}

# step NAME BINARY REQUEST [ARGS...]: runs a binary as Concourse would and prints its answer.
step() {
  local name=$1 binary=$2 request=$3
  shift 3
  printf '\n--- %s\n$ echo %s | %s %s\n' "$name" "'$request'" "$binary" "$*"
  local out err
  if out=$(printf '%s' "$request" | "$bin/$binary" "$@" 2>"$work/stderr"); then
    sed 's/^/    (stderr) /' "$work/stderr"
    printf '%s\n' "$out"
    STEP_OUTPUT=$out
    return 0
  fi
  err=$(cat "$work/stderr")
  if grep -q "is not implemented yet" <<<"$err"; then
    echo "skipped: $binary is not implemented yet"
    STEP_OUTPUT=
    return 0
  fi
  echo "$err" >&2
  echo "demo failed at: $name" >&2
  return 1
}

log "making an example image (an OCI layout of busybox)"
pushed=$(make_example_image)
source_json="{\"repository\":\"$repository\",\"tag\":\"latest\"}"
step "out: push it to $repository:latest (no Docker daemon)" out "{\"source\":$source_json,\"params\":{\"image\":\"layout\"}}" "$work"
if [ -n "$STEP_OUTPUT" ]; then
  echo "pushed $repository:latest at $pushed"
else
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$work/layout:demo" "docker://$repository:latest"
fi

step "check: the versions of $repository:latest" check "{\"source\":$source_json,\"version\":null}"
version=$(printf '%s' "$STEP_OUTPUT" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[-1]))')
if ! grep -q "$pushed" <<<"$version"; then
  echo "check did not report the pushed digest $pushed" >&2
  exit 1
fi

step "in: fetch that version" in "{\"source\":$source_json,\"version\":$version,\"params\":{}}" "$work/get"
if [ -n "$STEP_OUTPUT" ]; then
  echo "    files: $(find "$work/get" -mindepth 1 -maxdepth 1 -printf '%f ')"
fi

step "check again, with that version as the cursor" check "{\"source\":$source_json,\"version\":$version}"
echo
log "demo finished: check reported $pushed"
