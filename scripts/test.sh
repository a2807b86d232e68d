#!/usr/bin/env bash
# Set up .venv (with the test extras) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup_env.sh" dev
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec "${FASTDP_VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
