#!/usr/bin/env bash
# The GPU path on a CUDA machine, in one run: installs the GPU extras it can, runs the suite's
# GPU tests, then scripts/gpu_check.py (engines of the shipped models, faiss CPU vs GPU, bf16
# training). Everything lands in OUT (default bench/gpu): log.txt, pytest.txt, gpu_check.json,
# bench.md (read first) and engines/bench.{json,md,png}.
#
#   bash scripts/gpu_check.sh [OUT] [gpu_check.py options...]
#
# Python: $PYTHON, else .venv/bin/python, else python3: one whose torch is a CUDA build.
# Packages: wheels in .whl/ (for a machine without a package registry) go into a private
# folder on PYTHONPATH, never into the system; otherwise, with a registry, the GPU extras are
# pip-installed beside the torch that is there (torch itself is never changed). A library that
# still cannot be installed gives rows that say so; the rest of the check runs.
# Time limits (seconds): FASTDP_GPU_TEST_TIMEOUT (tests, 180), FASTDP_GPU_CHECK_TIMEOUT (420).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/bench/gpu}"
shift || true
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/log.txt") 2>&1
log() { echo "[gpu_check] $*"; }

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
log "$(date -u +%FT%TZ) on $(hostname); python: $PY"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || log "nvidia-smi failed"
"$PY" -c 'import torch, sys; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU:", torch.cuda.is_available()); sys.exit(not torch.cuda.is_available())' \
    || { log "this torch sees no CUDA GPU: install a CUDA build of torch first"; exit 2; }

SITE="${TMPDIR:-/tmp}/fastdp-gpu-site"
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    log "installing the carried wheels: $(cd "$ROOT/.whl" && ls *.whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$ROOT"/.whl/*.whl || log "installing the carried wheels failed"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    # torch-tensorrt's minor version follows torch's; the constraint keeps the installed torch
    TV="$("$PY" -c 'import torch; print(".".join(torch.__version__.split("+")[0].split(".")[:2]))')"
    echo "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" >"$OUT/.constraints"
    for req in "-e $ROOT" "torch-tensorrt==$TV.*" onnxruntime-gpu faiss-gpu-cu12; do
        # shellcheck disable=SC2086
        "$PY" -m pip install -q -c "$OUT/.constraints" $req || log "could not install $req"
    done
    rm -f "$OUT/.constraints"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONUNBUFFERED=1

log "the suite's GPU tests"
timeout "${FASTDP_GPU_TEST_TIMEOUT:-180}" "$PY" -m pytest -q -rs -p no:cacheprovider \
    "$ROOT/test/test_engines_gpu.py" 2>&1 | tee "$OUT/pytest.txt"
log "pytest exit status: ${PIPESTATUS[0]}"

log "engines, faiss, training"
timeout "${FASTDP_GPU_CHECK_TIMEOUT:-420}" "$PY" "$ROOT/scripts/gpu_check.py" --device cuda --out "$OUT" "$@"
status=$?
log "gpu_check.py exit status: $status"
exit "$status"
