"""OODMonitor: kNN distances (faiss and numpy agree), calibrated threshold, debounce, latch."""

import numpy as np
import pytest

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.ood import KnnIndex, ModelScoreMonitor, OODMonitor, monitor_from_dataset


def blobs(n, seed, dim=8, shift=0.0):
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, dim))


def encoder(obs):
    return obs["x"]


def test_faiss_and_numpy_give_the_same_distances():
    pytest.importorskip("faiss")
    train, queries = blobs(500, 0), blobs(20, 1, shift=0.5)
    fa, npy = KnnIndex(train, use_faiss=True), KnnIndex(train, use_faiss=False)
    assert fa.backend == "faiss" and npy.backend == "numpy"
    np.testing.assert_allclose(fa.distances(queries, k=3), npy.distances(queries, k=3), rtol=1e-4, atol=1e-4)
    brute = np.sort(np.linalg.norm(queries[:, None] - train[None], axis=2), axis=1)[:, :3]
    np.testing.assert_allclose(npy.distances(queries, k=3), brute, rtol=1e-5, atol=1e-5)


def test_calibrated_threshold_sets_the_false_alarm_rate():
    monitor = OODMonitor(encoder, blobs(2000, 0), k=1, debounce=1)
    threshold = monitor.calibrate(blobs(1000, 1), quantile=0.95)
    fresh = monitor.distances(blobs(2000, 2))
    assert 0.02 < np.mean(fresh > threshold) < 0.09  # about 5% of new in-distribution frames
    far = monitor.distances(blobs(100, 3, shift=6.0))
    assert np.all(far > threshold)


def test_debounce_then_latched_until_reset():
    monitor = OODMonitor(encoder, blobs(500, 0), debounce=3, use_faiss=False)
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
    monitor = OODMonitor(encoder, blobs(100, 0), threshold=3.0, debounce=1, use_faiss=False)
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
    assert monitor.threshold > 0 and monitor.index.n <= 100
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
