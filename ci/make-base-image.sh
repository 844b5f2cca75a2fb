#!/usr/bin/env bash
# Makes a small base image without pulling anything: busybox-static with its applets,
# /etc/passwd and /tmp.
#   ci/make-base-image.sh ROOTFS.tar          write the rootfs tarball
#   ci/make-base-image.sh --import [NAME]     docker import it (default dockhand-test/busybox:latest)
set -euo pipefail

busybox=$(command -v busybox) || { echo "busybox is not installed (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,home}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
tarball=$work/rootfs.tar
tar --numeric-owner --owner=0 --group=0 --mtime=@1700000000 --sort=name -C "$root" -cf "$tarball" .

case "${1:-}" in
  --import)
    name=${2:-dockhand-test/busybox:latest}
    docker import --change 'CMD ["/bin/sh"]' "$tarball" "$name" >/dev/null
    echo "$name"
    ;;
  "" | -h | --help)
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    cp "$tarball" "$1"
    echo "$1"
    ;;
esac
