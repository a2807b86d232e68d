"""Evaluation rollouts: chunk execution, observation history, report fields, seed rules."""

import numpy as np
import pytest

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies import Policy, PolicySpec
from fastdp_ros.runtime.evaluate import EVAL_SEED0, evaluate_policy, wilson_interval


class HoldPolicy(Policy):
    """Commands the current joint positions: never succeeds at reach, never leaves the limits."""

    def __init__(self, spec):
        super().__init__(spec)
        self.calls = []

    nfe = 0

    @classmethod
    def from_model_dir(cls, path, **options):
        raise NotImplementedError

    def _encode(self, obs):
        return obs["joint_pos"][-1]

    def _act(self, obs):
        self.calls.append({k: v.copy() for k, v in obs.items()})
        q = obs["joint_pos"][-1]
        action = np.concatenate([q, obs["gripper"][-1]])
        return np.tile(action, (self.spec.horizon, 1))


def spec(**kw):
    base = dict(image_keys=(), image_shape=(0, 0, 3), lowdim_dims={"joint_pos": 7, "gripper": 1, "object_state": 3},
                action_dim=8, dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4)
    base.update(kw)
    return PolicySpec(**base)


def test_rollout_report():
    policy = HoldPolicy(spec())
    report = evaluate_policy(policy, "reach", episodes=2, show_progress=False)
    assert report.success_rate == 0.0
    assert report.seeds == [EVAL_SEED0, EVAL_SEED0 + 1]
    steps = report.per_episode[0]["steps"]
    assert steps == 50  # reach's 5 s time limit at dt 0.1
    assert report.per_episode[0]["policy_calls"] == int(np.ceil(steps / 4))
    assert report.latency_ms["count"] == sum(e["policy_calls"] for e in report.per_episode)
    first = policy.calls[1]  # calls[0] is the warm-up
    np.testing.assert_array_equal(first["joint_pos"][0], first["joint_pos"][1])  # history padded at reset
    assert first["object_state"].shape == (2, 3)


def test_n_action_steps_bounds():
    with pytest.raises(ConfigError, match="n_action_steps"):
        evaluate_policy(HoldPolicy(spec()), "reach", episodes=1, n_action_steps=8, show_progress=False)


def test_wilson_interval():
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.09
    lo, hi = wilson_interval(45, 50)
    assert lo < 0.9 < hi
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mode_coverage_counts_successful_episodes_per_reported_mode():
    from fastdp_ros.runtime.evaluate import EpisodeResult, mode_coverage

    results = [EpisodeResult(i, success, 0.0, 10, 2, final)
               for i, (success, final) in enumerate([(True, {"route_mode": 1.0}), (True, {"route_mode": 0.0}),
                                                     (True, {"route_mode": 1.0}), (False, {"route_mode": 0.0}),
                                                     (True, {"route_mode": -1.0})])]
    assert mode_coverage(results) == {"-1": 1, "0": 1, "1": 2}
    assert mode_coverage([EpisodeResult(0, True, 0.0, 10, 2, {"cube_goal_distance": 0.01})]) == {}
