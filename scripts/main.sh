#!/usr/bin/env bash
# The main job: set up .venv, then a fast policy drives the simulated Franka (MuJoCo, the
# embedded default scene) closed-loop in real time: `fastdp run` with the shipped one-step push
# policy through ONNX Runtime, 60 Hz commands, two 96 px cameras. It writes the run's statistics
# (ticks on time, inference latency, successes) and a GIF of the front camera to out/.
# Extra arguments go to `fastdp run` (e.g. --duration 300 instead of the 3 episodes, --backend torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
FASTDP="${FASTDP_VENV:-$ROOT/.venv}/bin/fastdp"
OUT="${FASTDP_OUT:-$ROOT/out}"
MODEL="${FASTDP_MODEL:-$ROOT/models/push_onedp}"
# three episodes unless the arguments say how long to run (--episodes and --duration exclude each other)
LENGTH=(--episodes 3)
for arg in "$@"; do
    case "$arg" in --episodes|--episodes=*|--duration|--duration=*) LENGTH=() ;; esac
done
mkdir -p "$OUT"
"$FASTDP" run "$MODEL" --task push --rate 60 --backend onnxruntime "${LENGTH[@]}" \
    --stats "$OUT/run_stats.json" --video "$OUT/run.gif" "$@"
