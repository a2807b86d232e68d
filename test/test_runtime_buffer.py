"""ObservationBuffer: streams at different rates -> n_obs_steps history at the dataset's dt."""

import math

import numpy as np
import pytest

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies import ObservationError, PolicySpec
from fastdp_ros.runtime.buffer import ObservationBuffer


def spec(**kw):
    base = dict(image_keys=("img_front",), image_shape=(4, 4, 3), lowdim_dims={"joint_pos": 7, "gripper": 1},
                action_dim=8, dt=0.1, horizon=8, n_obs_steps=3, n_action_steps=4)
    base.update(kw)
    return PolicySpec(**base)


def image(value):
    return np.full((4, 4, 3), value, np.uint8)


def test_history_at_dataset_dt_from_streams_at_different_rates():
    s = spec()
    buf = ObservationBuffer.for_spec(s)
    # camera at 30 Hz, joints at 500 Hz; values encode their stamps
    for i in range(31):
        t = i / 30
        buf.push("img_front", t, image(i))
    for i in range(600):
        t = i / 500
        buf.push("joint_pos", t, np.full(7, t))
        buf.push("gripper", t, [0.04])
    obs, t_obs = buf.observation(s)
    assert t_obs == pytest.approx(1.0)  # the camera is the stream that reached the least far
    assert obs["img_front"].shape == (3, 4, 4, 3) and obs["joint_pos"].shape == (3, 7)
    # frames at t_obs - 0.2, t_obs - 0.1, t_obs: camera frames 24, 27, 30 (exact multiples of 1/30)
    assert [int(f[0, 0, 0]) for f in obs["img_front"]] == [24, 27, 30]
    np.testing.assert_allclose(obs["joint_pos"][:, 0], [0.8, 0.9, 1.0], atol=1e-3)
    assert obs["joint_pos"].dtype == np.float32


def test_start_pads_with_the_oldest_sample_and_waits_for_every_stream():
    s = spec()
    buf = ObservationBuffer.for_spec(s)
    buf.push("img_front", 5.0, image(1))
    buf.push("joint_pos", 5.0, np.zeros(7))
    assert buf.observation(s) is None  # no gripper yet
    buf.push("gripper", 5.0, [0.04])
    obs, t_obs = buf.observation(s)
    assert t_obs == 5.0
    assert np.all(obs["img_front"] == 1)  # one frame repeated three times, as training windows pad


def test_staleness_per_stream():
    s = spec()
    buf = ObservationBuffer.for_spec(s, max_age_s={"img_front": 0.5})
    buf.clear(since=10.0)
    assert set(buf.stale(10.1)) == set()  # nothing expected yet: within the max age of the start
    assert set(buf.stale(10.3)) == {"joint_pos", "gripper"}  # default max age 2 * dt = 0.2 s
    assert math.isclose(buf.ages(10.3)["img_front"], 0.3)
    buf.push("joint_pos", 10.3, np.zeros(7))
    buf.push("gripper", 10.3, [0.0])
    buf.push("img_front", 10.3, image(0))
    assert buf.stale(10.45) == {}
    assert set(buf.stale(10.6)) == {"joint_pos", "gripper"}
    assert set(buf.stale(10.9)) == {"joint_pos", "gripper", "img_front"}


def test_bad_samples_are_refused_with_the_key_named():
    buf = ObservationBuffer.for_spec(spec())
    with pytest.raises(ObservationError, match="joint_pos.*NaN"):
        buf.push("joint_pos", 1.0, [0, 0, 0, np.nan, 0, 0, 0])
    with pytest.raises(ObservationError, match="joint_pos.*NaN"):
        buf.push("joint_pos", 1.0, np.full(7, 1e300))  # overflows float32
    with pytest.raises(ObservationError, match="shape"):
        buf.push("joint_pos", 1.0, np.zeros(6))
    with pytest.raises(ObservationError, match="uint8"):
        buf.push("img_front", 1.0, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ObservationError, match="stamp"):
        buf.push("gripper", math.nan, [0.0])
    with pytest.raises(ObservationError, match="not an array"):
        buf.push("joint_pos", 1.0, [[0.0], [0.0, 1.0]])
    assert buf.latest_stamp("joint_pos") is None
    assert buf.counts()["joint_pos"]["rejected"] == 4
    assert buf.push("tcp_pose", 1.0, np.zeros(7)) is False  # not a stream of this buffer: ignored


def test_out_of_order_samples_and_retention():
    s = spec(image_keys=(), lowdim_dims={"joint_pos": 7})
    buf = ObservationBuffer.for_spec(s, retention_s=1.0)
    for t in (0.0, 0.2, 0.1, 0.3):
        buf.push("joint_pos", t, np.full(7, t))
    obs, t_obs = buf.observation(s)
    assert t_obs == 0.3
    np.testing.assert_allclose(obs["joint_pos"][:, 0], [0.1, 0.2, 0.3])
    buf.push("joint_pos", 5.0, np.zeros(7))
    assert buf._streams["joint_pos"].stamps == [5.0]


def test_a_policy_needing_more_keys_is_a_config_error():
    buf = ObservationBuffer.for_spec(spec())
    with pytest.raises(ConfigError, match="object_state"):
        buf.observation(spec(lowdim_dims={"joint_pos": 7, "gripper": 1, "object_state": 10}))
    with pytest.raises(ConfigError, match="shape"):
        ObservationBuffer.for_spec(spec(), also=(spec(image_shape=(8, 8, 3)),))
