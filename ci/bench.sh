#!/usr/bin/env bash
# Times `in` and `out` against the tools they replace and against the machine's floors, in one
# run, on images made locally: one layer per directory in BENCH_DIRS (default: about 1.8 GB
# and 60k files of this machine's /usr), and one single layer of BENCH_BIG_MB (default 1000)
# MB of large files (the shape of ML and CUDA images), pushed to a local registry. The floors:
# inflating every layer to nothing (zlib-rs, every core and one thread: the `inflate`
# example), and `gunzip | tar -x`. Builds compare `out` (build) with `docker build` + `docker
# push` on two bases: the bench image, and a small one (/usr/sbin). What takes a few seconds
# runs three times and counts its median. Prints a table with ratios and peak memory.
# BENCH_PULL_ONLY=1 stops after the pulls (no pushes, no builds: a few minutes).
# Not a test: numbers go into the README by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

BENCH_DIRS=${BENCH_DIRS:-"/usr/share /usr/include /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu"}
BENCH_BIG_MB=${BENCH_BIG_MB:-1000}
ensure_packages
ensure_cargo
ensure_dockerd
cargo build --release --quiet -p dockhand-resource
cargo build --release --quiet -p dockhand --example inflate
bin=$PWD/target/release
inflate=$PWD/target/release/examples/inflate
cores=$(nproc)
work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
on_exit "rm -rf $work"
start_registry 127.0.0.1
repository="$REGISTRY/bench/usr"

log "building the bench image from: $BENCH_DIRS"
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"
diff_ids=() layers=() gzlayers=()
for d in $BENCH_DIRS; do
  tar -C / --numeric-owner -cf "$work/layer.tar" "${d#/}" 2>/dev/null || true
  diff_ids+=("\"sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)\"")
  gzip -1 -n -c "$work/layer.tar" >"$work/layer.tar.gz"
  rm "$work/layer.tar"
  h=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$h\",\"size\":$(stat -c %s "$work/layer.tar.gz")}")
  mv "$work/layer.tar.gz" "$blobs/$h"
  gzlayers+=("$work/gz/$h")
done
mkdir -p "$work/gz"
for g in "${gzlayers[@]}"; do ln "$blobs/$(basename "$g")" "$g"; done
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

# push_one_layer_image NAME LAYER_TAR: gzips LAYER_TAR into a one-layer image at
# $REGISTRY/bench/NAME:latest; prints its digest; keeps the gzipped layer as $work/gz-NAME.
push_one_layer_image() {
  local name=$1 tarball=$2 dir="$work/layout-$1" diff h config ch manifest mh
  mkdir -p "$dir/blobs/sha256"
  diff=$(sha256sum "$tarball" | cut -d' ' -f1)
  gzip -1 -n -c "$tarball" >"$work/gz-$name"
  h=$(sha256sum "$work/gz-$name" | cut -d' ' -f1)
  ln "$work/gz-$name" "$dir/blobs/sha256/$h"
  config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff\"]}}"
  ch=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" >"$dir/blobs/sha256/$ch"
  manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$ch\",\"size\":${#config}},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$h\",\"size\":$(stat -c %s "$work/gz-$name")}]}"
  mh=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
  printf '%s' "$manifest" >"$dir/blobs/sha256/$mh"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$mh" "${#manifest}" >"$dir/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$dir:bench" "docker://$REGISTRY/bench/$name:latest" >&2
  rm -rf "$dir"
  echo "sha256:$mh"
}

# Large files: BENCH_BIG_MB of this machine's libraries and binaries, in 4 files.
log "building the ${BENCH_BIG_MB} MB single-layer image"
mkdir -p "$work/big/models"
for i in 1 2 3 4; do
  find /usr/lib /usr/bin -type f -size +64k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null |
    tail -c +$(( (i - 1) * 7919 + 1 )) | head -c $(( BENCH_BIG_MB * 1000000 / 4 )) >"$work/big/models/part$i.bin" || true
done
tar -C "$work/big" --numeric-owner -cf "$work/big.tar" models
big_digest=$(push_one_layer_image big "$work/big.tar")
rm -f "$work/big.tar"

results=()
# timed COMMAND...: sets secs and rss to the wall seconds and peak RSS (KiB) of the command,
# run with caches dropped.
timed() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; return 1; }
  read -r secs rss <"$work/time"
}
# measure NAME COMMAND...: one run of the command, into the results.
measure() {
  local name=$1 secs rss
  shift
  timed "$@"
  results+=("$name|$secs|$rss")
  log "$name: ${secs}s, peak ${rss} KiB"
}
# measure3 NAME COMMAND...: three runs, each into an empty $work/out; the median time and the
# largest peak RSS into the results (the runs of a few seconds vary by a tenth or more).
measure3() {
  local name=$1 secs rss all=() peak=0 median
  shift
  for _ in 1 2 3; do
    fresh
    timed "$@"
    all+=("$secs")
    if [ "$rss" -gt "$peak" ]; then peak=$rss; fi
  done
  median=$(printf '%s\n' "${all[@]}" | sort -n | sed -n 2p)
  results+=("$name|$median|$peak")
  log "$name: ${median}s (median of ${all[*]}), peak ${peak} KiB"
}
fresh() { rm -rf "$work/out"; mkdir -p "$work/out"; }
secs_of() { for r in "${results[@]}"; do IFS='|' read -r n s _ <<<"$r"; [ "$n" = "$1" ] && echo "$s"; done; }

measure3 "floor: inflate every layer ($cores threads)" "$inflate" --threads "$cores" "${gzlayers[@]}"
measure3 "floor: inflate every layer (1 thread)" "$inflate" --threads 1 "${gzlayers[@]}"
fresh; measure "floor: gunzip, tar -x" sh -c "for g in ${gzlayers[*]}; do gzip -dc \$g | tar -x -C $work/out || exit 1; done"
measure3 "dockhand in (rootfs)" sh -c "$(printf "echo '%s' | %s/in %s/out" "$(request '{}')" "$bin" "$work")"
measure3 "dockhand in (format: oci)" sh -c "$(printf "echo '%s' | %s/in %s/out" "$(request '{"format":"oci"}')" "$bin" "$work")"
measure3 "dockhand in (save: true)" sh -c "$(printf "echo '%s' | %s/in %s/out" "$(request '{"save":true,"format":"oci"}')" "$bin" "$work")"
measure3 "floor: inflate the big layer (1 thread)" "$inflate" --threads 1 "$work/gz-big"
measure3 "floor: inflate the big layer ($cores threads)" "$inflate" --threads "$cores" "$work/gz-big"
printf '{"source":{"repository":"%s"},"version":{"digest":"%s"}}' "$REGISTRY/bench/big" "$big_digest" >"$work/big.json"
measure3 "dockhand in (rootfs, big layer)" sh -c "$bin/in $work/out <$work/big.json"
docker rmi -f "$repository@$digest" >/dev/null 2>&1 || true
fresh; measure "docker pull + docker save" sh -c "docker pull -q $repository@$digest && docker save -o $work/out/image.tar $repository@$digest"
fresh; measure "docker create + docker export" sh -c "c=\$(docker create $repository@$digest) && docker export \$c > $work/out/rootfs.tar && docker rm \$c"
docker rmi -f "$repository@$digest" >/dev/null 2>&1 || true
fresh; measure "skopeo copy + umoci raw unpack" sh -c "skopeo copy --quiet --src-tls-verify=false docker://$repository@$digest oci:$work/out/oci:b && umoci raw unpack --image $work/out/oci:b $work/out/rootfs"

if [ -z "${BENCH_PULL_ONLY:-}" ]; then
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
  # A build whose one new layer is a COPY of the big files, on the bench image (COPY, not
  # RUN: the bench image is /usr only, with no shell at /bin/sh). Each side starts from a daemon
  # without the base image and without build cache, and pushes to a registry that has nothing.
  mkdir -p "$work/ctx/build"
  mv "$work/big/models" "$work/ctx/build/models"
  printf 'FROM %s@%s\nCOPY models /models\n' "$repository" "$digest" >"$work/ctx/build/Dockerfile"
  forget_builds() {
    docker rmi -f "$repository@$digest" "$target/built-docker:latest" >/dev/null 2>&1 || true
    docker image prune -af >/dev/null 2>&1 || true
    docker builder prune -af >/dev/null 2>&1 || true
  }
  forget_builds
  measure "docker build (no cache)" docker build -q --no-cache -t "$target/built-docker:latest" "$work/ctx/build"
  measure "docker push (after the build)" docker push -q "$target/built-docker:latest"
  docker save -o "$work/ctx/built.tar" "$target/built-docker:latest"
  measure "dockhand out (load_file of that build's docker save)" sh -c "$(printf "echo '%s' | %s/out %s" "$(put built-saved latest '{"load_file":"built.tar"}')" "$bin" "$work/ctx")"
  rm -f "$work/ctx/built.tar"
  forget_builds
  measure "dockhand out (build)" sh -c "$(printf "echo '%s' | %s/out %s" "$(put built-dockhand latest '{"build":"build"}')" "$bin" "$work/ctx")"
  # Its push part: the whole less the build and its export, which out logs.
  built=$(sed -n 's/.*built and exported in \([0-9.]*\) s.*/\1/p' "$work/stderr")
  results+=("dockhand out (build): the push after the build and export|$(python3 -c "print(round($(secs_of 'dockhand out (build)') - $built, 2))")|0")
  # The same COPY on a small base (one layer of /usr/sbin, about 100 MB: the size of a slim
  # language image), where the build's own layer is most of what is exported and pushed.
  tar -C / --numeric-owner -cf "$work/small.tar" usr/sbin 2>/dev/null || true
  small_digest=$(push_one_layer_image small "$work/small.tar")
  rm -f "$work/small.tar"
  printf 'FROM %s@%s\nCOPY models /models\n' "$REGISTRY/bench/small" "$small_digest" >"$work/ctx/build/Dockerfile.small"
  forget_builds
  measure "docker build (no cache, small base)" docker build -q --no-cache -f "$work/ctx/build/Dockerfile.small" -t "$target/built-small-docker:latest" "$work/ctx/build"
  measure "docker push (after the small-base build)" docker push -q "$target/built-small-docker:latest"
  docker rmi -f "$target/built-small-docker:latest" >/dev/null 2>&1 || true
  forget_builds
  measure "dockhand out (build, small base)" sh -c "$(printf "echo '%s' | %s/out %s" "$(put built-small-dockhand latest '{"build":"build","dockerfile":"build/Dockerfile.small"}')" "$bin" "$work/ctx")"
  built=$(sed -n 's/.*built and exported in \([0-9.]*\) s.*/\1/p' "$work/stderr")
  results+=("dockhand out (build, small base): the push after the build and export|$(python3 -c "print(round($(secs_of 'dockhand out (build, small base)') - $built, 2))")|0")
fi

printf '\nimage: %s layers, %s MB compressed\n\n' "$(wc -w <<<"$BENCH_DIRS")" "$((compressed / 1000000))"
printf '| what | seconds | peak RSS (MB) |\n| --- | --- | --- |\n'
for r in "${results[@]}"; do
  IFS='|' read -r name secs rss <<<"$r"
  printf '| %s | %s | %s |\n' "$name" "$secs" "$((rss / 1024))"
done
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
printf '\nin (rootfs) vs skopeo + umoci: %s faster\n' "$(ratio "$(secs_of 'skopeo copy + umoci raw unpack')" "$(secs_of 'dockhand in (rootfs)')")"
printf 'in (format: oci) vs docker pull + save: %s faster\n' "$(ratio "$(secs_of 'docker pull + docker save')" "$(secs_of 'dockhand in (format: oci)')")"
if [ -z "${BENCH_PULL_ONLY:-}" ]; then
  printf 'out (load_file) vs docker push: %s faster\n' "$(ratio "$(secs_of 'docker push (image loaded)')" "$(secs_of 'dockhand out (load_file)')")"
fi
sum() { python3 -c "print($1+$2)"; }
printf '\nin (rootfs) / inflate floor (%s threads): %s\n' "$cores" "$(ratio "$(secs_of 'dockhand in (rootfs)')" "$(secs_of "floor: inflate every layer ($cores threads)")")"
printf 'in (rootfs) / (gunzip, tar -x): %s\n' "$(ratio "$(secs_of 'dockhand in (rootfs)')" "$(secs_of 'floor: gunzip, tar -x')")"
printf 'in (rootfs, big layer) / inflating it on 1 thread: %s\n' "$(ratio "$(secs_of 'dockhand in (rootfs, big layer)')" "$(secs_of 'floor: inflate the big layer (1 thread)')")"
if [ -z "${BENCH_PULL_ONLY:-}" ]; then
  printf 'out push after a build (its push part, the base layers copied) / docker push: %s\n' "$(ratio "$(secs_of 'dockhand out (build): the push after the build and export')" "$(secs_of 'docker push (after the build)')")"
  printf 'out push after a build (load_file of its save: every layer compressed) / docker push: %s\n' "$(ratio "$(secs_of "dockhand out (load_file of that build's docker save)")" "$(secs_of 'docker push (after the build)')")"
  printf 'out (build) / docker build + docker push: %s\n' "$(ratio "$(secs_of 'dockhand out (build)')" "$(sum "$(secs_of 'docker build (no cache)')" "$(secs_of 'docker push (after the build)')")")"
  printf 'out push after the small-base build (its push part) / docker push: %s\n' "$(ratio "$(secs_of 'dockhand out (build, small base): the push after the build and export')" "$(secs_of 'docker push (after the small-base build)')")"
  printf 'out (build, small base) / docker build + docker push: %s\n' "$(ratio "$(secs_of 'dockhand out (build, small base)')" "$(sum "$(secs_of 'docker build (no cache, small base)')" "$(secs_of 'docker push (after the small-base build)')")")"
fi
