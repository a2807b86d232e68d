"""pick_place_around: the post between cube and target, the expert that carries the cube round it
on the left or the right (its mode), the mode-averaged straight carry that runs into the post, and
the expert mode recorded by `fastdp collect`. Run from the repository root:
python -m pytest test/test_sim_around.py
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.cli.main import main
from fastdp_ros.data import ReplayBuffer
from fastdp_ros.errors import ConfigError
from fastdp_ros.sim import (
    TASKS,
    FrankaSim,
    PickPlaceAroundExpert,
    SceneConfig,
    build_model,
    make_env,
    make_expert,
    object_state,
)
from fastdp_ros.sim.tasks import PickPlaceAroundTask

TASK = "pick_place_around"
SEEDS = range(10)


@pytest.fixture(scope="module")
def env():
    e = make_env(TASK, render=False)
    yield e
    e.close()


def carry(env, seed: int, straight: bool = False) -> dict:
    """One expert episode (``straight``: carried along the cube -> target line, the average of
    the two modes): success, mode, steps touching the post, the cube's largest offset from the
    line (+ = left), the actions."""
    env.reset(seed=seed)
    rng = np.random.default_rng([seed, 1])  # as run_expert_episode draws it
    if straight:
        expert = PickPlaceAroundExpert(env, rng, straight=True)
    else:
        expert = make_expert(TASK, env, rng)
        assert isinstance(expert, PickPlaceAroundExpert)
    start, line = env.state.cube_pose[:2], expert.line
    normal = np.array([-line[1], line[0]])
    contact_steps, lateral, actions = 0, 0.0, []
    info = {}
    for _ in range(env.max_steps):
        action, _ = expert.act(env)
        actions.append(action)
        _, _, terminated, truncated, info = env.step(action)
        contact_steps += info["obstacle_contact"]
        offset = float(np.dot(info["cube_pose"][:2] - start, normal))
        lateral = offset if abs(offset) > abs(lateral) else lateral
        if terminated or truncated:
            break
    return {"success": info["success"], "mode": expert.mode, "contact_steps": contact_steps,
            "lateral": lateral, "actions": np.array(actions), "route_mode": info["route_mode"]}


@pytest.fixture(scope="module")
def expert_runs(env):
    return [carry(env, seed) for seed in SEEDS]


def test_task_is_registered():
    assert TASK in TASKS
    with pytest.raises(ConfigError):
        make_env("pick_place_around_twice", render=False)


def test_expert_goes_round_on_both_sides(expert_runs):
    # measured: 10 / 10 on seeds 0-9 (50 / 50 on seeds 0-49), no contact with the post
    assert sum(r["success"] for r in expert_runs) >= 8
    assert {r["mode"] for r in expert_runs} == {0, 1}
    assert sum(r["contact_steps"] == 0 for r in expert_runs) >= 8
    for r in expert_runs:  # the mode is the side the cube went: 0 left (+), 1 right (-)
        if r["success"]:
            assert np.sign(r["lateral"]) == (1.0 if r["mode"] == 0 else -1.0)
            assert abs(r["lateral"]) > 0.05


def test_the_task_reads_the_route_taken_as_the_expert_mode(expert_runs):
    # what `fastdp eval` reports per episode (final["route_mode"]), for any policy's mode coverage
    for r in expert_runs:
        if r["success"]:
            assert r["route_mode"] == r["mode"]


def test_route_mode_is_unset_until_the_cube_passes_the_post(env):
    _, info = env.reset(seed=4)
    assert info["route_mode"] == -1
    state = env.state
    start, post = state.cube_pose[:2], state.obstacle[:2]
    line = (state.target[:2] - start) / np.linalg.norm(state.target[:2] - start)
    left = np.array([-line[1], line[0]])
    route = PickPlaceAroundTask.route_mode
    assert route(post - 0.01 * line + 0.05 * left, state) == -1  # not yet past the post
    assert route(post + 0.01 * line + 0.05 * left, state) == 0
    assert route(post + 0.01 * line - 0.05 * left, state) == 1


def test_straight_carry_hits_the_post_and_fails(env):
    runs = [carry(env, seed, straight=True) for seed in SEEDS]
    # measured: 0 / 10 succeed, all 10 touch the post
    assert sum(r["success"] for r in runs) <= 2
    assert sum(r["contact_steps"] > 0 for r in runs) >= 8


def test_same_seed_same_episode(env, expert_runs):
    again = carry(env, 3)
    np.testing.assert_array_equal(again["actions"], expert_runs[3]["actions"])
    assert again["mode"] == expert_runs[3]["mode"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_post_stands_between_cube_and_target(env, seed):
    _, info = env.reset(seed=seed)
    cube, target, post = info["cube_pose"][:2], info["target_pos"][:2], info["obstacle_pos"]
    distance = float(np.linalg.norm(target - cube))
    assert 0.24 <= distance <= 0.32
    line = (target - cube) / distance
    along = float(np.dot(post[:2] - cube, line))
    assert abs(along - distance / 2) <= env.task.obstacle_jitter + 1e-9
    offset = post[:2] - cube
    assert abs(line[0] * offset[1] - line[1] * offset[0]) < 1e-9  # on the line
    assert post[2] == pytest.approx(env.sim.config.obstacle_half_height)  # stands on the table
    np.testing.assert_array_equal(post, env.state.obstacle)
    assert info["obstacle_contact"] is False
    state = object_state(info)
    assert state.shape == (12,) and state.dtype == np.float32
    np.testing.assert_array_equal(state[10:], post[:2].astype(np.float32))
    _, info_again = env.reset(seed=seed)
    np.testing.assert_array_equal(info_again["obstacle_pos"], post)


def test_touching_the_post_is_penalized(env):
    env.reset(seed=0)
    sim, state = env.sim, env.state
    score, _, extra = env.task.evaluate(sim, state)
    assert extra["obstacle_contact"] is False and sim.obstacle_contacts() == (False, False)
    sim.set_obstacle(sim.cube_pose()[:2] + [0.03, 0.0])  # overlapping the cube's side
    sim.step(1)
    touched, _, extra = env.task.evaluate(sim, state)
    assert sim.obstacle_contacts()[0] and extra["obstacle_contact"] is True
    assert touched < score - env.task.contact_penalty + 0.05


def test_collect_records_the_expert_mode(tmp_path):
    out = tmp_path / "around"
    assert main(["collect", "--task", TASK, "--no-images", "--episodes", "2", "--out", str(out)]) == 0
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2 and buf.attrs["task"] == TASK
    assert not any(k.startswith("img_") for k in buf.keys)
    assert buf["object_state"].shape[1:] == (12,)
    seeds = buf.episode_meta("episode_seed")
    modes = buf.episode_meta("expert_mode")
    assert modes.shape == (2,) and set(modes) <= {0, 1}
    env = make_env(TASK, render=False)
    for seed, mode in zip(seeds, modes):  # collect draws the expert from the episode's seed
        env.reset(seed=int(seed))
        assert make_expert(TASK, env, np.random.default_rng(int(seed))).mode == mode
    env.close()


def test_collect_records_the_mode_of_other_tasks_too(tmp_path):
    out = tmp_path / "reach"
    assert main(["collect", "--task", "reach", "--no-images", "--episodes", "1", "--out", str(out)]) == 0
    buf = ReplayBuffer.open(out)
    assert buf.meta_keys == ["episode_expert_mode", "episode_return", "episode_seed", "episode_success"]
    assert buf["object_state"].shape[1:] == (3,)


def test_scenes_without_the_post_are_unchanged():
    plain = build_model(SceneConfig())  # push's and pick_place's scene
    # counts of the scene before the obstacle existed
    assert (plain.nbody, plain.ngeom, plain.nmocap) == (13, 50, 1)
    with_post = build_model(SceneConfig(obstacle=True))
    assert (with_post.nbody, with_post.ngeom, with_post.nmocap) == (14, 51, 2)
    push = make_env("push", render=False)
    _, info = push.reset(seed=0)
    assert not push.sim.has_obstacle and "obstacle_pos" not in info
    assert "obstacle_contact" not in info and object_state(info).shape == (10,)
    assert push.sim.obstacle_contacts() == (False, False)
    with pytest.raises(ConfigError):
        push.sim.set_obstacle([0.5, 0.0])
    push.close()


@pytest.mark.parametrize("kwargs", [{"obstacle_half_width": 0.2}, {"obstacle_half_height": 0.01}])
def test_bad_obstacle_sizes_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="obstacle half sizes"):
        SceneConfig(obstacle=True, **kwargs)


def test_set_obstacle_checks_its_argument():
    sim = FrankaSim(SceneConfig(obstacle=True))
    sim.set_obstacle([0.45, -0.1])
    np.testing.assert_allclose(sim.obstacle_position(), [0.45, -0.1, sim.config.obstacle_half_height])
    with pytest.raises(ConfigError, match="2 finite values"):
        sim.set_obstacle([0.45, -0.1, 0.2])
    with pytest.raises(ConfigError, match="2 finite values"):
        sim.set_obstacle([np.nan, 0.0])
