"""The nodes as separate processes, started the way `ros2 launch` starts them, for the node
tests and bench/ros_graph.py: a private ROS_DOMAIN_ID, discovery limited to this machine,
every process ended by its PID with a timeout. No rclpy here (this module only starts and
stops processes), so it imports without ROS.

The PyPI wheels of ROS 2 Jazzy (`pip install fastdp_ros[ros]`) need their shared libraries on
LD_LIBRARY_PATH; their `ros_wheels_bootstrapper` (a .pth file) re-executes every Python of
the environment once with it set, and marks that in `_ROS_WHEELS_BOOTSTRAP_COMPLETE`. A child
inheriting the mark from another environment would skip that step and fail to load rclpy, so
the mark is dropped from the children's environment: each child sets up its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastdp_ros.errors import ConfigError

#: ROS 2 on Linux: domain ids 0-101 leave the ephemeral ports alone (ROS 2 documentation)
DOMAIN_IDS = range(1, 102)
ROOT = Path(__file__).resolve().parents[2]


def rclpy_from_wheels() -> bool:
    """Whether rclpy comes from the PyPI wheels (their bootstrapper is installed)."""
    try:
        import importlib.util

        return importlib.util.find_spec("ros_wheels_bootstrapper") is not None
    except (ImportError, ValueError):
        return False


def ros_environment(domain_id: int, base: dict | None = None, **extra: str) -> dict[str, str]:
    """The environment of a node process: `base` (os.environ) on `domain_id`, localhost only."""
    env = dict(os.environ if base is None else base)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; it would override the range with a warning
    if rclpy_from_wheels():  # the wheels ship Fast DDS only
        env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class DomainLease:
    """A ROS_DOMAIN_ID no other run on this machine holds (an flock on a file per id), so
    concurrent test runs and benchmarks never see each other's nodes."""

    def __init__(self, ids=DOMAIN_IDS):
        self.domain_id: int | None = None
        self._file = None
        start = os.getpid() % len(ids)
        for k in range(len(ids)):
            candidate = ids[(start + k) % len(ids)]
            f = open(Path(tempfile.gettempdir()) / f"fastdp_ros_domain_{candidate}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self.domain_id, self._file = candidate, f
            return
        raise ConfigError("every ROS_DOMAIN_ID 1-101 is held by another run on this machine")

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None

    def __enter__(self) -> "DomainLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def executable(name: str) -> str:
    """A console script of this package: beside this Python (a virtual environment's bin/), or
    on PATH (a colcon install's lib/fastdp_ros when sourced)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not installed (pip install -e . or colcon build)")
    return found


def ros_args(params_file: str | Path | None = None, params: dict | None = None, name: str | None = None) -> list[str]:
    """`--ros-args` the way launch_ros passes a YAML file and parameter overrides."""
    args = ["--ros-args"]
    if name:
        args += ["-r", f"__node:={name}"]
    if params_file:
        args += ["--params-file", str(params_file)]
    for key, value in (params or {}).items():
        args += ["-p", f"{key}:={_param_text(value)}"]
    return args


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


@dataclass
class NodeProcess:
    """One started node: its process, its output files, how it ended."""

    name: str
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    returncode: int | None = None
    signals: list[str] = field(default_factory=list)  # what it took to end it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int | None:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def send(self, sig: int) -> None:
        if self.alive():
            self.signals.append(signal.Signals(sig).name)
            os.kill(self.pid, sig)

    def end(self, timeout: float = 5.0, sig: int = signal.SIGINT) -> int:
        """`sig`, then SIGTERM, then SIGKILL, each given `timeout` seconds, by PID."""
        for s in (sig, signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            self.send(s)
            if self.wait(timeout) is not None:
                break
        self.returncode = self.proc.wait()
        return self.returncode


class NodeGroup:
    """Node processes of one graph in one process group, as a terminal's foreground job: Ctrl-C
    there is SIGINT to every process in the group (`interrupt_group`)."""

    def __init__(self, domain_id: int, log_dir: str | Path, env: dict | None = None):
        self.domain_id = domain_id
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = ros_environment(domain_id, env, ROS_LOG_DIR=str(self.log_dir / "ros_log"))
        self.nodes: dict[str, NodeProcess] = {}
        self.pgid: int | None = None

    def start(self, name: str, executable_name: str, args: list[str], env: dict | None = None) -> NodeProcess:
        out, err = self.log_dir / f"{name}.out", self.log_dir / f"{name}.err"
        group = {"process_group": 0 if self.pgid is None else self.pgid}  # a group of their own
        proc = subprocess.Popen([executable(executable_name), *args], env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=open(out, "w"), stderr=open(err, "w"),
                                cwd=str(self.log_dir), **group)
        if self.pgid is None:
            self.pgid = proc.pid
        node = self.nodes[name] = NodeProcess(name, proc, out, err)
        return node

    def interrupt_group(self, sig: int = signal.SIGINT) -> None:
        """`sig` to the whole process group (what a terminal's Ctrl-C does)."""
        if self.pgid is not None and any(n.alive() for n in self.nodes.values()):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                pass

    def wait_all(self, timeout: float) -> dict[str, int | None]:
        deadline = time.monotonic() + timeout
        return {name: n.wait(max(0.0, deadline - time.monotonic())) for name, n in self.nodes.items()}

    def end_all(self, timeout: float = 5.0) -> dict[str, int]:
        return {name: n.end(timeout) for name, n in self.nodes.items()}

    def __enter__(self) -> "NodeGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.end_all()


#: the executables sim.launch.py starts (policy.launch.py's two with use_monitor) and their names
SIM_GRAPH = {"fastdp_sim": "sim_node", "fastdp_policy": "policy_node", "fastdp_ood_monitor": "ood_monitor_node"}


def sim_launch_args(node: str, policy: str = "onedp", monitor_policy: str = "alt_ood",
                    overrides: dict | None = None) -> list[str]:
    """The arguments sim.launch.py gives `node` (a name in SIM_GRAPH) with its default launch
    arguments: config/sim.yaml, then the launch file's parameter overrides, then `overrides`."""
    config = ROOT / "config"
    shared = {"robot_type": "panda", "policies_file": str(config / "policies.yaml"),
              "command_interface": "joint_trajectory", "use_sim_time": False}
    launch = {"fastdp_sim": {"task": "push", "episodes": 0, "publish_clock": False},
              "fastdp_policy": {**shared, "policy": policy, "model_dir": "", "backend": "torch",
                                "control_rate": 60.0},
              "fastdp_ood_monitor": {**shared, "policy": monitor_policy}}[node]
    return ros_args(config / "sim.yaml", {**launch, **(overrides or {})})
