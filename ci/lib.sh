#!/usr/bin/env bash
# Shared set-up for ci/test.sh and ci/demo.sh: Debian packages, a Docker daemon of our own,
# and clean-up of everything we start. Source it; it defines functions only.

# Debian packages the tests and the demo use; later work extends this list.
DOCKHAND_PACKAGES=(docker.io docker-registry skopeo apache2-utils umoci busybox-static
  git openssh-client ca-certificates curl debootstrap iproute2)

log() { printf '==> %s\n' "$*" >&2; }

# Installs whatever of the given packages (default: DOCKHAND_PACKAGES) is missing
# (apt-get update only when needed).
ensure_packages() {
  local missing=() p wanted=("$@")
  if [ ${#wanted[@]} -eq 0 ]; then
    wanted=("${DOCKHAND_PACKAGES[@]}")
  fi
  for p in "${wanted[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install: ${missing[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# moto's server plays ECR and STS for the ECR tests (PyPI: moto[server]).
ensure_moto() {
  if python3 -c 'import moto.server' >/dev/null 2>&1; then
    return 0
  fi
  log "installing moto[server] from PyPI"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    ensure_packages python3-pip
  fi
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'moto[server]'
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install a Rust toolchain (https://rustup.rs) first" >&2
    return 1
  fi
}

# Cleanup actions run at exit, last registered first.
DOCKHAND_CLEANUP=()
on_exit() { DOCKHAND_CLEANUP=("$1" "${DOCKHAND_CLEANUP[@]}"); }
run_cleanup() {
  local c
  for c in "${DOCKHAND_CLEANUP[@]}"; do
    eval "$c" || true
  done
  DOCKHAND_CLEANUP=()
}
trap run_cleanup EXIT
trap 'exit 130' INT TERM

docker_answers() {
  timeout 10 docker version >/dev/null 2>&1
}

# Uses DOCKER_HOST (or the default socket) when a daemon answers there; otherwise starts a
# dockerd of our own under a temp dir and stops it at exit. Exports DOCKER_HOST.
ensure_dockerd() {
  if docker_answers; then
    log "using the Docker daemon at ${DOCKER_HOST:-the default socket}"
    return 0
  fi
  local dir
  dir=$(mktemp -d /tmp/dockhand-dockerd.XXXXXX)
  export DOCKER_HOST="unix://$dir/docker.sock"
  log "starting dockerd ($dir)"
  dockerd --data-root "$dir/root" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    --host "$DOCKER_HOST" >"$dir/dockerd.log" 2>&1 &
  local pid=$!
  on_exit "stop_dockerd $pid $dir"
  local _
  for _ in $(seq 1 60); do
    if docker_answers; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 1
  done
  echo "dockerd did not start; the end of its log:" >&2
  tail -n 30 "$dir/dockerd.log" >&2
  return 1
}

stop_dockerd() {
  local pid=$1 dir=$2 _
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  # dockerd's own containerd, if it outlived it.
  pkill -f "containerd --config $dir/exec" 2>/dev/null || true
  grep -o " ${dir}[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$dir" 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts a plain-HTTP docker-registry on a free port of ADDR (default 127.0.0.1); exports
# REGISTRY=127.0.0.1:PORT (and REGISTRY_PORT) and stops it at exit.
# Not for $(...): the clean-up must be registered in the calling shell.
start_registry() {
  local dir port addr=${1:-127.0.0.1}
  dir=$(mktemp -d /tmp/dockhand-registry.XXXXXX)
  port=$(free_port)
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $addr:$port
YAML
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  local pid=$!
  on_exit "kill $pid 2>/dev/null; rm -rf $dir"
  local _
  for _ in $(seq 1 50); do
    if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
      export REGISTRY="127.0.0.1:$port" REGISTRY_PORT=$port
      return 0
    fi
    sleep 0.1
  done
  echo "docker-registry did not start:" >&2
  cat "$dir/log" >&2
  return 1
}
