#!/usr/bin/env bash
# Set up .venv (with the test extras) and run the test suite. Extra arguments go to pytest.
# The node tests run on real rclpy: a sourced ROS 2 installation's when it provides one,
# otherwise ROS 2 Jazzy's PyPI wheels, installed into .venv as the `ros` extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="dev,ros"
if [ -n "${AMENT_PREFIX_PATH:-}" ] && python3 -c 'import rclpy' >/dev/null 2>&1; then
    echo "[test] using the sourced ROS 2's rclpy (${ROS_DISTRO:-unknown distribution})" >&2
    EXTRAS="dev"
fi
"$ROOT/scripts/setup_env.sh" "$EXTRAS"
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec "${FASTDP_VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
