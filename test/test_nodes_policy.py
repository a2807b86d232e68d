"""The policy node's logic, driven through the same methods its rclpy callbacks call, with real
message objects (rosbags, Jazzy) and a fake clock: start-up, hot swap (refusals with reasons,
the running policy untouched), the stop flag, the Franka robot mode, episode resets,
diagnostics content, Cartesian commands."""

import json

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import kinematics, sensors
from fastdp_ros.nodes.catalog import PolicyCatalog
from fastdp_ros.nodes.parameters import POLICY_PARAMETERS, STREAM_TIMEOUT_FLOOR, defaults
from fastdp_ros.nodes.policy_logic import PolicyLogic, PolicyNodeConfig, parse_workspace
from fastdp_ros.policies import Policy, PolicySpec
from fastdp_ros.policies.base import policy_class, registered_policies
from fastdp_ros.robots import FR3

TS = get_typestore(Stores.ROS2_JAZZY)
RATE = 60.0
SPEC = PolicySpec(image_keys=("img_front",), image_shape=(8, 8, 3), lowdim_dims={"joint_pos": 7, "gripper": 1},
                  action_dim=8, dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4, robot="fr3")
ARM = FR3.joint_names()
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
Q0 = FR3.home_position


class MovePolicy(Policy):
    """Plans joint 1 moving at `speed` rad/s from where it is observed."""

    nfe = 0

    def __init__(self, spec, speed=0.2):
        super().__init__(spec)
        self.speed = speed

    @classmethod
    def from_model_dir(cls, path, **options):
        raise NotImplementedError

    def _encode(self, obs):
        return obs["joint_pos"][-1]

    def _act(self, obs):
        chunk = np.tile(np.r_[obs["joint_pos"][-1], obs["gripper"][-1]], (self.spec.horizon, 1))
        chunk[:, 0] += self.speed * self.spec.dt * np.arange(self.spec.horizon)
        return chunk


class Loader:
    """Model directory -> MovePolicy of the directory's spec; a directory named 'broken' fails
    to load (corrupt weights), as a real loader would after config.json parsed fine."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, **options):
        self.calls.append((path, options))
        if path.endswith("broken"):
            raise ModelFileError(f"{path}/model.safetensors is truncated")
        spec = PolicySpec.from_dict(json.loads((__import__("pathlib").Path(path) / "config.json").read_text())["spec"])
        return MovePolicy(spec, speed=-0.2 if path.endswith("reverse") else 0.2)


def write_model(root, name, spec=SPEC):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"policy_type": "move", "spec": spec.to_dict()}))
    return d


@pytest.fixture
def catalog(tmp_path):
    models = tmp_path / "models"
    for name in ("push_move", "push_reverse", "broken"):
        write_model(models, name)
    big = PolicySpec.from_dict({**SPEC.to_dict(), "image_shape": [16, 16, 3]})
    write_model(models, "push_bigimg", big)
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "policies.yaml"
    path.write_text("models_root: ../models\npolicies:\n  move: push_move\n  reverse:\n    model: push_reverse\n"
                    "    options: {steps: 3}\n  broken: broken\n  bigimg: push_bigimg\n  missing: push_never_built\n")
    return PolicyCatalog.from_file(path)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def params(**overrides):
    p = defaults(POLICY_PARAMETERS)
    p.update(robot_type="fr3", image_keys=["img_front"], image_topics=["/camera/front/image_raw"],
             control_rate=RATE, policy="move")
    p.update(overrides)
    return p


def make_logic(catalog, **overrides):
    clock = Clock()
    loader = Loader()
    logic = PolicyLogic(PolicyNodeConfig.from_params(params(**overrides)), catalog, loader=loader, clock=clock)
    return logic, clock, loader


def header(t):
    sec, nanosec = conv.seconds_to_sec_nanosec(t)
    return TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                           frame_id="")


def image_msg(t, size=8, value=100):
    msg = TS.types["sensor_msgs/msg/Image"](header=header(t), height=0, width=0, encoding="", is_bigendian=0, step=0,
                                            data=np.empty(0, np.uint8))
    conv.fill_image(msg, np.full((size, size, 3), value, np.uint8)[..., ::-1].copy(), "bgr8")
    return msg


def joint_msg(t, q, width=0.04, names=None):
    names = names or ARM + FINGERS
    return TS.types["sensor_msgs/msg/JointState"](header=header(t), name=names,
                                                  position=np.r_[q, width / 2, width / 2][:len(names)],
                                                  velocity=np.empty(0), effort=np.empty(0))


def feed(logic, t, q):
    assert logic.on_image("img_front", image_msg(t), t)
    assert logic.on_joint_state(joint_msg(t, q), t)


def run(logic, clock, q, ticks, wait=True):
    """`ticks` control periods: fresh sensors at the measured state `q` (the arm follows the
    commands exactly), one tick, inference finished before the next (lock-step)."""
    outs = []
    for _ in range(ticks):
        clock.t += 1.0 / RATE
        feed(logic, clock.t, q)
        out = logic.tick(clock.t)
        if out is not None:
            outs.append(out)
            q = out.q
        if wait and logic.runner is not None:
            logic.runner.wait_inference()
    return outs, q


@pytest.fixture
def running(catalog):
    logic, clock, loader = make_logic(catalog)
    logic.configure("move")
    logic.activate()
    outs, q = run(logic, clock, Q0, 30)
    assert outs and not outs[-1].held, outs[-1].reason
    yield logic, clock, loader, q
    logic.cleanup()


# ----------------------------------------------------------------------------- configuration


def test_config_validation():
    with pytest.raises(ConfigError, match="command_interface must be one of joint_trajectory, forward_command"):
        PolicyNodeConfig.from_params(params(command_interface="effort"))
    with pytest.raises(ConfigError, match="control_rate must be > 0"):
        PolicyNodeConfig.from_params(params(control_rate=0.0))
    with pytest.raises(ConfigError, match="unknown robot type 'ur5'"):
        PolicyNodeConfig.from_params(params(robot_type="ur5"))
    c = PolicyNodeConfig.from_params(params(command_interface="forward_command", trajectory_lead_ticks=3))
    assert c.command_topic == "/forward_position_controller/commands"
    assert c.trajectory_lead_s == pytest.approx(3 / RATE)
    assert c.base_frame == "fr3_link0"


def test_workspace_parameter():
    assert parse_workspace("none") is None
    from fastdp_ros.runtime.loop import SIM_WORKSPACE

    assert parse_workspace("sim") == SIM_WORKSPACE
    box = parse_workspace("0.2, -0.5, 0.0, 0.8, 0.5, 0.6")
    assert box.lower == (0.2, -0.5, 0.0) and box.upper == (0.8, 0.5, 0.6)
    with pytest.raises(ConfigError, match="six numbers"):
        parse_workspace("0.2,0.3")
    with pytest.raises(ConfigError, match="lower < upper"):
        parse_workspace("1,1,1,0,0,0")


def test_catalog_resolves_names_and_paths(catalog, tmp_path):
    entry = catalog.resolve("reverse")
    assert entry.path == (tmp_path / "models" / "push_reverse").resolve()
    assert entry.options == {"steps": 3} and entry.policy_type == "move"
    assert catalog.resolve(str(tmp_path / "models" / "push_move")).path.name == "push_move"
    with pytest.raises(ConfigError, match=r"unknown policy 'onedpp'; .*policies.yaml lists: bigimg, broken, missing, "
                                          r"move, reverse"):
        catalog.resolve("onedpp")
    with pytest.raises(ConfigError, match=r"policy 'missing' maps to .*push_never_built .* does not exist"):
        catalog.resolve("missing")
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ConfigError, match="config.json is missing"):
        catalog.resolve(str(tmp_path / "not_a_model"))


def test_shipped_policies_file_maps_every_policy_to_the_models_folder():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    catalog = PolicyCatalog.from_file(root / "config" / "policies.yaml")
    # every policy type this package registers can be started and hot-swapped by its name
    builtin = [name for name in registered_policies() if policy_class(name).__module__.startswith("fastdp_ros.")]
    assert set(builtin) <= set(catalog.names()) and "alt_ood" in catalog.names()
    for name in catalog.names():
        path, _ = catalog.policies[name]
        assert path.parent == (root / "models").resolve()
    assert catalog.policies["dp"][1] == {"sampler": "ddim", "steps": 10}


def test_configure_refuses_a_model_that_is_not_built(catalog):
    logic, _, _ = make_logic(catalog)
    with pytest.raises(ConfigError, match="does not exist"):
        logic.configure("missing")
    assert logic.runner is None


def test_configure_passes_options_and_model_dir_wins(catalog, tmp_path):
    logic, _, loader = make_logic(catalog)
    logic.configure("move", model_dir=str(tmp_path / "models" / "push_reverse"))
    path, options = loader.calls[-1]
    assert path.endswith("push_reverse") and options == {"device": "cpu"}
    logic.cleanup()
    logic.configure("reverse")
    assert loader.calls[-1][1] == {"device": "cpu", "steps": 3}
    logic.cleanup()


def test_replan_period_parameter(catalog):
    logic, _, _ = make_logic(catalog)
    logic.configure("move")
    assert logic.runner.timing.replan_s == pytest.approx(SPEC.n_action_steps * SPEC.dt)  # -1: the model's chunk
    logic.cleanup()
    for period in (0.0, 0.25):
        logic, _, _ = make_logic(catalog, replan_period=period)
        logic.configure("move")
        assert logic.runner.timing.replan_s == pytest.approx(period)
        logic.cleanup()


# ----------------------------------------------------------------------------- start-up


def test_no_command_until_every_stream_has_arrived(catalog):
    logic, clock, _ = make_logic(catalog)
    logic.configure("move")
    assert logic.tick(clock.t) is None  # not active
    logic.activate()
    assert logic.tick(clock.t) is None
    assert logic.waiting_for(clock.t) == ["joint_pos", "img_front", "gripper"]
    logic.on_joint_state(joint_msg(clock.t, Q0), clock.t)
    assert logic.tick(clock.t) is None and logic.waiting_for(clock.t) == ["img_front"]
    logic.on_image("img_front", image_msg(clock.t), clock.t)
    out = logic.tick(clock.t)
    np.testing.assert_allclose(out.q, Q0)  # the first command holds the measured state
    assert out.held and out.gripper == pytest.approx(0.04)
    logic.cleanup()


def test_missing_joints_give_an_error_and_no_command(catalog):
    logic, clock, _ = make_logic(catalog)
    logic.configure("move")
    logic.activate()
    panda_names = [n.replace("fr3", "panda") for n in ARM + FINGERS]
    for _ in range(5):
        clock.t += 1 / RATE
        logic.on_image("img_front", image_msg(clock.t), clock.t)
        assert not logic.on_joint_state(joint_msg(clock.t, Q0, names=panda_names), clock.t)
        assert logic.tick(clock.t) is None
    sensors = {e.name: e for e in logic.diagnostics(clock.t)}["fastdp_policy: sensors"]
    assert sensors.level == "ERROR"
    assert "JointState lacks joints ['fr3_joint1'" in sensors.message
    assert sensors.values["joint_state errors"] == "5"
    logic.cleanup()


def test_wrong_image_encoding_or_size_is_reported_not_used(catalog):
    logic, clock, _ = make_logic(catalog)
    logic.configure("move")
    logic.activate()
    assert not logic.on_image("img_front", image_msg(clock.t, size=16), clock.t)
    bad = image_msg(clock.t)
    bad.encoding = "yuv422"
    assert not logic.on_image("img_front", bad, clock.t)
    report = logic.intake.report(clock.t)
    assert report["/camera/front/image_raw errors"] == "2"
    assert "not supported" in report["/camera/front/image_raw last error"]
    logic.on_joint_state(joint_msg(clock.t, Q0), clock.t)
    assert logic.tick(clock.t) is None  # no usable frame yet
    logic.cleanup()


def sensors_status(logic, now):
    return next(e for e in logic.diagnostics(now) if e.name.endswith("sensors"))


def test_conversion_errors_clear_once_the_streams_are_healthy_again(running):
    """Bug: the sensors diagnostic kept old conversion errors as ERROR minutes after the fix."""
    logic, clock, _, q = running
    bad = image_msg(clock.t)
    bad.encoding = "yuv422"
    assert not logic.on_image("img_front", bad, clock.t)
    assert sensors_status(logic, clock.t).level == "ERROR"
    _, q = run(logic, clock, q, 6)  # good frames again, but the error is recent: still shown
    assert sensors_status(logic, clock.t).level == "ERROR"
    _, q = run(logic, clock, q, int(RATE * (sensors.ERROR_HOLD_S + 0.5)))
    status = sensors_status(logic, clock.t)
    assert status.level == "OK", status.message
    assert "not supported" in status.values["/camera/front/image_raw last error"]  # kept as history
    assert float(status.values["/camera/front/image_raw last error age_s"]) > sensors.ERROR_HOLD_S
    assert not logic.on_image("img_front", bad, clock.t)  # failing now: an error again at once
    assert sensors_status(logic, clock.t).level == "ERROR"


def test_follows_the_policy(running):
    logic, clock, _, q = running
    outs, q2 = run(logic, clock, q, 30)
    assert not any(o.stopped for o in outs)
    assert q2[0] > q[0] + 0.05  # joint 1 moves the way the policy plans
    np.testing.assert_allclose(q2[1:], q[1:], atol=1e-9)


# ----------------------------------------------------------------------------- hot swap


def test_unknown_or_missing_policy_is_refused_and_the_running_one_untouched(running):
    logic, clock, _, q = running
    policy = logic.runner.policy
    ok, reason = logic.request_policy("alt")
    assert not ok and "unknown policy 'alt'" in reason and "lists: bigimg, broken, missing, move, reverse" in reason
    ok, reason = logic.request_policy("missing")
    assert not ok and "does not exist" in reason
    ok, reason = logic.request_policy("bigimg")
    assert not ok and "expects 'img_front' of shape (16, 16, 3)" in reason
    assert logic.runner.policy is policy and logic.runner.swap is None
    outs, _ = run(logic, clock, q, 10)
    assert not any(o.held for o in outs)


def test_swap_to_a_valid_policy(running):
    logic, clock, loader, q = running
    ok, reason = logic.request_policy("reverse")
    assert ok, reason
    assert loader.calls[-1][1] == {"device": "cpu", "steps": 3}
    assert logic.runner.swap.done.wait(30)
    outs, q2 = run(logic, clock, q, 30)
    outcome = None
    while outcome is None:
        outcome = logic.poll_swap()
    assert outcome.ok and outcome.revert_to is None and "reverse" in outcome.message
    assert logic.active_value == "reverse" and logic.runner.policy_name.endswith("push_reverse")
    assert not any(o.stopped for o in outs)
    assert q2[0] < q[0]  # the new policy drives joint 1 back
    assert logic.poll_swap() is None  # reported once
    # setting the parameter to what runs is accepted without a reload
    n = len(loader.calls)
    assert logic.request_policy("reverse")[0] and len(loader.calls) == n


def test_failed_load_keeps_the_old_policy_and_reverts_the_parameter(running):
    logic, clock, _, q = running
    policy = logic.runner.policy
    ok, reason = logic.request_policy("broken")
    assert ok, reason  # config.json is fine: the weights fail in the background
    assert logic.runner.swap.done.wait(30)
    run(logic, clock, q, 2)
    outcome = logic.poll_swap()
    assert not outcome.ok and "model.safetensors is truncated" in outcome.message
    assert outcome.revert_to == "move"
    assert logic.runner.policy is policy
    assert logic.request_policy(outcome.revert_to) == (True, f"{logic.active_entry.path} is already running")


def test_second_swap_while_loading_is_refused(running):
    logic, _, loader, _ = running
    import threading

    gate = threading.Event()
    slow = logic.load

    def blocking(path, **options):
        gate.wait(30)
        return slow(path, **options)

    logic.runner._load = blocking
    assert logic.request_policy("reverse")[0]
    ok, reason = logic.request_policy("move")
    gate.set()
    assert not ok and "still loading" in reason


# ----------------------------------------------------------------------------- stops


def settles(outs, n=10):
    """The last `n` commands stand still (braked to a halt)."""
    qs = np.array([o.q for o in outs[-n:]])
    return np.allclose(qs, qs[-1], atol=1e-12)


def test_stop_flag_holds_position_and_its_release_resumes(running):
    logic, clock, _, q = running
    logic.on_stop_flag(True, clock.t)
    outs, q_held = run(logic, clock, q, 60)
    assert all(o.stopped and o.held for o in outs)
    assert "OOD monitor's stop flag (/fastdp/stop)" in outs[-1].reason
    assert settles(outs)
    logic.on_stop_flag(False, clock.t)
    outs, q2 = run(logic, clock, q_held, 30)
    assert not outs[-1].stopped and q2[0] > q_held[0]


def test_stop_flag_release_does_not_release_other_stops(running):
    logic, clock, _, q = running
    logic.on_stop_flag(True, clock.t)
    logic.on_robot_state(4, ["joint_reflex"], clock.t)
    logic.on_stop_flag(False, clock.t)
    outs, _ = run(logic, clock, q, 5)
    assert all(o.stopped for o in outs)
    assert "REFLEX" in "; ".join(e.reason for e in logic.runner.latch.active)


def test_robot_reflex_holds_until_recovered_and_reset(running):
    logic, clock, _, q = running
    logic.on_robot_state(2, [], clock.t)  # MOVE: nothing happens
    assert not logic.runner.stopped
    logic.on_robot_state(4, ["joint_reflex", "joint_velocity_violation"], clock.t)
    outs, q_held = run(logic, clock, q, 60)
    assert all(o.stopped for o in outs) and settles(outs)
    assert outs[-1].reason == "Franka robot mode REFLEX (current errors: joint_reflex, joint_velocity_violation)"
    robot = {e.name: e for e in logic.diagnostics(clock.t)}["fastdp_policy: franka robot"]
    assert robot.level == "ERROR" and robot.values["current_errors"] == "joint_reflex, joint_velocity_violation"
    ok, message = logic.reset(clock.t)
    assert not ok and "still in REFLEX" in message
    logic.on_robot_state(1, [], clock.t)  # IDLE after error recovery
    # the arm moved during the reflex: commands restart from the measured state, not the held one
    q_moved = q_held + 0.01
    logic.on_joint_state(joint_msg(clock.t, q_moved), clock.t)
    ok, message = logic.reset(clock.t)
    assert ok and "Franka robot mode REFLEX" in message
    outs, q2 = run(logic, clock, q_moved, 30)
    np.testing.assert_allclose(outs[0].q, q_moved)
    assert not outs[-1].stopped and q2[0] > q_moved[0]


def test_user_stopped_mode_holds(running):
    logic, clock, _, q = running
    logic.on_robot_state(5, [], clock.t)
    outs, _ = run(logic, clock, q, 3)
    assert outs[-1].stopped and "USER_STOPPED" in outs[-1].reason


def test_reset_keeps_holding_while_the_monitor_flag_stands(running):
    logic, clock, _, q = running
    logic.on_stop_flag(True, clock.t)
    ok, message = logic.reset(clock.t)
    assert ok and "still raised" in message
    outs, _ = run(logic, clock, q, 3)
    assert all(o.stopped for o in outs)


def test_stale_camera_stops_and_reset_restarts(running):
    logic, clock, _, q = running
    for _ in range(int(RATE * (STREAM_TIMEOUT_FLOOR + 0.1))):  # joint states keep coming, the camera does not
        clock.t += 1 / RATE
        logic.on_joint_state(joint_msg(clock.t, q), clock.t)
        out = logic.tick(clock.t)
        q = out.q
    assert out.stopped and "stream 'img_front' is stale" in out.reason
    ok, _ = logic.reset(clock.t)
    assert ok
    outs, _ = run(logic, clock, q, 30)
    assert not outs[-1].stopped


# ----------------------------------------------------------------------------- simulation episodes


def test_episode_reset_restarts_from_the_new_state(running):
    logic, clock, _, q = running
    clock.t += 1 / RATE
    logic.on_episode_reset(clock.t, clock.t)
    q_new = Q0 + np.r_[0.3, np.zeros(6)]
    feed(logic, clock.t, q_new)
    out = logic.tick(clock.t)
    np.testing.assert_allclose(out.q, q_new)  # no pull back towards the old episode's pose
    outs, q2 = run(logic, clock, q_new, 30)
    assert not outs[-1].stopped and q2[0] > q_new[0]


# ----------------------------------------------------------------------------- commands and diagnostics


def test_cartesian_commands_are_the_tcp_pose_of_the_joint_command(catalog):
    logic, clock, _ = make_logic(catalog, command_interface="cartesian_pose", tcp_offset=0.1034)
    logic.configure("move")
    logic.activate()
    outs, _ = run(logic, clock, Q0, 20)
    for out in outs:
        np.testing.assert_allclose(out.pose, kinematics.tcp_pose(out.q, 0.1034))
    assert logic.config.command_topic == "/cartesian_impedance_controller/target_pose"
    logic.cleanup()


def test_workspace_box_holds_targets_outside(catalog):
    pos, _ = kinematics.tcp_transform(Q0)
    box = ",".join(str(v) for v in (*(pos - 0.5), *(pos + [0.5, 0.5, 0.5])))
    logic, clock, _ = make_logic(catalog, workspace=box)
    logic.configure("move")
    logic.activate()
    outs, _ = run(logic, clock, Q0, 30)
    assert not outs[-1].held
    logic.cleanup()
    tight = ",".join(str(v) for v in (*(pos - 1e-4), *(pos + 1e-4)))
    logic, clock, _ = make_logic(catalog, workspace=tight)
    logic.configure("move")
    logic.activate()
    outs, _ = run(logic, clock, Q0, 30)
    assert outs[-1].held and "outside the workspace box" in outs[-1].reason
    logic.cleanup()


def test_diagnostics_report_timing_and_state(running):
    logic, clock, _, q = running
    run(logic, clock, q, 30)
    entries = {e.name: e for e in logic.diagnostics(clock.t)}
    ctrl = entries["fastdp_policy: controller"]
    assert ctrl.level == "OK" and ctrl.message == "commanding move"
    v = ctrl.values
    for key in ("inference_p50_ms", "inference_p99_ms", "deadline_ms", "deadline_misses", "tick_work_p50_ms",
                "tick_work_max_ms", "command_age_ms", "held_ticks", "stopped_ticks", "swap", "backend"):
        assert key in v
    assert float(v["measured_rate_hz"]) == pytest.approx(RATE, abs=0.01)  # two decimals
    assert float(v["max_tick_gap_ms"]) == pytest.approx(1e3 / RATE, abs=0.01)
    assert v["deadline_ms"] == "100.00" and v["stop_reasons"] == "-"
    sensors = entries["fastdp_policy: sensors"]
    assert sensors.level == "OK" and float(sensors.values["img_front age_ms"]) == 0.0
    assert "fastdp_policy: franka robot" not in entries  # no robot state seen
    logic.on_stop_flag(True, clock.t)
    run(logic, clock, q, 1)
    ctrl = {e.name: e for e in logic.diagnostics(clock.t)}["fastdp_policy: controller"]
    assert ctrl.level == "ERROR" and ctrl.message.startswith("STOP: the OOD monitor's stop flag")


def test_deactivated_node_sends_nothing_and_restarts_from_the_measured_state(running):
    logic, clock, _, q = running
    logic.deactivate()
    clock.t += 1 / RATE
    feed(logic, clock.t, q)
    assert logic.tick(clock.t) is None
    assert {e.name: e for e in logic.diagnostics(clock.t)}["fastdp_policy: controller"].message == "inactive"
    clock.t += 5.0  # the arm was moved while inactive
    q_moved = q + 0.05
    logic.activate()
    outs, q2 = run(logic, clock, q_moved, 30)
    np.testing.assert_allclose(outs[0].q, q_moved)
    assert not any(o.stopped for o in outs) and q2[0] > q_moved[0]


# ----------------------------------------------------------------------------- hot swap stalls (bug 3)


def test_configure_imports_what_a_swap_would_import_first(catalog, monkeypatch):
    """A swap's first import of faiss held the GIL 50-110 ms and stalled the control timer:
    configure imports it (and every policy module) before the arm moves."""
    import fastdp_ros.nodes.policy_logic as policy_logic

    calls = []
    monkeypatch.setattr(policy_logic, "preload_swap_dependencies", lambda: calls.append(1))
    logic, _, _ = make_logic(catalog)
    logic.configure("move")
    assert calls == [1]
    logic.cleanup()


def test_preloading_imports_faiss_and_the_policy_modules():
    import subprocess
    import sys

    code = ("import sys; from fastdp_ros.nodes.policy_logic import preload_swap_dependencies; "
            "assert 'faiss' not in sys.modules; preload_swap_dependencies(); "
            "import pkgutil, fastdp_ros.policies as package; "
            "modules = [f'fastdp_ros.policies.{m.name}' for m in pkgutil.iter_modules(package.__path__)]; "
            "missing = [m for m in ['faiss', *modules] if m not in sys.modules]; "
            "assert len(modules) >= 6 and not missing, missing")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
