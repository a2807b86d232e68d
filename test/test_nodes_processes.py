"""Starting node processes the way ros2 launch does (nodes/processes.py), checked without ROS."""

import os
import signal
import sys
import time

from fastdp_ros.nodes.processes import DomainLease, NodeGroup, ros_args, ros_environment, sim_launch_args


def test_concurrent_runs_get_different_domains():
    with DomainLease() as a, DomainLease() as b:
        assert a.domain_id != b.domain_id and 1 <= a.domain_id <= 101 and 1 <= b.domain_id <= 101
    with DomainLease() as c:  # released ids are free again
        assert c.domain_id is not None


def test_node_environment_is_private_and_local():
    env = ros_environment(42, {"_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1", "ROS_LOCALHOST_ONLY": "1", "PATH": "/bin"})
    assert env["ROS_DOMAIN_ID"] == "42" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    # each child sets up the wheels' library path itself; a mark from another environment would skip that
    assert "_ROS_WHEELS_BOOTSTRAP_COMPLETE" not in env and "ROS_LOCALHOST_ONLY" not in env
    assert env["PATH"] == "/bin"


def test_ros_args_as_launch_ros_passes_them():
    args = ros_args("/x/sim.yaml", {"policy": "alt", "use_sim_time": False, "model_dir": "", "rate": 60.0,
                                    "topics": ["/a", "/b"]}, name="n")
    assert args == ["--ros-args", "-r", "__node:=n", "--params-file", "/x/sim.yaml", "-p", "policy:=alt",
                    "-p", "use_sim_time:=false", "-p", "model_dir:=''", "-p", "rate:=60.0", "-p", "topics:=[/a,/b]"]
    policy = sim_launch_args("fastdp_policy", policy="onedp")
    assert policy[policy.index("--params-file") + 1].endswith("config/sim.yaml")
    assert "policy:=onedp" in policy and "control_rate:=60.0" in policy
    assert "policy:=alt_ood" in sim_launch_args("fastdp_ood_monitor")


def test_group_interrupt_reaches_every_process_and_end_escalates(tmp_path, monkeypatch):
    monkeypatch.setattr("fastdp_ros.nodes.processes.executable", lambda name: sys.executable)
    group = NodeGroup(7, tmp_path)
    code = "import signal, time; signal.signal(signal.SIGINT, lambda *a: exit(3)); print('up', flush=True); time.sleep(60)"
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    try:
        a = group.start("a", "x", ["-c", code])
        b = group.start("b", "x", ["-c", code])
        c = group.start("c", "x", ["-c", stubborn])
        assert os.getpgid(a.pid) == os.getpgid(b.pid) == os.getpgid(c.pid) != os.getpgid(0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all("up" in n.output() for n in (a, b, c)):
            time.sleep(0.05)
        group.interrupt_group(signal.SIGINT)
        assert a.wait(10) == 3 and b.wait(10) == 3
        assert c.alive()  # ignored SIGINT: end() goes on to SIGTERM
        assert c.end(timeout=2.0) == -signal.SIGTERM and c.signals == ["SIGINT", "SIGTERM"]
    finally:
        group.end_all()
