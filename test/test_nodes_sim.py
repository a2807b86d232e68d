"""The simulation node's logic (the MuJoCo task as a robot) and the nodes' Franka kinematics,
checked against the simulation's own."""

import threading

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from fastdp_ros.errors import ConfigError, RendererError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import kinematics
from fastdp_ros.nodes.parameters import SIM_PARAMETERS, SIM_TCP_OFFSET, defaults
from fastdp_ros.nodes.sim_logic import SIM_ARM_JOINTS, SIM_FINGER_JOINTS, SimConfig, SimLogic, TrajectoryFollower
from fastdp_ros.robots import PANDA
from fastdp_ros.sim import make_env
from fastdp_ros.sim.scene import TCP_Z_HAND

TS = get_typestore(Stores.ROS2_JAZZY)
T0 = 100.0


def sim_params(**overrides):
    p = defaults(SIM_PARAMETERS)
    p.update(cameras=[], image_topics=[], task="reach")
    p.update(overrides)
    return p


@pytest.fixture
def sim():
    env = make_env("reach", render=False, time_limit=30.0)
    logic = SimLogic(SimConfig.from_params(sim_params()), env=env)
    logic.start(T0)
    yield logic
    logic.close()


def run(logic, seconds, t, period=0.01):
    steps = []
    for _ in range(int(round(seconds / period))):
        t += period
        steps.append(logic.step(t))
    return steps, t


def header(t=0.0):
    sec, nanosec = conv.seconds_to_sec_nanosec(t)
    return TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                           frame_id="")


def forward_msg(q):
    layout = TS.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    msg = TS.types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.empty(0))
    conv.fill_float64_array(msg, q)
    return msg


def trajectory_msg(q, lead_s):
    msg = TS.types["trajectory_msgs/msg/JointTrajectory"](header=header(), joint_names=[], points=[])
    point = TS.types["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.empty(0), velocities=np.empty(0), accelerations=np.empty(0), effort=np.empty(0),
        time_from_start=TS.types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
    conv.fill_joint_trajectory(msg, list(reversed(SIM_ARM_JOINTS)), np.asarray(q)[::-1], lead_s, point)
    return msg


# ----------------------------------------------------------------------------- kinematics


def test_franka_kinematics_match_the_simulation():
    env = make_env("reach", render=False)
    try:
        rng = np.random.default_rng(1)
        for _ in range(25):
            q = rng.uniform(PANDA.lower, PANDA.upper)
            pos, rot = env.sim.fk(q)
            pos2, rot2 = kinematics.tcp_transform(q, TCP_Z_HAND)
            np.testing.assert_allclose(pos2, pos, atol=1e-9)
            np.testing.assert_allclose(rot2, rot, atol=1e-9)
            env.sim.reset(q_arm=q)
            ref = kinematics.mat_to_quat(kinematics.tcp_transform(PANDA.home_position, TCP_Z_HAND)[1])
            np.testing.assert_allclose(kinematics.tcp_pose(q, TCP_Z_HAND, ref), env.sim.tcp_pose(), atol=1e-9)
    finally:
        env.close()
    assert SIM_TCP_OFFSET == TCP_Z_HAND


def test_inverse_kinematics_round_trip():
    rng = np.random.default_rng(2)
    for _ in range(10):
        q_goal = np.clip(PANDA.home_position + rng.normal(0, 0.3, 7), PANDA.lower, PANDA.upper)
        pos, rot = kinematics.tcp_transform(q_goal)
        q, residual = kinematics.solve_ik(pos, kinematics.mat_to_quat(rot), PANDA.home_position, PANDA.lower,
                                          PANDA.upper)
        assert residual < 1e-5
        pos2, rot2 = kinematics.tcp_transform(q)
        np.testing.assert_allclose(pos2, pos, atol=1e-5)
        np.testing.assert_allclose(rot2, rot, atol=1e-5)


# ----------------------------------------------------------------------------- configuration


def test_sim_config_validation():
    with pytest.raises(ConfigError, match="one topic per camera"):
        SimConfig.from_params(sim_params(cameras=["front"], image_topics=[]))
    with pytest.raises(ConfigError, match="image_encoding must be one of"):
        SimConfig.from_params(sim_params(image_encoding="jpeg"))
    with pytest.raises(ConfigError, match="camera_rate must be > 0 Hz"):
        SimConfig.from_params(sim_params(camera_rate=0.0))


def test_trajectory_follower_interpolates_and_holds():
    f = TrajectoryFollower(10.0, [0.5, 1.0], [[1.0] * 7, [3.0] * 7], np.zeros(7))
    np.testing.assert_allclose(f.sample(9.0), 0.0)  # before the start: where the command was
    np.testing.assert_allclose(f.sample(10.25), 0.5)
    np.testing.assert_allclose(f.sample(10.75), 2.0)
    np.testing.assert_allclose(f.sample(12.0), 3.0)  # after the last point: hold it
    np.testing.assert_allclose(f.first_target, 1.0)
    with pytest.raises(ConfigError, match="increasing"):
        TrajectoryFollower(0.0, [1.0, 0.5], [[0.0] * 7, [0.0] * 7], np.zeros(7))


# ----------------------------------------------------------------------------- the simulated robot


def test_joint_states_at_their_rate_with_fingers(sim):
    steps, _ = run(sim, 0.5, T0)
    samples = [s for step in steps for s in step.joint_states]
    assert len(samples) == pytest.approx(50, abs=1)  # 100 Hz
    stamps = np.array([s.stamp for s in samples])
    np.testing.assert_allclose(np.diff(stamps), 0.01, atol=1e-9)  # stamped at their physics instants
    s = samples[-1]
    assert s.names == SIM_ARM_JOINTS + SIM_FINGER_JOINTS
    assert s.positions[7] == s.positions[8] == pytest.approx(s.width / 2)
    msg = TS.types["sensor_msgs/msg/JointState"](header=header(), name=[], position=np.empty(0),
                                                 velocity=np.empty(0), effort=np.empty(0))
    conv.fill_joint_state(msg, s.names, s.positions, s.stamp)
    back = TS.deserialize_cdr(TS.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    np.testing.assert_allclose(conv.joint_positions(back, PANDA.joint_names()), s.q)


def test_forward_command_moves_the_arm(sim):
    q0 = sim.env.sim.joint_positions()
    target = q0 + np.r_[0.2, np.zeros(6)]
    assert sim.on_forward_command(forward_msg(target), T0)
    run(sim, 2.0, T0)
    np.testing.assert_allclose(sim.env.sim.joint_positions(), target, atol=0.02)
    layout = TS.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    assert not sim.on_forward_command(TS.types["std_msgs/msg/Float64MultiArray"](layout=layout,
                                                                                 data=np.zeros(6)), T0)
    assert sim.counts["rejected_commands"] == 1


def test_joint_trajectory_is_followed_in_time(sim):
    q0 = sim.env.sim.joint_positions()
    target = q0 + np.r_[0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0]
    assert sim.on_joint_trajectory(trajectory_msg(target, 1.0), T0)  # stamp 0: starts now
    np.testing.assert_allclose(sim._follower.sample(T0 + 0.5), (q0 + target) / 2)
    run(sim, 2.0, T0)
    np.testing.assert_allclose(sim.env.sim.joint_positions(), target, atol=0.02)


def test_pose_command_reaches_the_pose(sim):
    q0 = sim.env.sim.joint_positions()
    goal = q0 + np.r_[0.15, -0.1, 0.0, 0.1, 0.0, 0.0, 0.0]
    pos, rot = kinematics.tcp_transform(goal, SIM_TCP_OFFSET)
    t = TS.types
    msg = t["geometry_msgs/msg/PoseStamped"](header=header(), pose=t["geometry_msgs/msg/Pose"](
        position=t["geometry_msgs/msg/Point"](x=0, y=0, z=0),
        orientation=t["geometry_msgs/msg/Quaternion"](x=0, y=0, z=0, w=1)))
    conv.fill_pose_stamped(msg, pos, kinematics.mat_to_quat(rot), T0, "panda_link0")
    assert sim.on_target_pose(msg, T0)
    run(sim, 2.0, T0)
    np.testing.assert_allclose(sim.env.sim.tcp_position(), pos, atol=5e-3)
    assert sim.counts["unreachable_poses"] == 0


def test_episode_reset_gates_old_commands():
    env = make_env("reach", render=False, time_limit=0.2)
    logic = SimLogic(SimConfig.from_params(sim_params(episodes=3)), env=env)
    try:
        first = logic.start(T0)
        assert (first.episode, first.seed) == (1, 1_000_000)
        steps, t = run(logic, 0.3, T0)
        events = [s.episode for s in steps if s.episode is not None]
        assert len(events) == 1 and events[0].episode == 2 and events[0].seed == 1_000_001
        assert logic.results[0]["success"] is False
        start = env.sim.joint_positions()
        old = start + 0.3  # a command of the previous episode
        assert not logic.on_forward_command(forward_msg(old), t)
        assert not logic.on_gripper_command(0.0, t)
        assert logic.counts["ignored_commands"] == 2
        assert logic.on_forward_command(forward_msg(start), t)  # the policy restarted from the new state
        assert logic.on_gripper_command(0.02, t)
        steps, t = run(logic, 0.5, t)
        assert steps[-1].done and len(logic.results) == 3
        assert logic.summary()["episodes"] == 3
    finally:
        logic.close()


def test_camera_frames_in_the_configured_encoding():
    try:
        env = make_env("reach", image_size=32, cameras=("front",), render=True)
    except RendererError as err:
        pytest.skip(f"offscreen renderer unavailable on this machine: {err}")
    params = sim_params(cameras=["front"], image_topics=["/camera/front/image_raw"], image_size=32,
                        image_encoding="bgr8")
    logic = SimLogic(SimConfig.from_params(params), env=env)
    try:
        logic.start(T0)
        steps, _ = run(logic, 0.5, T0)
        frames = [f for s in steps for f in s.images]
        assert len(frames) == pytest.approx(15, abs=1)  # 30 frames/s
        camera, stamp, rgb = frames[-1]
        assert camera == "front" and rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
        msg = TS.types["sensor_msgs/msg/Image"](header=header(stamp), height=0, width=0, encoding="",
                                                is_bigendian=0, step=0, data=np.empty(0, np.uint8))
        conv.fill_image(msg, logic.image_message_pixels(rgb), "bgr8")
        np.testing.assert_array_equal(conv.image_to_rgb(msg, (32, 32, 3)), rgb)
    finally:
        logic.close()


def test_rendering_from_another_thread_is_refused_with_the_reason():
    """Bug 1's cause, without ROS: an executor pool thread rendering with the context the main
    thread made current. The error names the threads, not a missing EGL installation."""
    try:
        env = make_env("reach", image_size=32, cameras=("front",), render=True)
    except RendererError as err:
        pytest.skip(f"offscreen renderer unavailable on this machine: {err}")
    try:
        env.reset(seed=1)
        renderer = env.sim.renderer(32)
        assert renderer.render(env.sim.data, "front").shape == (32, 32, 3)
        errors = []

        def render_elsewhere():
            try:
                renderer.render(env.sim.data, "front")
            except RendererError as err:
                errors.append(str(err))

        worker = threading.Thread(target=render_elsewhere, name="pool-thread")
        worker.start()
        worker.join()
        assert len(errors) == 1 and "'pool-thread'" in errors[0] and "render on that thread" in errors[0]
        assert "apt-get" not in errors[0]
        assert renderer.render(env.sim.data, "front").shape == (32, 32, 3)  # the owner still renders
    finally:
        env.close()
