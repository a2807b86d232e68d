#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install fastdp_ros into it.
#
#   scripts/setup_env.sh [extras]        e.g. scripts/setup_env.sh dev   or   dev,ros
#
# - Python: the first of $PYTHON, python3.12, python3.11, python3.10, python3 that is 3.10-3.12.
# - System packages (Debian/Ubuntu, only when missing): pythonX.Y-venv, and the EGL/Mesa
#   libraries MuJoCo's offscreen renderer needs.
# - PyTorch: an existing torch in the environment is kept (bring your own CUDA build:
#   create .venv, install it, then run this). Otherwise: $FASTDP_TORCH if set (a pip
#   requirement, e.g. "torch==2.13.0"), else the CUDA build on a machine with an NVIDIA
#   driver, else the CPU build from requirements-torch-cpu.txt: torch==2.13.0+cpu, a version
#   only PyTorch's CPU index (or a local wheel) carries, so no CUDA wheel can be resolved
#   ($FASTDP_TORCH_INDEX: a mirror of that index). fastdp_ros itself does not require torch
#   (setup.py), so installing it never replaces the build chosen here. The installed version
#   is pinned as a constraint so that no extra upgrades it.
# - Re-running is cheap: nothing is reinstalled unless setup.py or the extras changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTDP_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
EXTRAS="${EXTRAS// /}"  # "dev, ros" -> "dev,ros"
if [[ ! "$EXTRAS" =~ ^[A-Za-z0-9_-]*(,[A-Za-z0-9_-]+)*$ ]]; then
    echo "[setup] extras must be a comma-separated list of names (e.g. dev,ros), got '$1'" >&2; exit 2
fi

log() { echo "[setup] $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*  (run it yourself, then re-run this script)"; return 1; fi
}

apt_install() {
    command -v apt-get >/dev/null || { log "missing system packages: $* (no apt-get here)"; return 1; }
    log "installing system packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

pick_python() {
    for py in ${PYTHON:-} python3.12 python3.11 python3.10 python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        # quiet: a pyenv shim exists for every version and complains about those not installed
        if "$py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    log "no Python 3.10-3.12 found (set PYTHON=/path/to/python3.x)"; return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(pick_python)"
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install "python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
        "$PY" -m venv "$VENV"
    fi
    log "created $VENV with $("$VENV/bin/python" --version)"
fi

# MuJoCo renders offscreen through EGL (or OSMesa); Mesa gives a software EGL without a GPU.
if command -v ldconfig >/dev/null && ! ldconfig -p | grep -q 'libEGL.so.1'; then
    apt_install libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri || log "continuing without EGL: rendering will fail"
fi

VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)

if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
    if [ -n "${FASTDP_TORCH:-}" ]; then
        log "installing $FASTDP_TORCH"
        "${PIP[@]}" install "$FASTDP_TORCH"
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        log "NVIDIA driver found: installing the CUDA build of torch"
        "${PIP[@]}" install torch
    else
        log "no NVIDIA GPU: installing PyTorch's CPU build (requirements-torch-cpu.txt)"
        RETRIES=()
        if ! "$VPY" - <<'PY' 2>/dev/null; then
import urllib.request
urllib.request.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=10)
PY
            # an unreachable index costs five retries per package; only a local wheel can serve now
            log "PyTorch's CPU index is not reachable: looking for torch+cpu in the other configured sources"
            RETRIES=(--retries 0)
        fi
        "${PIP[@]}" install "${RETRIES[@]}" ${FASTDP_TORCH_INDEX:+--extra-index-url "$FASTDP_TORCH_INDEX"} \
            -r "$ROOT/requirements-torch-cpu.txt"
    fi
fi
# from the package metadata: importing torch before numpy is installed prints a warning
TORCH_VERSION="$("$VPY" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')"
CONSTRAINTS="$VENV/fastdp-constraints.txt"
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

STAMP_NAME="${EXTRAS:-base}"
STAMP="$VENV/.fastdp-installed-${STAMP_NAME//,/+}"  # dev,ros -> .fastdp-installed-dev+ros
WANT="$(cat "$ROOT/setup.py" "$CONSTRAINTS" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "installing fastdp_ros${EXTRAS:+[$EXTRAS]} (torch $TORCH_VERSION kept)"
    "${PIP[@]}" install -c "$CONSTRAINTS" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
    echo "$WANT" >"$STAMP"
    log "ready: the fastdp command is $VENV/bin/fastdp (\`source $VENV/bin/activate\` puts it on PATH)"
fi
