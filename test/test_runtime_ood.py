"""OODMonitor: kNN distances (the retrieval index, exact), calibrated threshold, debounce, latch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.ood import ModelScoreMonitor, OODMonitor, blank_camera, monitor_from_dataset


def blobs(n, seed, dim=8, shift=0.0):
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, dim))


def encoder(obs):
    return obs["x"]


def test_distances_are_the_exact_kth_nearest_of_the_standardised_embeddings():
    train, queries = blobs(500, 0) * np.arange(1, 9), blobs(20, 1, shift=0.5)
    monitor = OODMonitor(encoder, train, k=3)
    z = (train - train.mean(0)) / train.std(0)
    q = (queries - train.mean(0)) / train.std(0)
    brute = np.sort(np.linalg.norm(q[:, None] - z[None], axis=2), axis=1)[:, 2]
    np.testing.assert_allclose(monitor.distances(queries), brute, rtol=1e-4, atol=1e-4)
    assert OODMonitor(encoder, train[:2], k=5).distances(queries).shape == (20,)  # k beyond the rows: the farthest


def test_calibrated_threshold_sets_the_false_alarm_rate():
    monitor = OODMonitor(encoder, blobs(2000, 0), k=1, debounce=1)
    threshold = monitor.calibrate(blobs(1000, 1), quantile=0.95)
    fresh = monitor.distances(blobs(2000, 2))
    assert 0.02 < np.mean(fresh > threshold) < 0.09  # about 5% of new in-distribution frames
    far = monitor.distances(blobs(100, 3, shift=6.0))
    assert np.all(far > threshold)


def test_debounce_then_latched_until_reset():
    monitor = OODMonitor(encoder, blobs(500, 0), debounce=3)
    monitor.calibrate(blobs(300, 1), quantile=0.99)
    inside, outside = {"x": np.zeros(8)}, {"x": np.full(8, 10.0)}
    assert not monitor.observe(inside).over
    assert monitor.observe(outside).over and not monitor.stopped
    assert not monitor.observe(inside).over  # a single odd frame resets nothing but the count
    for _ in range(2):
        assert not monitor.observe(outside).stopped
    reading = monitor.observe(outside)
    assert reading.stopped and reading.consecutive == 3 and "threshold" in monitor.stop_reason
    for _ in range(5):
        assert monitor.observe(inside).stopped  # latched: good frames do not release it
    monitor.reset()
    assert not monitor.stopped and not monitor.observe(inside).stopped
    assert monitor.counts["stops"] == 1


def test_non_finite_embedding_counts_as_out_of_distribution():
    monitor = OODMonitor(encoder, blobs(100, 0), threshold=3.0, debounce=1)
    assert monitor.observe({"x": np.full(8, np.nan)}).stopped


def test_clear_errors():
    with pytest.raises(ConfigError, match="threshold"):
        OODMonitor(encoder, blobs(10, 0)).observe({"x": np.zeros(8)})
    with pytest.raises(ConfigError, match="debounce"):
        OODMonitor(encoder, blobs(10, 0), debounce=0)
    with pytest.raises(ConfigError, match="NaN"):
        OODMonitor(encoder, np.full((3, 2), np.nan))
    with pytest.raises(ConfigError, match="8"):
        OODMonitor(encoder, blobs(10, 0)).calibrate(blobs(5, 1, dim=4))


def test_monitor_from_dataset_calibrates_on_held_out_episodes(tmp_path):
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies import PolicySpec

    buf = ReplayBuffer.create(tmp_path / "ds", attrs={"task": "reach", "dt": 0.1})
    rng = np.random.default_rng(0)
    for e in range(10):
        n = 30
        buf.add_episode({"joint_pos": rng.normal(0, 0.1, (n, 7)).astype(np.float32),
                         "action": np.zeros((n, 8), np.float32)})

    class Encoder:
        spec = PolicySpec(image_keys=(), image_shape=(0, 0, 3), lowdim_dims={"joint_pos": 7}, action_dim=8,
                          dt=0.1, horizon=4, n_obs_steps=2, n_action_steps=2)

        def encode(self, obs):
            return obs["joint_pos"].reshape(-1)

    monitor = monitor_from_dataset(Encoder(), tmp_path / "ds", samples=100, quantile=0.99, debounce=2)
    assert monitor.threshold > 0 and len(monitor.index) <= 100
    assert not monitor.observe({"joint_pos": np.zeros((2, 7), np.float32)}).over
    assert monitor.observe({"joint_pos": np.ones((2, 7), np.float32)}).over


class _ScoringModel:
    """A model with its own OOD score (like ALT): the mean pixel value of the last frame."""

    policy_type = "toy"
    spec = None
    threshold = 100.0

    def ood_score(self, obs):
        return float(obs["img"][-1].mean())


def test_model_score_monitor_debounces_and_latches_on_the_models_own_score():
    monitor = ModelScoreMonitor(_ScoringModel(), debounce=2)
    dark, bright = {"img": np.zeros((2, 4, 4, 3))}, {"img": np.full((2, 4, 4, 3), 200.0)}
    assert monitor.threshold == 100.0 and not monitor.observe(dark).over
    assert monitor.observe(bright).over and not monitor.stopped  # one frame is noise
    assert monitor.observe(bright).stopped and "score 200 > threshold 100" in monitor.stop_reason
    assert monitor.observe(dark).stopped  # latched
    monitor.reset()
    assert not monitor.stopped and monitor.counts == {"frames": 4, "over": 2, "stops": 1}
    nan = {"img": np.full((2, 4, 4, 3), np.nan)}
    assert monitor.observe(nan).score == float("inf")


def test_model_score_monitor_needs_a_model_with_its_own_score():
    class NoScore:
        policy_type, spec = "dp", None

    with pytest.raises(ConfigError, match="'dp' model has no OOD score of its own"):
        ModelScoreMonitor(NoScore())


def image_spec():
    from fastdp_ros.policies import PolicySpec

    return PolicySpec(image_keys=("img_front", "img_wrist"), image_shape=(8, 8, 3), lowdim_dims={}, action_dim=2,
                      dt=0.1, horizon=2, n_obs_steps=2, n_action_steps=1)


@settings(max_examples=40, deadline=None)
@given(colour=st.lists(st.integers(0, 255), min_size=3, max_size=3), noise=st.floats(0.0, 3.0),
       step=st.integers(10, 127), channel=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_blank_frames_are_told_from_frames_with_any_structure(colour, noise, step, channel, seed):
    rng = np.random.default_rng(seed)
    flat = np.clip(np.asarray(colour) + rng.uniform(-noise, noise, (2, 8, 8, 3)), 0, 255).astype(np.uint8)
    assert blank_camera({"img_front": flat}, ("img_front",)) is not None  # a plain colour with sensor noise
    edge = np.full((2, 8, 8, 3), colour, dtype=np.int64)
    edge[:, :, 4:, channel] += step if colour[channel] + step <= 255 else -step  # one edge of `step` levels
    assert blank_camera({"img_front": edge.astype(np.uint8)}, ("img_front",)) is None


def test_a_blank_camera_frame_stops_whatever_the_score():
    monitor = OODMonitor(lambda obs: np.zeros(2), blobs(50, 0, dim=2), threshold=1e9, debounce=1, spec=image_spec())
    rng = np.random.default_rng(0)
    scene = {k: rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8) for k in ("img_front", "img_wrist")}
    assert not monitor.observe(scene).over
    covered = {**scene, "img_wrist": np.concatenate([scene["img_wrist"][:1], np.full((1, 8, 8, 3), (150, 107, 91),
                                                                                      np.uint8)])}
    reading = monitor.observe(covered)
    assert reading.stopped and "'img_wrist' sends a blank frame" in monitor.stop_reason
    monitor.reset()
    old_blank = {**scene, "img_front": np.concatenate([np.zeros((1, 8, 8, 3), np.uint8), scene["img_front"][1:]])}
    assert not monitor.observe(old_blank).over  # only the newest frame counts
