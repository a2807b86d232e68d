"""Fault injection on PolicyRunner (no GPU, no ROS, no simulator): every fault ends with the arm
held, no command outside the limits, the stop raised where it should be, nothing crashing; a
bad hot swap keeps the old policy driving.

Time is a fake clock advanced by the test, and every tick waits for inference to finish
(`wait_inference`), so the runs are deterministic on a loaded machine: nothing here asserts
on wall-clock timing.
"""

import json
import threading

import numpy as np
import pytest

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies import Policy, PolicySpec
from fastdp_ros.robots import PANDA
from fastdp_ros.runtime.ood import OODMonitor
from fastdp_ros.runtime.runner import PolicyRunner, RunnerConfig, resolve_loader

TIMEOUT = 60.0  # thread joins and waits: generous for a loaded 2-core machine
RATE = 60.0
PERIOD = 1.0 / RATE
SPEC = PolicySpec(image_keys=("img_front",), image_shape=(8, 8, 3), lowdim_dims={"joint_pos": 7, "gripper": 1},
                  action_dim=8, dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4)


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


class MovePolicy(Policy):
    """Plans joint 1 moving at `speed` rad/s from where it is observed; counts its calls."""

    nfe = 0

    def __init__(self, spec=SPEC, speed=0.2):
        super().__init__(spec)
        self.speed = speed
        self.calls = 0

    @classmethod
    def from_model_dir(cls, path, **options):
        raise NotImplementedError

    def _encode(self, obs):
        return obs["joint_pos"][-1]

    def _act(self, obs):
        self.calls += 1
        q = obs["joint_pos"][-1].astype(np.float64)
        chunk = np.tile(np.r_[q, obs["gripper"][-1]], (self.spec.horizon, 1))
        chunk[:, 0] += self.speed * self.spec.dt * np.arange(self.spec.horizon)
        return chunk


class NaNPolicy(MovePolicy):
    """Good chunks, then NaN from call `bad_from` on."""

    def __init__(self, bad_from=5):
        super().__init__()
        self.bad_from = bad_from

    def _act(self, obs):
        chunk = super()._act(obs)
        if self.calls >= self.bad_from:
            chunk[3, 2] = np.nan
        return chunk


class RaisingPolicy(MovePolicy):
    def __init__(self, bad_from=5):
        super().__init__()
        self.bad_from = bad_from

    def _act(self, obs):
        chunk = super()._act(obs)
        if self.calls >= self.bad_from:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return chunk


class SlowPolicy(MovePolicy):
    """Takes `latency` seconds of the fake clock per call once `slow` is set."""

    def __init__(self, clock, latency):
        super().__init__()
        self.clock, self.latency, self.slow = clock, latency, False

    def _act(self, obs):
        if self.slow:
            self.clock.t += self.latency
        return super()._act(obs)


class StallPolicy(MovePolicy):
    """Blocks inside act() once `stall` is set, until `release` is set."""

    def __init__(self):
        super().__init__()
        self.stall = False
        self.entered, self.release = threading.Event(), threading.Event()

    def _act(self, obs):
        if self.stall:
            self.entered.set()
            self.release.wait(TIMEOUT)
        return super()._act(obs)


class Harness:
    """A perfectly tracking fake arm with a 30 Hz camera and 60 Hz joint state around a runner."""

    def __init__(self, runner, clock):
        self.runner, self.clock = runner, clock
        self.q, self.w = PANDA.home_position.copy(), 0.04
        self.k = 0
        self.commands = []
        self.image = np.full((8, 8, 3), 100, np.uint8)
        runner.start(self.q, self.w)

    def run(self, seconds, sync=True, camera=True, joints=True, image=None, joint_override=None):
        for _ in range(int(round(seconds * RATE))):
            self.clock.t += PERIOD
            t = self.clock.t
            self.k += 1
            if joints:
                q = self.q if joint_override is None else joint_override
                self.runner.observe("joint_pos", t, q.astype(np.float32))
                self.runner.observe("gripper", t, np.array([self.w], np.float32))
            if camera and self.k % 2 == 0:
                self.runner.observe("img_front", t, self.image if image is None else image)
            cmd = self.runner.tick()
            self.q, self.w = cmd.q, cmd.gripper
            self.commands.append(cmd)
            if sync:
                assert self.runner.wait_inference(TIMEOUT)
        return self.commands[-1]

    def assert_safe(self):
        """No command outside the position limits, no velocity or acceleration over the limits."""
        qs = np.array([PANDA.home_position] + [c.q for c in self.commands])
        assert np.all(qs >= PANDA.lower - 1e-9) and np.all(qs <= PANDA.upper + 1e-9)
        v = np.diff(qs, axis=0) / PERIOD
        assert np.all(np.abs(v) <= PANDA.max_velocity * (1 + 1e-9))
        a = np.diff(np.vstack([np.zeros(7), v]), axis=0) / PERIOD
        assert np.all(np.abs(a) <= PANDA.max_acceleration * (1 + 1e-6))
        w = np.array([c.gripper for c in self.commands])
        assert np.all((w >= 0.0) & (w <= 0.08))

    def assert_held(self, ticks=10):
        last = self.commands[-ticks:]
        assert all(c.held and c.stopped for c in last)
        for c in last[1:]:
            np.testing.assert_array_equal(c.q, last[0].q)

    def stop_sources(self):
        return {(e.source, e.key) for e in self.runner.latch.events}


@pytest.fixture
def clock():
    return FakeClock()


def make_runner(policy, clock, **kw):
    ood = kw.pop("ood", None)
    loader = kw.pop("loader", None)
    kw.setdefault("replan_s", 0.0)  # a plan from every camera frame: faults show up at once
    return PolicyRunner(policy, RunnerConfig(rate=RATE, **kw), clock=clock, ood=ood, loader=loader,
                        policy_name="old")


@pytest.mark.parametrize("replan_s, plans", [
    (None, (4, 6)),  # default: a plan per n_action_steps * dt = 0.4 s, as in evaluation
    (0.0, (25, 10**6)),  # a plan from every new observation
])
def test_clean_run_moves_the_arm_within_limits(clock, one_torch_thread, replan_s, plans):
    policy = MovePolicy()
    with make_runner(policy, clock, replan_s=replan_s) as runner:
        h = Harness(runner, clock)
        h.run(2.0)
        assert not runner.stopped and runner.latch.events == []
        assert h.q[0] - PANDA.home_position[0] > 0.25  # about 0.2 rad/s for 2 s, minus the start
        assert plans[0] <= policy.calls <= plans[1], policy.calls
        assert not h.commands[-1].held
        stats = runner.stats()
        json.dumps(stats)  # the statistics are JSON as they are
        assert stats["inference"]["completed"] == policy.calls
        h.assert_safe()


@pytest.mark.parametrize("lost, keys", [("camera", {"img_front"}), ("joints", {"joint_pos", "gripper"})])
def test_a_sensor_stream_that_stops_raises_the_stop_and_holds(clock, lost, keys):
    with make_runner(MovePolicy(), clock) as runner:
        h = Harness(runner, clock)
        h.run(1.0)
        h.run(1.0, camera=lost != "camera", joints=lost != "joints")
        assert runner.stopped
        assert {k for source, k in h.stop_sources() if source == "stream"} == keys
        assert "stale" in runner.latch.reason
        h.assert_held()
        h.assert_safe()
        h.run(1.0)  # the stream comes back: the stop stays latched until an operator resets it
        h.assert_held()
        runner.reset_stop()
        h.run(1.0)
        assert not runner.stopped and not h.commands[-1].held


def test_nan_in_an_observation_stops_and_holds(clock):
    with make_runner(MovePolicy(), clock) as runner:
        h = Harness(runner, clock)
        h.run(1.0)
        bad = h.q.copy()
        bad[3] = np.nan
        h.run(PERIOD, joint_override=bad)
        h.run(1.0)
        assert ("observation", "joint_pos") in h.stop_sources()
        assert "NaN" in runner.latch.reason
        assert runner.counts["rejected_observations"] == 1
        h.assert_held()
        h.assert_safe()


def test_nan_from_the_policy_stops_and_holds(clock):
    policy = NaNPolicy(bad_from=5)
    with make_runner(policy, clock) as runner:
        h = Harness(runner, clock)
        h.run(2.0)
        assert ("policy", "chunk") in h.stop_sources()
        assert "NaN" in runner.latch.reason
        assert runner.counts["rejected_chunks"] >= 1
        h.assert_held()
        h.assert_safe()


def test_policy_exceptions_are_caught_and_stop_after_a_few(clock):
    with make_runner(RaisingPolicy(bad_from=5), clock) as runner:
        h = Harness(runner, clock)
        h.run(2.0)
        assert ("policy", "errors") in h.stop_sources()
        assert "illegal memory access" in runner.latch.reason
        assert runner.stats()["inference"]["errors"] >= 3
        h.assert_held()
        h.assert_safe()


def test_an_out_of_distribution_frame_stops_after_the_debounce(clock):
    rng = np.random.default_rng(0)
    colours = rng.normal(100.0, 3.0, size=(400, 3))
    monitor = OODMonitor(lambda obs: obs["img_front"][-1].reshape(-1, 3).mean(0), colours[:300], debounce=3)
    monitor.calibrate(colours[300:], quantile=0.99)
    with make_runner(MovePolicy(), clock, ood=monitor, ood_rate=30.0) as runner:  # every camera frame
        h = Harness(runner, clock)
        h.run(1.0)
        assert not runner.stopped and runner.status()["ood_score"] < monitor.threshold
        glare = np.full((8, 8, 3), 255, np.uint8)
        h.run(2 * PERIOD, image=glare)  # one odd frame: debounced
        h.run(1.0)
        assert not runner.stopped
        h.run(10 * PERIOD, image=glare)  # five in a row
        assert ("ood", "ood") in h.stop_sources()
        h.run(0.5)
        h.assert_held()
        h.assert_safe()
        assert runner.status()["ood_score"] < monitor.threshold  # good frames again, still latched
        assert runner.stats()["ood"]["stops"] == 1


def test_inference_deadline_misses_stop_and_hold(clock):
    policy = SlowPolicy(clock, latency=0.15)  # deadline defaults to the spec's dt = 0.1 s
    with make_runner(policy, clock) as runner:
        h = Harness(runner, clock)
        h.run(1.0)
        assert not runner.stopped
        policy.slow = True
        h.run(1.0)
        assert ("inference", "deadline") in h.stop_sources()
        assert runner.stats()["inference"]["deadline_misses"] >= 3
        h.assert_held()
        h.assert_safe()


def test_an_inference_stall_stops_and_holds(clock):
    policy = StallPolicy()
    runner = make_runner(policy, clock)
    try:
        h = Harness(runner, clock)
        h.run(1.0)
        policy.stall = True
        h.run(2 * PERIOD, sync=False)  # the next camera frame goes to the stalling call
        assert policy.entered.wait(TIMEOUT)
        h.run(1.5, sync=False)
        assert ("inference", "stall") in h.stop_sources()
        assert ("command", "age") in h.stop_sources()
        h.assert_held()
        h.assert_safe()
    finally:
        policy.release.set()
        runner.close(TIMEOUT)


# ------------------------------------------------------------------------------ hot swap


def tiny_dp_model(path):
    """A real (barely trained) low-dimensional Diffusion Policy model directory."""
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies.dp import DiffusionPolicyConfig, train_diffusion_policy
    from fastdp_ros.policies.training import TrainSettings

    buf = ReplayBuffer.create(path / "ds", attrs={"task": "reach", "dt": 0.1, "robot": "panda"})
    q = np.tile(PANDA.home_position, (20, 1)).astype(np.float32)
    for e in range(2):
        buf.add_episode({"joint_pos": q, "gripper": np.full((20, 1), 0.04, np.float32),
                         "action": np.c_[q, np.full((20, 1), 0.04)].astype(np.float32)},
                        episode_seed=e, episode_success=True)
    config = DiffusionPolicyConfig(feature_dim=16, num_keypoints=8, down_dims=(16, 32), diffusion_step_embed_dim=16,
                                   n_groups=4, crop_ratio=1.0, sampler="ddim", num_inference_steps=2)
    settings = TrainSettings(steps=2, batch_size=8, lr=1e-3, warmup_steps=1, val_every=10**6, ckpt_every=10**6,
                             seed=0)
    train_diffusion_policy(str(path / "ds"), str(path / "model"), config, settings, image_keys=(),
                           lowdim_keys=("joint_pos", "gripper"), horizon=8, n_obs_steps=2, n_action_steps=4,
                           val_ratio=0.0)
    return path / "model"


@pytest.fixture(scope="module")
def dp_model(tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tiny_dp_model(tmp_path_factory.mktemp("dp"))
    finally:
        torch.set_num_threads(n)


LOWDIM = PolicySpec(image_keys=(), image_shape=(0, 0, 3), lowdim_dims={"joint_pos": 7, "gripper": 1},
                    action_dim=8, dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4)


class LowdimHarness(Harness):
    def run(self, seconds, sync=True, **kw):
        return super().run(seconds, sync=sync, camera=False, **kw)


def swap_and_wait(runner, h, path, **options):
    assert runner.request_swap(path, **options)
    assert runner.swap.done.wait(TIMEOUT)
    h.run(2 * PERIOD)  # the tick boundary where a ready policy takes over
    return runner.swap


@pytest.mark.parametrize("broken", ["missing", "corrupt", "not_json"])
def test_a_swap_to_a_missing_or_corrupt_model_keeps_the_old_policy(clock, dp_model, tmp_path, broken,
                                                                  one_torch_thread):
    import shutil

    target = tmp_path / "model"
    if broken != "missing":
        shutil.copytree(dp_model, target)
        if broken == "corrupt":
            weights = target / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:200])
        else:
            (target / "config.json").write_text("{ truncated")
    old = MovePolicy(LOWDIM)
    with make_runner(old, clock) as runner:
        h = LowdimHarness(runner, clock)
        h.run(0.5)
        job = swap_and_wait(runner, h, target)
        calls = old.calls
        h.run(1.0)
        assert job.state == "failed"
        assert str(target) in job.error and "keeping old" in job.error
        expected = {"missing": "does not exist", "corrupt": "model.safetensors", "not_json": "config.json"}[broken]
        assert expected in job.error
        assert runner.policy is old and runner.policy_name == "old"
        assert old.calls > calls  # still driving
        assert not runner.stopped and not h.commands[-1].held
        assert runner.stats()["swaps"][-1]["state"] == "failed"
        h.assert_safe()


def test_a_swap_whose_warm_up_fails_keeps_the_old_policy(clock):
    class WarmUpFails(MovePolicy):
        def _act(self, obs):
            raise RuntimeError("out of memory")

    class NaNAtWarmUp(MovePolicy):
        def _act(self, obs):
            return np.full((8, 8), np.nan)

    class NeedsMore(MovePolicy):
        def __init__(self):
            super().__init__(PolicySpec(**{**LOWDIM.to_dict(), "lowdim_dims": [["joint_pos", 7], ["gripper", 1],
                                                                                 ["object_state", 10]]}))

    candidates = {"oom": WarmUpFails(LOWDIM), "nan": NaNAtWarmUp(LOWDIM), "keys": NeedsMore()}
    old = MovePolicy(LOWDIM)
    with make_runner(old, clock, loader=lambda path, **kw: candidates[str(path)]) as runner:
        h = LowdimHarness(runner, clock)
        h.run(0.5)
        messages = {}
        for name in candidates:
            job = swap_and_wait(runner, h, name)
            assert job.state == "failed"
            messages[name] = job.error
        assert "out of memory" in messages["oom"]
        assert "NaN" in messages["nan"]
        assert "object_state" in messages["keys"]
        assert runner.policy is old and not runner.stopped
        h.run(0.5)
        h.assert_safe()


def test_a_good_swap_switches_at_a_tick_and_drives_on(clock, dp_model, one_torch_thread):
    from fastdp_ros.policies import load_policy

    old = MovePolicy(LOWDIM, speed=0.2)
    new = MovePolicy(LOWDIM, speed=-0.2)
    loads = []

    def loader(path, **options):
        loads.append((str(path), options))
        return new if str(path) == "reverse" else load_policy(path, **options)

    with make_runner(old, clock, loader=loader) as runner:
        h = LowdimHarness(runner, clock)
        h.run(1.0)
        q_before = h.q[0]
        job = swap_and_wait(runner, h, "reverse", device="cpu")
        assert job.state == "active" and runner.policy is new and runner.policy_name == "reverse"
        h.run(1.5)
        assert h.q[0] < q_before  # the new policy drives the arm back
        assert not runner.stopped
        # and a real model directory as the next swap target
        job = swap_and_wait(runner, h, dp_model)
        assert job.state == "active", job.error
        h.run(1.0)
        assert not runner.stopped, runner.latch.reason
        h.assert_safe()
        assert [s["state"] for s in runner.stats()["swaps"]] == ["active", "active"]
        assert loads[0] == ("reverse", {"device": "cpu"})


def test_backend_is_passed_through_or_refused_clearly():
    from fastdp_ros.policies import load_policy

    with pytest.raises(ConfigError, match="backend 'onnxruntime' is not available"):
        resolve_loader(load_policy, "onnxruntime")
    assert resolve_loader(load_policy, "torch") is load_policy
    seen = {}

    def engine_loader(path, backend="torch", **options):
        seen.update(path=path, backend=backend, **options)

    resolve_loader(engine_loader, "onnxruntime")("m", device="cpu")
    assert seen == {"path": "m", "backend": "onnxruntime", "device": "cpu"}


def test_a_policy_that_does_not_drive_joints_is_refused(clock):
    seven = PolicySpec(**{**LOWDIM.to_dict(), "lowdim_dims": [["joint_pos", 7], ["gripper", 1]], "action_dim": 7})
    with pytest.raises(ConfigError, match="7 joint position targets"):
        PolicyRunner(MovePolicy(seven), clock=clock)
    with pytest.raises(ConfigError, match="start"):
        PolicyRunner(MovePolicy(LOWDIM), clock=clock).tick()


def test_ood_checks_run_at_the_dataset_rate_by_default(clock):
    colours = np.random.default_rng(0).normal(100.0, 3.0, size=(200, 3))
    monitor = OODMonitor(lambda obs: obs["img_front"][-1].reshape(-1, 3).mean(0), colours, threshold=50.0)
    with make_runner(MovePolicy(), clock, ood=monitor) as runner:
        h = Harness(runner, clock)
        h.run(2.0)
        assert 19 <= monitor.counts["frames"] <= 21  # 10 Hz (spec.dt = 0.1 s), not the 30 Hz camera
        assert not runner.stopped


def test_an_internal_error_in_a_tick_still_returns_a_held_command(clock):
    box = {"fail": False}

    def fk(q):
        if box["fail"]:
            raise RuntimeError("kinematics library crashed")
        return np.array([0.5, 0.0, 0.4])

    from fastdp_ros.runtime.safety import WorkspaceBox

    runner = PolicyRunner(MovePolicy(), RunnerConfig(rate=RATE), clock=clock, fk=fk,
                          workspace=WorkspaceBox((0.0, -1.0, 0.0), (1.0, 1.0, 1.0)))
    with runner:
        h = Harness(runner, clock)
        h.run(1.0)
        box["fail"] = True
        h.run(0.5)
        assert ("runtime", "internal") in h.stop_sources()
        h.assert_held()
        h.assert_safe()
