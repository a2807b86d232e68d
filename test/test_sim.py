"""Tests of the MuJoCo simulation layer (fastdp_ros.sim): kinematics, limits, tasks, experts,
rendering and its error paths. Run from the repository root: python -m pytest test/test_sim.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.errors import ConfigError, FastDPError, RendererError
from fastdp_ros.robots import PANDA
from fastdp_ros.sim import (
    ARM_JOINT_OFFSET,
    STEP_COST,
    TASKS,
    FrankaSim,
    SceneConfig,
    evaluate_expert,
    make_env,
    make_expert,
    run_expert_episode,
)

import mujoco  # noqa: E402  (after fastdp_ros.sim on purpose)


# --------------------------------------------------------------------------- helpers


def _quat_mat(q):
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# The real Panda (franka_description): each joint's frame relative to its parent, then a
# rotation about the joint's z axis; the flange is 0.107 m along link7's z.
_REAL_PANDA_CHAIN = (
    ((0.0, 0.0, 0.333), (1, 0, 0, 0)),
    ((0.0, 0.0, 0.0), (1, -1, 0, 0)),
    ((0.0, -0.316, 0.0), (1, 1, 0, 0)),
    ((0.0825, 0.0, 0.0), (1, 1, 0, 0)),
    ((-0.0825, 0.384, 0.0), (1, -1, 0, 0)),
    ((0.0, 0.0, 0.0), (1, 1, 0, 0)),
    ((0.088, 0.0, 0.0), (1, 1, 0, 0)),
)


def real_panda_flange(q):
    """Flange pose of the real Panda at joint angles q (independent of MuJoCo)."""
    rot, pos = np.eye(3), np.zeros(3)
    for (p, quat), qi in zip(_REAL_PANDA_CHAIN, q):
        pos = pos + rot @ np.asarray(p)
        rot = rot @ _quat_mat(quat) @ _rot_z(qi)
    return pos + rot @ np.array([0.0, 0.0, 0.107]), rot


def _renderer_or_skip(env_kwargs=None):
    try:
        return make_env("push", **(env_kwargs or {}))
    except RendererError as err:
        pytest.skip(f"offscreen renderer unavailable on this machine: {err}")


@pytest.fixture(scope="module")
def sim():
    s = FrankaSim(SceneConfig())
    yield s
    s.close()


# --------------------------------------------------------------------------- kinematics


def test_joint_offset_matches_real_panda_kinematics(sim):
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(PANDA.lower, PANDA.upper)
        sim.reset(q_arm=q)
        pos, rot = sim.body_pose("panda_link7")
        flange_sim = pos + rot @ np.array([0.0, 0.0, 0.107])
        flange_real, rot_real = real_panda_flange(q)
        np.testing.assert_allclose(flange_sim, flange_real, atol=1e-9)
        np.testing.assert_allclose(rot, rot_real, atol=1e-9)
        # The joint angles read back in real coordinates; the MuJoCo qpos is offset.
        np.testing.assert_allclose(sim.joint_positions(), q, atol=1e-12)
        np.testing.assert_allclose(sim.data.qpos[:7], q - ARM_JOINT_OFFSET, atol=1e-12)


def test_home_pose_points_the_gripper_down(sim):
    sim.reset()
    pos, rot = sim.fk(PANDA.home_position)
    flange, _ = real_panda_flange(PANDA.home_position)
    np.testing.assert_allclose(rot[:, 2], [0, 0, -1], atol=1e-6)  # TCP z axis points down
    assert pos[2] < flange[2] - 0.1  # the TCP is between the fingertips, below the flange
    np.testing.assert_allclose(sim.tcp_pose()[:3], pos, atol=1e-12)


def test_joint_names_and_limits_in_model(sim):
    m = sim.model
    names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, i) for i in range(7)]
    assert names == PANDA.joint_names()
    np.testing.assert_allclose(m.jnt_range[:7, 0] + ARM_JOINT_OFFSET, PANDA.lower, atol=1e-12)
    np.testing.assert_allclose(m.jnt_range[:7, 1] + ARM_JOINT_OFFSET, PANDA.upper, atol=1e-12)
    np.testing.assert_allclose(m.actuator_ctrlrange[:7], m.jnt_range[:7], atol=1e-12)


def test_jacobian_matches_finite_differences(sim):
    q = PANDA.home_position + 0.1
    p0, _, jac = sim.tcp_jacobian(q)
    eps = 1e-6
    for j in range(7):
        dq = np.zeros(7)
        dq[j] = eps
        p1, _ = sim.fk(q + dq)
        np.testing.assert_allclose((p1 - p0) / eps, jac[:3, j], atol=1e-4)


# --------------------------------------------------------------------------- limits


def test_commands_outside_limits_are_clipped(sim):
    sim.reset()
    q_cmd, width = sim.set_command(PANDA.upper + 1.0, 0.5)
    np.testing.assert_allclose(q_cmd, PANDA.upper)
    assert width == pytest.approx(0.08)
    sim.advance(1.5)
    q = sim.joint_positions()
    assert np.all(q <= PANDA.upper + 1e-3) and np.all(q >= PANDA.lower - 1e-3)
    assert sim.gripper_width() <= 0.08 + 1e-4

    sim.reset()
    sim.set_command(PANDA.lower - 2.0, -1.0)
    sim.advance(1.5)
    q = sim.joint_positions()
    assert np.all(q >= PANDA.lower - 1e-3) and np.all(q <= PANDA.upper + 1e-3)
    assert sim.gripper_width() >= -1e-4



@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10.0, 10.0), min_size=8, max_size=8))
def test_set_command_always_within_limits(values):
    s = _SHARED_SIM
    q, w = s.set_command(np.array(values[:7]), values[7])
    assert np.all(q >= PANDA.lower) and np.all(q <= PANDA.upper)
    assert 0.0 <= w <= 0.08
    q_back, w_back = s.command()
    np.testing.assert_allclose(q_back, q, atol=1e-12)
    assert w_back == pytest.approx(w)


_SHARED_SIM = FrankaSim(SceneConfig(cube=False, target="none"))


def test_env_step_clips_out_of_range_actions():
    env = make_env("reach", render=False)
    env.reset(seed=0)
    action = np.concatenate([PANDA.upper + 3.0, [1.0]])
    for _ in range(15):
        obs, *_ = env.step(action)
    assert np.all(obs["joint_pos"] <= PANDA.upper + 1e-3)
    assert obs["gripper"][0] <= 0.08 + 1e-4
    with pytest.raises(ConfigError):
        env.step(np.zeros(7))
    with pytest.raises(ConfigError):
        env.step(np.full(8, np.nan))
    env.close()


def test_advance_keeps_time_at_60_hz(sim):
    sim.reset()
    for _ in range(60):
        sim.advance(1.0 / 60.0)
    assert sim.time == pytest.approx(1.0, abs=sim.timestep / 2 + 1e-9)


# --------------------------------------------------------------------------- tasks / env


def test_unknown_task_raises_config_error_listing_tasks():
    with pytest.raises(ConfigError) as err:
        make_env("stack_blocks", render=False)
    for name in TASKS:
        assert name in str(err.value)
    assert isinstance(err.value, FastDPError)
    with pytest.raises(ConfigError):
        make_env("push", cameras=("side",), render=False)


def test_tasks_are_listed():
    assert {"reach", "push", "pick_place"} <= set(TASKS)


@pytest.mark.parametrize("task", ["reach", "push", "pick_place"])
def test_observation_keys_and_metadata(task):
    env = make_env(task, render=False)
    obs, info = env.reset(seed=1)
    assert set(obs) == {"joint_pos", "gripper", "tcp_pose"}
    assert obs["joint_pos"].shape == (7,) and obs["joint_pos"].dtype == np.float32
    assert obs["gripper"].shape == (1,) and obs["gripper"].dtype == np.float32
    assert obs["tcp_pose"].shape == (7,) and obs["tcp_pose"].dtype == np.float32
    assert np.linalg.norm(obs["tcp_pose"][3:]) == pytest.approx(1.0, abs=1e-5)
    assert info["success"] is False
    meta = env.metadata()
    json.dumps(meta)
    assert meta["task"] == task and meta["robot"] == "panda"
    assert meta["dt"] == env.dt == pytest.approx(0.1)
    assert meta["physics_timestep"] == pytest.approx(0.002)
    assert env.max_steps == round(env.time_limit / env.dt)
    assert env.task_name == task and env.sim is not None
    env.close()


def test_same_seed_is_bit_identical_and_seeds_differ():
    envs = [make_env("push", render=False) for _ in range(2)]
    first = [e.reset(seed=7) for e in envs]
    for key in first[0][0]:
        np.testing.assert_array_equal(first[0][0][key], first[1][0][key])
    rng = np.random.default_rng(123)
    q0 = first[0][0]["joint_pos"].astype(np.float64)
    for _ in range(15):
        action = np.concatenate([q0 + rng.normal(0, 0.05, 7), [rng.uniform(0, 0.08)]])
        out = [e.step(action) for e in envs]
        for key in out[0][0]:
            np.testing.assert_array_equal(out[0][0][key], out[1][0][key])
        assert out[0][1] == out[1][1]  # reward, bit for bit
        assert out[0][2:4] == out[1][2:4]
        np.testing.assert_array_equal(out[0][4]["cube_pose"], out[1][4]["cube_pose"])
    # A different seed draws a different arm, cube and goal.
    obs_a, info_a = envs[0].reset(seed=7)
    obs_b, info_b = envs[1].reset(seed=8)
    assert not np.array_equal(obs_a["joint_pos"], obs_b["joint_pos"])
    assert not np.array_equal(info_a["cube_pose"], info_b["cube_pose"])
    assert not np.array_equal(info_a["target_pos"], info_b["target_pos"])
    for e in envs:
        e.close()


def test_time_limit_truncates():
    env = make_env("reach", render=False, time_limit=0.3)
    obs, _ = env.reset(seed=0)
    hold = np.concatenate([obs["joint_pos"], obs["gripper"]])
    results = [env.step(hold) for _ in range(3)]
    assert env.max_steps == 3
    assert [r[3] for r in results] == [False, False, True]
    assert not any(r[2] for r in results)
    env.close()


def test_reward_ranks_finishing_above_waiting():
    """An episode ends at success, so every other step must cost: otherwise a policy that
    hovers until the time limit out-earns one that finishes."""
    env = make_env("push", render=False)
    expert = run_expert_episode(env, seed=0)
    assert expert["success"]
    obs, _ = env.reset(seed=0)
    hold = np.concatenate([obs["joint_pos"], obs["gripper"]])
    waited, rewards = 0.0, []
    for _ in range(env.max_steps):
        _, reward, terminated, truncated, info = env.step(hold)
        rewards.append(reward)
        waited += reward
        if terminated or truncated:
            break
    assert not info["success"] and len(rewards) == env.max_steps
    assert all(-STEP_COST <= r <= 0.0 for r in rewards)
    assert expert["return"] > waited
    env.close()


# --------------------------------------------------------------------------- experts


@pytest.mark.parametrize("task", ["reach", "push", "pick_place"])
def test_expert_succeeds(task):
    env = make_env(task, render=False)
    for seed in (0, 1):
        result = run_expert_episode(env, seed)
        assert result["success"], f"{task} expert failed on seed {seed}: {result}"
        assert result["length"] < env.max_steps
    env.close()


def test_expert_commands_are_smooth_and_respect_limits():
    env = make_env("pick_place", render=False)
    env.reset(seed=4)
    expert = make_expert("pick_place", env, np.random.default_rng(0))
    prev = np.concatenate([env.sim.joint_positions(), [env.sim.gripper_width()]])
    prev_speed = np.zeros(7)
    for _ in range(60):
        action, cart = expert.act(env)
        assert action.shape == (8,) and cart.shape == (8,)
        assert np.linalg.norm(cart[3:7]) == pytest.approx(1.0, abs=1e-9)
        speed = (action[:7] - prev[:7]) / env.dt
        assert np.all(np.abs(speed) <= PANDA.max_velocity + 1e-9)
        assert np.all(np.abs(speed - prev_speed) / env.dt <= PANDA.max_acceleration + 1e-6)
        assert abs(action[7] - prev[7]) / env.dt <= PANDA.gripper_speed + 1e-9
        assert np.all(action[:7] >= PANDA.lower) and np.all(action[:7] <= PANDA.upper)
        prev, prev_speed = action, speed
        env.step(action)
    env.close()


def test_push_expert_draws_both_modes():
    env = make_env("push", render=False)
    modes = set()
    for seed in range(12):
        env.reset(seed=seed)
        modes.add(make_expert("push", env, np.random.default_rng([seed, 1])).mode)
    assert modes == {0, 1}
    with pytest.raises(ConfigError):
        make_expert("nope", env)
    env.close()


def test_evaluate_expert_reports():
    result = evaluate_expert("reach", 2)
    assert result["success_rate"] == 1.0 and result["successes"] == 2
    assert result["mean_length"] > 0 and np.isfinite(result["mean_return"])


# --------------------------------------------------------------------------- rendering


def test_rendering_shapes_and_cameras_differ():
    env = _renderer_or_skip({"image_size": (48, 64), "cameras": ("front", "wrist")})
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"img_front", "img_wrist", "joint_pos", "gripper", "tcp_pose"}
    for key in ("img_front", "img_wrist"):
        assert obs[key].shape == (48, 64, 3) and obs[key].dtype == np.uint8
        assert obs[key].std() > 1.0  # not a blank frame
    assert not np.array_equal(obs["img_front"], obs["img_wrist"])
    obs2, *_ = env.step(np.concatenate([obs["joint_pos"], obs["gripper"]]))
    assert obs2["img_front"].shape == (48, 64, 3)
    # One camera only.
    env1 = make_env("reach", image_size=32, cameras=("wrist",))
    obs1, _ = env1.reset(seed=0)
    assert set(obs1) == {"img_wrist", "joint_pos", "gripper", "tcp_pose"}
    assert obs1["img_wrist"].shape == (32, 32, 3)
    env1.close()
    env.close()


def test_rendering_is_deterministic():
    env = _renderer_or_skip({"image_size": 32})
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    np.testing.assert_array_equal(a["img_front"], b["img_front"])
    np.testing.assert_array_equal(a["img_wrist"], b["img_wrist"])
    env.close()


def test_renderer_failure_raises_renderer_error(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no EGL display")

    monkeypatch.setattr(mujoco, "Renderer", broken)
    with pytest.raises(RendererError) as err:
        make_env("reach", render=True)
    message = str(err.value)
    assert "MUJOCO_GL" in message and "libegl1" in message and "osmesa" in message
    assert "no EGL display" in message
    # render=False never touches the renderer.
    env = make_env("reach", render=False)
    env.reset(seed=0)
    env.close()


@pytest.mark.parametrize("preset, expected", [(None, "egl"), ("osmesa", "osmesa")])
def test_mujoco_gl_defaults_to_egl_unless_set(preset, expected):
    code = "import os, fastdp_ros.sim; print(os.environ['MUJOCO_GL'])"
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    if preset is not None:
        env["MUJOCO_GL"] = preset
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected


def test_mesh_detail_option():
    with pytest.raises(ConfigError):
        SceneConfig(mesh_detail="ultra")
    coarse = FrankaSim(SceneConfig(mesh_detail="coarse"))
    full = FrankaSim(SceneConfig(mesh_detail="full"))
    assert coarse.model.mesh_facenum.sum() * 10 < full.model.mesh_facenum.sum()
    # Visual meshes have no mass: physics is identical.
    np.testing.assert_array_equal(coarse.model.body_mass, full.model.body_mass)
    np.testing.assert_array_equal(coarse.model.body_inertia, full.model.body_inertia)
    coarse.close()
    full.close()


def test_renders_when_mujoco_was_imported_first():
    """MUJOCO_GL is read when mujoco is first imported; the renderer still honours egl."""
    _renderer_or_skip({"image_size": 32}).close()  # rendering works in this process
    code = (
        "import mujoco, numpy as np\n"
        "from fastdp_ros.errors import RendererError\n"
        "from fastdp_ros.sim import make_env\n"
        "try:\n"
        "    env = make_env('reach', image_size=32, cameras=('front',))\n"
        "except RendererError as err:\n"
        "    print('RENDERER_ERROR', err)\n"
        "else:\n"
        "    obs, _ = env.reset(seed=0)\n"
        "    print('OK', obs['img_front'].shape, obs['img_front'].std() > 1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "OK (32, 32, 3) True", out.stdout


def test_float32_actions_replay_bit_for_bit():
    """A recorded episode (actions stored as float32) replays to the same observations."""
    env = make_env("push", render=False)
    obs, _ = env.reset(seed=11)
    expert = make_expert("push", env, np.random.default_rng(3))
    actions, observed = [], []
    for _ in range(25):
        action, _ = expert.act(env)
        actions.append(action.astype(np.float32))
        obs, *_ = env.step(action)
        observed.append(obs)
    env.reset(seed=11)
    for action, expected in zip(actions, observed):
        obs, *_ = env.step(action)
        for key in expected:
            np.testing.assert_array_equal(obs[key], expected[key])
    env.close()
