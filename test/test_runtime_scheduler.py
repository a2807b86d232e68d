"""ActionScheduler: chunks on a time axis, latency compensation, blending, interpolation, underrun."""

import numpy as np
import pytest

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.scheduler import ActionScheduler, InvalidChunk, knot_times

DT, N_OBS, H = 0.1, 2, 8


def ramp_chunk(start=0.0, slope=1.0, dim=2):
    """Action j = start + slope * j in every dimension."""
    return np.tile((start + slope * np.arange(H))[:, None], (1, dim))


def test_knot_times_follow_the_dataset_convention():
    # index n_obs_steps - 1 is "now" in the window; its action is reached one dt later
    t = knot_times(10.0, H, DT, N_OBS, lead_steps=1)
    assert t[N_OBS - 1] == pytest.approx(10.1)
    assert t[N_OBS - 2] == pytest.approx(10.0)
    np.testing.assert_allclose(np.diff(t), DT)


def test_interpolates_to_the_command_rate_and_drops_the_past():
    s = ActionScheduler(2, crossfade_s=0.0)
    t_obs = 10.0
    dropped = s.add_chunk(ramp_chunk(), t_obs, DT, N_OBS, now=10.25)  # 250 ms of latency
    # knots at 10.0, 10.1, ..., 10.7; those before 10.2 are in the past (10.2 is kept for interpolation)
    assert dropped == 2
    # action value == (t - t_obs) / dt on the knot grid (action j at t_obs + (j - 1 + 1) dt = t_obs + j dt)
    for now in (10.25, 10.3, 10.3333, 10.69):
        np.testing.assert_allclose(s.sample(now), (now - t_obs) / DT, atol=1e-9)
    assert s.sample(10.71) is None  # past the last knot: underrun
    assert s.counts["underruns"] == 1


def test_crossfade_starts_where_the_current_command_is():
    s = ActionScheduler(2, blend="crossfade", crossfade_s=0.1)
    s.add_chunk(ramp_chunk(0.0), 10.0, DT, N_OBS, now=10.0)
    before = s.sample(10.2)
    s.add_chunk(ramp_chunk(5.0), 10.1, DT, N_OBS, now=10.2)  # a very different plan arrives
    np.testing.assert_allclose(s.sample(10.2), before)  # no jump at arrival
    mid = s.sample(10.25)
    old, new = (10.25 - 10.0) / DT, 5.0 + (10.25 - 10.1) / DT
    np.testing.assert_allclose(mid, 0.5 * old + 0.5 * new)
    np.testing.assert_allclose(s.sample(10.35), 5.0 + (10.35 - 10.1) / DT)  # fully switched
    assert s.n_chunks == 1  # the replaced chunk is forgotten


def test_temporal_ensemble_averages_overlapping_chunks():
    s = ActionScheduler(1, blend="ensemble", crossfade_s=0.0, ensemble_decay=0.0)
    s.add_chunk(np.zeros((H, 1)), 10.0, DT, N_OBS, now=10.0)
    s.add_chunk(np.ones((H, 1)), 10.0, DT, N_OBS, now=10.0)
    s.add_chunk(np.full((H, 1), 2.0), 10.05, DT, N_OBS, now=10.05)
    np.testing.assert_allclose(s.sample(10.1), [1.0])
    favour_new = ActionScheduler(1, blend="ensemble", crossfade_s=0.0, ensemble_decay=100.0)
    favour_new.add_chunk(np.zeros((H, 1)), 10.0, DT, N_OBS, now=10.0)
    favour_new.add_chunk(np.ones((H, 1)), 10.1, DT, N_OBS, now=10.1)
    assert favour_new.sample(10.2)[0] > 0.99


def test_invalid_and_stale_chunks():
    s = ActionScheduler(2)
    with pytest.raises(InvalidChunk, match="NaN"):
        s.add_chunk(np.r_[ramp_chunk()[:-1], [[np.nan, 0.0]]], 10.0, DT, N_OBS, now=10.0)
    with pytest.raises(InvalidChunk, match="shape"):
        s.add_chunk(np.zeros((H, 3)), 10.0, DT, N_OBS, now=10.0)
    with pytest.raises(InvalidChunk, match="numeric"):
        s.add_chunk("not actions", 10.0, DT, N_OBS, now=10.0)
    assert s.sample(10.0) is None and s.counts["rejected"] == 3
    s.add_chunk(ramp_chunk(), 10.5, DT, N_OBS, now=10.6)
    s.add_chunk(ramp_chunk(9.0), 10.4, DT, N_OBS, now=10.6)  # older observation than the plan in use
    assert s.counts["stale_chunks"] == 1
    np.testing.assert_allclose(s.sample(10.6), (10.6 - 10.5) / DT)
    assert s.used_t_obs == 10.5
    s.add_chunk(ramp_chunk(), 11.0, DT, N_OBS, now=13.0)  # entirely in the past
    assert s.sample(13.0) is None


def test_bad_options():
    with pytest.raises(ConfigError, match="blend"):
        ActionScheduler(2, blend="average")
    with pytest.raises(ConfigError, match="crossfade"):
        ActionScheduler(2, crossfade_s=-1.0)
