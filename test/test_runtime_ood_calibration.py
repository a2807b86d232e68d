"""OOD threshold calibrated for false stops per hour of nominal operation (runtime.ood)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.ood import calibrate_false_stops, debounced_peaks, debounced_stops


def test_debounced_stops_count_runs_and_restart_after_each():
    s = [0.1, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9, 0.9]
    assert debounced_stops(s, 0.5, 1) == 7
    assert debounced_stops(s, 0.5, 2) == 3  # 0.9 0.9 | 0.9 0.9 | ... | 0.9 0.9
    assert debounced_stops(s, 0.5, 3) == 1
    assert debounced_stops([0.1, float("nan"), float("nan")], 0.5, 2) == 1  # NaN counts as over


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=60), min_size=1, max_size=5),
       st.integers(1, 4), st.floats(0, 1))
def test_a_threshold_at_or_above_every_debounced_peak_never_stops(seqs, debounce, t):
    peaks = np.concatenate([debounced_peaks(s, debounce) for s in seqs] + [np.zeros(0)])
    stops = sum(debounced_stops(s, t, debounce) for s in seqs)
    if len(peaks) == 0 or t >= peaks.max():
        assert stops == 0
    else:
        assert stops >= 1


def test_calibration_has_no_stop_on_the_recording_and_follows_the_target():
    rng = np.random.default_rng(0)
    seqs = [rng.gamma(2.0, 0.05, 120) for _ in range(200)]  # 200 episodes of 12 s at 10 Hz
    strict = calibrate_false_stops(seqs, debounce=1, check_period_s=0.1, target_per_hour=0.01)
    lax = calibrate_false_stops(seqs, debounce=1, check_period_s=0.1, target_per_hour=10.0)
    assert strict.stops_at_threshold == 0 and lax.stops_at_threshold == 0
    assert strict.threshold >= lax.threshold >= strict.zero_stop_threshold
    assert strict.hours == pytest.approx(200 * 120 * 0.1 / 3600)
    # debouncing can only lower the threshold needed
    assert calibrate_false_stops(seqs, 3, 0.1, 0.01).zero_stop_threshold <= strict.zero_stop_threshold
    # the per-frame 0.99 quantile (the old rule) stops the arm many times an hour on these
    per_frame = float(np.quantile(np.concatenate(seqs), 0.99))
    assert sum(debounced_stops(s, per_frame, 1) for s in seqs) / strict.hours > 100


def test_calibration_refuses_too_little_or_broken_data():
    with pytest.raises(ConfigError, match="too few"):
        calibrate_false_stops([np.zeros(20)], 1, 0.1, 1.0)
    with pytest.raises(ConfigError, match="NaN"):
        calibrate_false_stops([np.r_[np.zeros(200), np.nan]], 1, 0.1, 1.0)


def test_a_calibration_made_for_other_weights_is_refused(tmp_path):
    import json

    from fastdp_ros.policies import model_hash
    from fastdp_ros.runtime.ood import CALIBRATION_FILE, calibrated_threshold
    from test_engines import make_model

    model = make_model(tmp_path / "monitor")
    report = {"threshold": 0.4, "calibration": {"target_per_hour": 0.1}, "monitor_model_hash": model_hash(model)}
    (model / CALIBRATION_FILE).write_text(json.dumps(report))
    assert calibrated_threshold(model)[0] == 0.4
    report["monitor_model_hash"] = "0123456789abcdef"
    (model / CALIBRATION_FILE).write_text(json.dumps(report))
    with pytest.raises(ConfigError, match="calibrated for other weights.*re-run scripts/calibrate_ood.py"):
        calibrated_threshold(model)
