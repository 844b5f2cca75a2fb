#!/usr/bin/env bash
# Times `in` and `out` against the tools they replace, in one run, on one large image made locally:
# one layer per directory in BENCH_DIRS (default: about 1.8 GB and 60k files of this
# machine's /usr), pushed to a local registry. Prints a table with ratios and peak memory.
# Not a test: numbers go into the README by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

BENCH_DIRS=${BENCH_DIRS:-"/usr/share /usr/include /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu"}
ensure_packages
ensure_cargo
ensure_dockerd
cargo build --release --quiet -p dockhand-resource
bin=$PWD/target/release
work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
on_exit "rm -rf $work"
start_registry 127.0.0.1
repository="$REGISTRY/bench/usr"

log "building the bench image from: $BENCH_DIRS"
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"
diff_ids=() layers=()
for d in $BENCH_DIRS; do
  tar -C / --numeric-owner -cf "$work/layer.tar" "${d#/}" 2>/dev/null || true
  diff_ids+=("\"sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)\"")
  gzip -1 -n -c "$work/layer.tar" >"$work/layer.tar.gz"
  rm "$work/layer.tar"
  h=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$h\",\"size\":$(stat -c %s "$work/layer.tar.gz")}")
  mv "$work/layer.tar.gz" "$blobs/$h"
done
join() { local IFS=,; echo "$*"; }
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":[\"/bin/sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(join "${diff_ids[@]}")]}}"
ch=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" >"$blobs/$ch"
manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$ch\",\"size\":${#config}},\"layers\":[$(join "${layers[@]}")]}"
mh=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
printf '%s' "$manifest" >"$blobs/$mh"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$mh" "${#manifest}" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$layout:bench" "docker://$repository:latest"
compressed=$(du -sb "$blobs" | cut -f1)
rm -rf "$layout"
digest="sha256:$mh"
request() { printf '{"source":{"repository":"%s"},"version":{"digest":"%s"},"params":%s}' "$repository" "$digest" "$1"; }

results=()
# measure NAME COMMAND...: wall seconds and peak RSS (KiB) of the command, caches dropped.
measure() {
  local name=$1
  shift
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; return 1; }
  read -r secs rss <"$work/time"
  results+=("$name|$secs|$rss")
  log "$name: ${secs}s, peak ${rss} KiB"
}
fresh() { rm -rf "$work/out"; mkdir -p "$work/out"; }

fresh; measure "dockhand in (rootfs)" sh -c "$(printf "echo '%s' | %s/in %s/out" "$(request '{}')" "$bin" "$work")"
fresh; measure "dockhand in (format: oci)" sh -c "$(printf "echo '%s' | %s/in %s/out" "$(request '{"format":"oci"}')" "$bin" "$work")"
fresh; measure "dockhand in (save: true)" sh -c "$(printf "echo '%s' | %s/in %s/out" "$(request '{"save":true,"format":"oci"}')" "$bin" "$work")"
docker rmi -f "$repository@$digest" >/dev/null 2>&1 || true
fresh; measure "docker pull + docker save" sh -c "docker pull -q $repository@$digest && docker save -o $work/out/image.tar $repository@$digest"
fresh; measure "docker create + docker export" sh -c "c=\$(docker create $repository@$digest) && docker export \$c > $work/out/rootfs.tar && docker rm \$c"
docker rmi -f "$repository@$digest" >/dev/null 2>&1 || true
fresh; measure "skopeo copy + umoci raw unpack" sh -c "skopeo copy --quiet --src-tls-verify=false docker://$repository@$digest oci:$work/out/oci:b && umoci raw unpack --image $work/out/oci:b $work/out/rootfs"

# Pushes, to a second registry (so nothing can be mounted or skipped): from the archive `in`
# wrote with save: true, and from a daemon build on top of the bench image.
source_registry=$REGISTRY
start_registry 127.0.0.1
target=$REGISTRY
REGISTRY=$source_registry
fresh
printf '{"source":{"repository":"%s"},"version":{"digest":"%s"},"params":{"save":true}}' "$repository" "$digest" |
  "$bin/in" "$work/saved" >/dev/null 2>&1
put() { printf '{"source":{"repository":"%s","tag":"%s"},"params":%s}' "$target/$1" "$2" "$3"; }
measure "dockhand out (load_file)" sh -c "$(printf "echo '%s' | %s/out %s" "$(put pushed-dockhand latest '{"load_file":"saved/image"}')" "$bin" "$work")"
loaded=$(docker load -q -i "$work/saved/image" | awk '{print $NF}')
docker tag "$loaded" "$target/pushed-docker:latest"
measure "docker push (image loaded)" docker push -q "$target/pushed-docker:latest"
measure "skopeo copy (docker-archive)" skopeo copy --quiet --dest-tls-verify=false "docker-archive:$work/saved/image" "docker://$target/pushed-skopeo:latest"
mkdir -p "$work/ctx/build"
# COPY, not RUN: the bench image is /usr only, with no shell at /bin/sh.
echo built >"$work/ctx/build/built"
printf 'FROM %s@%s\nCOPY built /built\n' "$repository" "$digest" >"$work/ctx/build/Dockerfile"
measure "dockhand out (build)" sh -c "$(printf "echo '%s' | %s/out %s" "$(put built-dockhand latest '{"build":"build"}')" "$bin" "$work/ctx")"
measure "docker build + docker push" sh -c "docker build -q -t $target/built-docker:latest $work/ctx/build && docker push -q $target/built-docker:latest"

printf '\nimage: %s layers, %s MB compressed\n\n' "$(wc -w <<<"$BENCH_DIRS")" "$((compressed / 1000000))"
printf '| what | seconds | peak RSS (MB) |\n| --- | --- | --- |\n'
for r in "${results[@]}"; do
  IFS='|' read -r name secs rss <<<"$r"
  printf '| %s | %s | %s |\n' "$name" "$secs" "$((rss / 1024))"
done
secs_of() { for r in "${results[@]}"; do IFS='|' read -r n s _ <<<"$r"; [ "$n" = "$1" ] && echo "$s"; done; }
ratio() { python3 -c "print(f'{$1/$2:.1f}x')"; }
printf '\nin (rootfs) vs skopeo + umoci: %s faster\n' "$(ratio "$(secs_of 'skopeo copy + umoci raw unpack')" "$(secs_of 'dockhand in (rootfs)')")"
printf 'in (format: oci) vs docker pull + save: %s faster\n' "$(ratio "$(secs_of 'docker pull + docker save')" "$(secs_of 'dockhand in (format: oci)')")"
printf 'out (load_file) vs docker push: %s faster\n' "$(ratio "$(secs_of 'docker push (image loaded)')" "$(secs_of 'dockhand out (load_file)')")"
printf 'out (build) vs docker build + push: %s faster\n' "$(ratio "$(secs_of 'docker build + docker push')" "$(secs_of 'dockhand out (build)')")"
