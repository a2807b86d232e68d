#!/usr/bin/env bash
# The main job: set up .venv, then drive the simulated Franka (MuJoCo, embedded default scene).
# Until a trained fast policy ships in models/, it records scripted push demonstrations with
# both cameras and replays them closed-loop from their seeds. Extra arguments go to `collect`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
FASTDP="${FASTDP_VENV:-$ROOT/.venv}/bin/fastdp"
OUT="${FASTDP_OUT:-$ROOT/out}"
mkdir -p "$OUT"
"$FASTDP" collect --task push --episodes 5 --out "$OUT/push_demo" --overwrite "$@"
"$FASTDP" replay "$OUT/push_demo" --out "$OUT/push_demo_replay.json"
