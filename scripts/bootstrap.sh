#!/usr/bin/env bash
# Set up everything officeray needs on this machine; safe and fast to run again.
#   1. a virtual environment at .venv/ with the project and its dev tools installed (torch first,
#      the CPU build: the memory's encoder needs no GPU)
#   2. the Docker engine (Debian's docker.io) when missing, and dockerd started when not running
#      (--bridge=none --iptables=false: sandboxes use --network none)
#   3. the sandbox image (built offline from a Debian rootfs when no registry answers)
#   +  Debian's postgresql when missing (tests/store starts its own server from it; the packaged
#      default cluster is stopped)
#   +  Debian's chromium when missing (the console's browser tests; Playwright drives it, nothing
#      is downloaded)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# -- 1. Python ---------------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.13.0  # the pin of pyproject.toml (the encoder of the memory runs on CPU)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.officeray-install
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import officeray" 2>/dev/null; then
  # torch first, pinned to the CPU build (pyproject.toml pins the same version): resolved alone, a
  # bare torch requirement pulls gigabytes of CUDA wheels. TORCH_INDEX_URL (e.g.
  # https://download.pytorch.org/whl/cpu) names where the CPU build lies when pip's sources lack it.
  if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
      2>/dev/null; then
    log "installing torch==$TORCH_VERSION (CPU build)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
  fi
  log "installing officeray and its dependencies into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi

# -- 2. Docker engine ---------------------------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${need_pkgs[*]}: run this script as root, or install them with apt-get"; exit 1
  fi
  log "installing ${need_pkgs[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    log "the Docker engine is not running and this user cannot start it"; exit 1
  fi
  log "starting dockerd (--bridge=none --iptables=false), log in /var/log/officeray-dockerd.log"
  nohup dockerd --bridge=none --iptables=false >/var/log/officeray-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/officeray-dockerd.log"; exit 1; }
fi

# -- PostgreSQL server binaries (tests/store runs a throwaway server; officeray itself needs none) ----
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing postgresql (tests/store needs its server binaries): run this script as root"; exit 1
  fi
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  # the package's default cluster is not used: stop it if its postinst started it
  for conf in /etc/postgresql/*/main; do
    if [ -d "$conf" ]; then
      pg_ctlcluster "$(basename "$(dirname "$conf")")" main stop >/dev/null 2>&1 || true
    fi
  done
fi

# -- Chromium (the console's browser tests drive Debian's headless chromium with Playwright) ------
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing chromium (tests/integration/test_console_browser.py needs it): run this script as root"; exit 1
  fi
  log "installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

# -- 3. Sandbox image ---------------------------------------------------------------------------
.venv/bin/python -m tools_sandbox.image ensure >&2
log "ready"
