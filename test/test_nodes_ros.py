"""The three nodes on real rclpy, as separate processes started the way sim.launch.py starts
them (the installed executables with config/sim.yaml), on a private ROS_DOMAIN_ID with
discovery limited to this machine; every process is ended by its PID with a timeout.

A probe node in the test process watches and pokes the graph (fastdp_ros.nodes.probe). The
behaviours of issue 20 are exercised here with short windows and no timing asserts; rates and
latencies are measured by bench/ros_graph.py.
"""

import os
import re
import signal
import time

import numpy as np
import pytest

from fastdp_ros.nodes.processes import SIM_GRAPH, DomainLease, NodeGroup, rclpy_from_wheels, sim_launch_args

if rclpy_from_wheels() or os.environ.get("AMENT_PREFIX_PATH"):
    import rclpy  # noqa: F401 - installed: it must import (a broken install fails here, it is not skipped)
else:
    pytest.importorskip("rclpy", reason="rclpy is not installed (pip install -e .[ros], or source ROS 2)")

from fastdp_ros.nodes.probe import GraphProbe  # noqa: E402
from fastdp_ros.nodes.sim_logic import SIM_ARM_JOINTS, SIM_FINGER_JOINTS  # noqa: E402

FRONT, WRIST = "/camera/front/image_raw", "/camera/wrist/image_raw"
START_TIMEOUT = 180.0  # seconds for a graph to start commanding on a loaded 2-core machine
TEST_STREAM_FLOOR = 2.0  # seconds (the default is 0.5 s)


@pytest.fixture(scope="module")
def domain():
    with DomainLease() as lease:
        yield lease.domain_id


def start_sim_graph(domain, log_dir, monitor=None, nodes=tuple(SIM_GRAPH)) -> tuple[NodeGroup, GraphProbe]:
    group = NodeGroup(domain, log_dir)
    # the watchdogs' floor above the stalls a 2-core CI machine running the whole graph and pytest
    # shows (a camera silent 0.75 s): these tests are about other faults; killed nodes still trip it
    floor = {"stream_timeout_floor": TEST_STREAM_FLOOR}
    # the monitor runs with its calibrated threshold (models/push_alt_ood/ood_calibration.json: per
    # camera, 0.1 false stops per hour on 200 closed-loop rollouts), which the noise frames sent here exceed
    overrides = {"fastdp_ood_monitor": {**floor, **(monitor or {})},
                 "fastdp_policy": floor}
    try:
        for name in nodes:
            group.start(name, SIM_GRAPH[name], sim_launch_args(name, overrides=overrides.get(name)))
        probe = GraphProbe(domain)
    except BaseException:
        group.end_all()
        raise
    return group, probe


def describe(group: NodeGroup) -> str:
    return "\n".join(f"--- {n.name} (alive {n.alive()}, rc {n.proc.returncode}):\n{n.output()[-3000:]}"
                     for n in group.nodes.values())


def commands_after(probe, t0):
    return [q for t, q in probe.snapshot("commands") if t > t0]


def wait_commands(probe, group, n=20, timeout=START_TIMEOUT):
    t0 = time.monotonic()
    ok = probe.wait_for(lambda: len(commands_after(probe, t0)) >= n, timeout)
    assert ok, f"fewer than {n} commands in {timeout} s\n{describe(group)}"


def signal_and_collect(group, send) -> dict:
    """send() the signals, then each node's exit status (30 s at most); every node ended after."""
    try:
        send()
        return group.wait_all(30.0)
    finally:
        group.end_all()


def assert_no_traceback(group):
    for node in group.nodes.values():
        err = node.stderr()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, f"{node.name}:\n{err[-3000:]}"
        assert "never retrieved" not in err and "RCLError" not in err, f"{node.name}:\n{err[-3000:]}"


@pytest.fixture(scope="module")
def sim_graph(domain, tmp_path_factory):
    group, probe = start_sim_graph(domain, tmp_path_factory.mktemp("sim_graph"))
    try:
        wait_commands(probe, group)
        yield group, probe
    finally:
        probe.close()
        group.end_all()


def monitor_stop_reasons(probe) -> str:
    status = probe.diagnostic("fastdp_ood_monitor")
    return "" if status is None else status[3].get("stop_reasons", "")


def release_monitor(probe):
    ok, message = probe.trigger("/fastdp_ood_monitor/reset")
    assert probe.wait_for(lambda: probe.stopped() is False, 10.0), message
    return ok, message


# ----------------------------------------------------------------------------- the running graph


def test_sim_renders_from_its_own_thread_and_the_policy_commands(sim_graph):
    """Bug 1: the sim node died on its first frame (EGL context made current on the main thread,
    rendered from executor pool threads)."""
    group, probe = sim_graph
    frames = {topic: probe.frames(topic) for topic in (FRONT, WRIST)}
    t0 = time.monotonic()
    assert probe.wait_for(lambda: all(probe.frames(t) >= frames[t] + 10 for t in frames), 30.0), describe(group)
    commands = commands_after(probe, t0)
    assert commands and all(q.shape == (7,) and np.all(np.isfinite(q)) for q in commands)
    assert all(n.alive() for n in group.nodes.values()), describe(group)
    assert "RendererError" not in group.nodes["fastdp_sim"].output()


def test_hot_swap_and_a_refused_name(sim_graph):
    """`ros2 param set /fastdp_policy policy alt` and back; an unknown name is refused with the
    reason and the commands go on."""
    group, probe = sim_graph
    policy_log = group.nodes["fastdp_policy"]
    for name in ("alt", "onedp"):
        ok, reason = probe.set_string_parameter("fastdp_policy", "policy", name)
        assert ok, reason
        pattern = rf"{name} \(\S+\) now drives the arm"
        assert probe.wait_for(lambda: re.search(pattern, policy_log.output()), 120.0), describe(group)
    ok, reason = probe.set_string_parameter("fastdp_policy", "policy", "no_such_policy")
    assert not ok and "no_such_policy" in reason
    wait_commands(probe, group, n=10, timeout=30.0)
    assert all(n.alive() for n in group.nodes.values()), describe(group)


def test_ood_frames_stop_the_arm_which_holds_until_reset(sim_graph):
    group, probe = sim_graph
    release_monitor(probe)
    rng = np.random.default_rng(0)
    for _ in range(2):  # stop, hold, release, resume; twice (ALT scores noise well above nominal frames)
        frames = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
        for k in range(150):  # OOD frames at about 60 Hz (the sim's own come at 30 Hz) until the stop
            probe.publish_image(FRONT, frames[k % len(frames)])
            probe.publish_image(WRIST, frames[k % len(frames)])
            if probe.stopped():
                break
            time.sleep(1 / 60)
        assert probe.stopped(), f"no stop\n{describe(group)}"
        time.sleep(0.5)  # the policy holds from the tick after the flag arrives
        t_hold = time.monotonic()
        assert probe.wait_for(lambda: len(commands_after(probe, t_hold)) >= 10, 10.0)
        held = commands_after(probe, t_hold)
        # a new sim episode moves the arm to its start, and the held command with it
        if not [t for t, _ in probe.snapshot("episodes") if t >= t_hold - 0.1]:
            assert all(np.array_equal(q, held[0]) for q in held), "the commanded joints moved while stopped"
        release_monitor(probe)
        t0 = time.monotonic()

        def moving():
            after = commands_after(probe, t0)
            return any(not np.array_equal(a, b) for a, b in zip(after, after[1:]))

        # the first plan after the release may take a while on a loaded machine (the runner holds
        # through the underrun): wait for motion, not for a fixed number of commands
        assert probe.wait_for(moving, 20.0), (
            f"motion did not resume: {probe.diagnostic('fastdp_policy: controller')}\n"
            f"monitor: {probe.diagnostic('fastdp_ood_monitor')}\n{describe(group)}")


def test_wrong_encoding_and_size_are_reported_then_clear(sim_graph):
    """Bug 5: the sensors diagnostic kept old conversion errors as ERROR long after."""
    group, probe = sim_graph
    for size, encoding, pixel_bytes, expected in ((96, "mono16", 2, "not supported"), (48, "rgb8", 3, "48x48")):
        t0 = time.monotonic()
        for _ in range(20):
            probe.publish_raw_image(FRONT, size, size, encoding, bytes(size * size * pixel_bytes))
            time.sleep(0.02)

        def sensors(level):
            status = probe.diagnostic("fastdp_policy: sensors")
            return status is not None and status[0] > t0 + 0.5 and status[1] in level

        assert probe.wait_for(lambda: sensors(("ERROR",)), 10.0), probe.diagnostic("fastdp_policy: sensors")
        assert expected in probe.diagnostic("fastdp_policy: sensors")[2]
        t0 = time.monotonic()  # healthy frames from the sim only from here on
        assert probe.wait_for(lambda: sensors(("OK", "WARN")), 30.0), probe.diagnostic("fastdp_policy: sensors")
        assert expected in " ".join(probe.diagnostic("fastdp_policy: sensors")[3].values())  # kept as history
    assert all(n.alive() for n in group.nodes.values()), describe(group)


def test_nan_joint_positions_hold_the_arm_with_a_diagnostic(sim_graph):
    group, probe = sim_graph
    release_monitor(probe)
    names = SIM_ARM_JOINTS + SIM_FINGER_JOINTS

    def controller_stopped():
        status = probe.diagnostic("fastdp_policy: controller")
        return status is not None and status[1] == "ERROR" and "NaN" in status[2]

    def nan_until_stopped(timeout: float) -> bool:
        # the sim's own joint states keep arriving on the same best-effort topic: a NaN message can
        # be superseded before a control tick reads it, so send NaN until the controller stops
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe.publish_joint_state("/joint_states", names, [float("nan")] * 9)
            if probe.wait_for(controller_stopped, 0.02):
                return True
        return controller_stopped()

    for _ in range(3):  # a new sim episode restarts the policy from the new state: try again then
        assert nan_until_stopped(10.0), probe.diagnostic("fastdp_policy: controller")
        t_hold = time.monotonic()
        time.sleep(0.4)
        held = commands_after(probe, t_hold)
        if not [t for t, _ in probe.snapshot("episodes") if t >= t_hold - 0.5]:
            break
    assert len(held) >= 5
    assert all(np.array_equal(q, held[0]) and np.all(np.isfinite(q)) for q in held), "moved while stopped"
    ok, message = probe.trigger("/fastdp_policy/reset")
    assert ok, message
    assert all(n.alive() for n in group.nodes.values()), describe(group)


def test_wrong_joint_names_are_refused_with_a_diagnostic(sim_graph):
    group, probe = sim_graph
    t0 = time.monotonic()
    for _ in range(10):
        probe.publish_joint_state("/joint_states", [f"fr3_joint{i}" for i in range(1, 8)], np.zeros(7))
        time.sleep(0.02)

    def named():
        status = probe.diagnostic("fastdp_policy: sensors")
        return status is not None and status[0] > t0 and "panda_joint1" in " ".join(status[3].values())

    assert probe.wait_for(named, 10.0), probe.diagnostic("fastdp_policy: sensors")
    assert all(n.alive() for n in group.nodes.values()), describe(group)


def test_a_killed_policy_is_flagged_by_the_monitor(sim_graph):
    group, probe = sim_graph
    release_monitor(probe)
    group.nodes["fastdp_policy"].end(timeout=5.0, sig=signal.SIGKILL)
    assert probe.wait_for(lambda: probe.stopped() is True, 10.0), describe(group)
    assert probe.wait_for(lambda: "command stream paused" in monitor_stop_reasons(probe), 10.0)
    assert group.nodes["fastdp_sim"].alive() and group.nodes["fastdp_ood_monitor"].alive(), describe(group)


def test_a_killed_sim_is_flagged_as_silent_streams(sim_graph):
    group, probe = sim_graph
    group.nodes["fastdp_sim"].end(timeout=5.0, sig=signal.SIGKILL)
    assert probe.wait_for(lambda: "went silent" in monitor_stop_reasons(probe), 10.0), probe.diagnostic("fastdp_ood")
    assert group.nodes["fastdp_ood_monitor"].alive(), describe(group)


# ----------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM to each node"])
def test_clean_shutdown(domain, tmp_path, how):
    """Bug 4: Ctrl-C printed KeyboardInterrupt tracebacks, and the sim once published on a dead
    context. `ros2 launch` forwards the terminal's SIGINT, so each node gets it twice."""
    group, probe = start_sim_graph(domain, tmp_path)
    try:
        wait_commands(probe, group, n=10)
        # commands alone could come from another graph left on this domain: these nodes must be up
        ready = {"fastdp_sim": "starts", "fastdp_policy": "active:", "fastdp_ood_monitor": "monitoring with"}
        assert probe.wait_for(lambda: all(line in group.nodes[n].output() for n, line in ready.items()),
                              START_TIMEOUT), describe(group)
    finally:
        probe.close()

    def send():
        if how.startswith("SIGINT"):
            group.interrupt_group(signal.SIGINT)
            time.sleep(0.05)
            group.interrupt_group(signal.SIGINT)  # the launch's forwarded copy
        else:
            for node in group.nodes.values():
                node.send(signal.SIGTERM)

    codes = signal_and_collect(group, send)
    assert codes == {name: 0 for name in group.nodes}, describe(group)
    assert_no_traceback(group)


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0])
def test_a_signal_during_start_up_ends_a_node_quietly(domain, tmp_path, delay):
    """Ctrl-C right after `ros2 launch`: the nodes are still importing torch and their policy,
    before their own signal handling; they end with status 0 and no traceback (nodes/launcher.py).
    Several delays land in different imports (one inside torch's C++ init once aborted, -6)."""
    group = NodeGroup(domain, tmp_path)

    def send():
        for name in ("fastdp_policy", "fastdp_ood_monitor"):
            group.start(name, SIM_GRAPH[name], sim_launch_args(name))
        time.sleep(delay)  # inside the imports (a node needs seconds to be up)
        for node in group.nodes.values():
            node.send(signal.SIGINT)

    codes = signal_and_collect(group, send)
    assert codes == {name: 0 for name in group.nodes}, describe(group)
    assert_no_traceback(group)
