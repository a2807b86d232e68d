"""The closed loop against the MuJoCo simulation, and `fastdp run` end to end.

Loop tests run lock-step on a fake clock (deterministic: physics advances by exactly one command
period per tick and every tick waits for inference); the CLI test runs in real time but asserts
only on what the run produced, never on how fast it was.
"""

import json
import logging

import numpy as np
import pytest

from fastdp_ros.cli.main import main
from fastdp_ros.policies import Policy, PolicySpec
from fastdp_ros.robots import PANDA
from fastdp_ros.runtime.loop import SIM_WORKSPACE, LoopConfig, format_status, run_closed_loop
from fastdp_ros.runtime.runner import PolicyRunner, RunnerConfig

LOWDIM = PolicySpec(image_keys=(), image_shape=(0, 0, 3), lowdim_dims={"joint_pos": 7, "gripper": 1},
                    action_dim=8, dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4)


class FakeClock:
    def __init__(self, t=50.0):
        self.t = t

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(0.0, seconds)


class MovePolicy(Policy):
    """Plans joint 1 moving at 0.2 rad/s from where it is observed."""

    nfe = 0

    @classmethod
    def from_model_dir(cls, path, **options):
        raise NotImplementedError

    def _encode(self, obs):
        return obs["joint_pos"][-1]

    def _act(self, obs):
        chunk = np.tile(np.r_[obs["joint_pos"][-1], obs["gripper"][-1]], (self.spec.horizon, 1))
        chunk[:, 0] += 0.2 * self.spec.dt * np.arange(self.spec.horizon)
        return chunk


def sim_run(config, sensor_hook=None, time_limit=1.0, blend="crossfade"):
    from fastdp_ros.sim import make_env

    env = make_env("reach", render=False, control_dt=0.1, time_limit=time_limit)
    clock = FakeClock()
    runner = PolicyRunner(MovePolicy(LOWDIM), RunnerConfig(rate=config.rate, blend=blend), clock=clock,
                          workspace=SIM_WORKSPACE, fk=lambda q: env.sim.fk(q)[0])
    commands, statuses = [], []
    tick = runner.tick
    runner.tick = lambda now=None: commands.append(tick(now)) or commands[-1]
    try:
        stats = run_closed_loop(runner, env, config, clock=clock, sleep=clock.sleep, on_status=statuses.append,
                                sensor_hook=sensor_hook)
        velocity = env.sim.joint_velocities()
    finally:
        runner.close(60.0)
        env.close()
    return stats, commands, statuses, velocity, runner


def within_limits(commands):
    qs = np.array([c.q for c in commands])
    return bool(np.all(qs >= PANDA.lower - 1e-9) and np.all(qs <= PANDA.upper + 1e-9))


@pytest.mark.parametrize("blend", ["crossfade", "ensemble"])
def test_closed_loop_runs_episodes_in_lockstep(blend, one_torch_thread):
    stats, commands, statuses, _, _ = sim_run(LoopConfig(rate=60, episodes=2, lockstep=True), blend=blend)
    assert stats["episodes"] == 2 and stats["successes"] == 0  # moving one joint never reaches the target
    assert [e["seed"] for e in stats["per_episode"]] == [1_000_000, 1_000_001]
    assert 110 <= stats["ticks"] <= 130  # 2 episodes of 1 s at 60 Hz
    assert stats["on_time_fraction"] == 1.0 and stats["skipped_ticks"] == 0
    assert stats["stop_events"] == [] and stats["inference"]["completed"] > 0
    assert stats["sensors"]["joint_samples"] >= 2 * 500 - 2  # joint state at its own 500 Hz
    assert within_limits(commands)
    assert sum(not c.held for c in commands) > 80  # it drove, it did not just hold
    assert statuses and "cmd" in format_status(statuses[-1])
    json.dumps(stats)


def test_a_joint_stream_dropout_in_the_sim_stops_and_the_arm_comes_to_rest(one_torch_thread):
    def drop_joints_after_half_a_second(key, stamp, value):
        return None if key == "joint_pos" and stamp > 50.5 else value

    stats, commands, _, velocity, runner = sim_run(LoopConfig(rate=60, duration_s=1.5, lockstep=True),
                                                   sensor_hook=drop_joints_after_half_a_second, time_limit=5.0)
    assert [(e["source"], e["key"]) for e in stats["stop_events"]][0] == ("stream", "joint_pos")
    assert all(c.held and c.stopped for c in commands[-20:])
    np.testing.assert_array_equal(commands[-1].q, commands[-20].q)
    assert np.abs(velocity).max() < 0.05  # the simulated arm has come to rest
    assert within_limits(commands)
    assert stats["sensors"]["dropped_samples"] > 0


def test_nan_joint_state_in_the_sim_stops(one_torch_thread):
    def nan_once(key, stamp, value):
        if key == "joint_pos" and 50.5 < stamp <= 50.502:
            value = value.copy()
            value[2] = np.nan
        return value

    stats, commands, _, _, _ = sim_run(LoopConfig(rate=60, duration_s=1.0, lockstep=True), sensor_hook=nan_once,
                                       time_limit=5.0)
    assert stats["stop_events"][0]["source"] == "observation"
    assert all(c.held for c in commands[-10:])
    assert within_limits(commands)


# ------------------------------------------------------------------------------ fastdp run


@pytest.fixture(scope="module")
def dp_model(tmp_path_factory):
    """A real (barely trained) low-dimensional Diffusion Policy for the reach task."""
    import torch

    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies.dp import DiffusionPolicyConfig, train_diffusion_policy
    from fastdp_ros.policies.training import TrainSettings

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("dp")
    try:
        buf = ReplayBuffer.create(path / "ds", attrs={"task": "reach", "dt": 0.1, "robot": "panda"})
        q = np.tile(PANDA.home_position, (20, 1)).astype(np.float32)
        for e in range(2):
            buf.add_episode({"joint_pos": q, "gripper": np.full((20, 1), 0.04, np.float32),
                             "action": np.c_[q, np.full((20, 1), 0.04)].astype(np.float32)},
                            episode_seed=e, episode_success=True)
        config = DiffusionPolicyConfig(feature_dim=16, num_keypoints=8, down_dims=(16, 32),
                                       diffusion_step_embed_dim=16, n_groups=4, crop_ratio=1.0, sampler="ddim",
                                       num_inference_steps=2)
        settings = TrainSettings(steps=2, batch_size=8, lr=1e-3, warmup_steps=1, val_every=10**6,
                                 ckpt_every=10**6, seed=0)
        train_diffusion_policy(str(path / "ds"), str(path / "model"), config, settings, image_keys=(),
                               lowdim_keys=("joint_pos", "gripper"), horizon=8, n_obs_steps=2, n_action_steps=4,
                               val_ratio=0.0)
        yield path / "model"
    finally:
        torch.set_num_threads(n)


def test_fastdp_run_writes_statistics(dp_model, tmp_path, one_torch_thread):
    stats_path = tmp_path / "out" / "stats.json"
    video = tmp_path / "out" / "run.gif"
    rc = main(["run", str(dp_model), "--duration", "1.5", "--stats", str(stats_path), "--video", str(video),
               "--camera-rate", "10", "--no-status", "--threads", "1"])
    assert rc == 0
    stats = json.loads(stats_path.read_text())
    assert stats["task"] == "reach" and stats["policy_type"] == "dp" and stats["backend"] == "torch"
    assert stats["ticks"] > 0 and stats["ticks_on_time"] + stats["late_ticks"] == stats["ticks"]
    for key in ("on_time_fraction", "command_hz", "tick_start_lateness_ms", "episodes", "successes",
                "stop_events", "swaps"):
        assert key in stats
    assert stats["inference"]["completed"] > 0 and "p99" in stats["inference"]["latency_ms"]
    assert stats["safety"]["commands"] == stats["ticks"]  # every command went through the filter
    assert video.stat().st_size > 0


@pytest.mark.parametrize("extra, message", [
    (["--backend", "nosuch"], "nosuch"),
    (["--video", "{tmp}/run.avi"], ".mp4 or .gif"),
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--rate", "0"], "rate must be > 0"),
    (["--ood-model", "{model}"], "has no OOD score of its own"),  # a dp model needs --ood-dataset
])
def test_fastdp_run_bad_input_is_one_clear_error(dp_model, tmp_path, extra, message, caplog):
    argv = ["run", str(dp_model), "--no-status"] + [a.format(tmp=tmp_path, model=dp_model) for a in extra]
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors


def test_fastdp_run_missing_model(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["run", str(tmp_path / "nope"), "--duration", "1"]) == 2
    assert "does not exist" in caplog.text
