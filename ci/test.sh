#!/usr/bin/env bash
# Everything CI runs, on a fresh Debian machine as root: installs the test dependencies,
# starts a Docker daemon of its own (unless DOCKER_HOST answers), then fmt, clippy and all
# tests (the integration tests start their own registries). Stops what it started.
# Extra arguments go to `cargo test` (e.g. ci/test.sh check::cursor).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

started=$(date +%s)
log "dependencies"
ensure_packages
ensure_moto
ensure_cargo

log "docker daemon"
ensure_dockerd
ci/make-base-image.sh --import >/dev/null

status=0
log "cargo fmt --check"
cargo fmt --all -- --check || status=1
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings || status=1
log "cargo test"
RUST_BACKTRACE=1 cargo test --workspace --locked -- "$@" || status=1

# The resource image, built without pulling anything, run the way Concourse runs it. Skipped
# when a test filter was given (a quick run of a few tests).
if [ $# -eq 0 ]; then
  log "resource image"
  if ci/build-image.sh && ci/container-test.sh; then :; else status=1; fi
fi

elapsed=$(( $(date +%s) - started ))
if [ $status -eq 0 ]; then
  log "all checks passed in ${elapsed}s"
else
  log "FAILED (after ${elapsed}s): see above"
fi
exit $status
