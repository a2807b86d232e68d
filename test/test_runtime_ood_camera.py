"""runtime.ood.CameraFeatureMonitor: every camera scored on its own, the largest counts."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.ood import CameraFeatureMonitor, load_camera_tables, save_camera_tables

RNG = np.random.default_rng(0)
TABLES = {"img_front": RNG.normal(size=(300, 8)), "img_wrist": RNG.normal(size=(300, 8)) * 3 + 1}


def features(obs):
    return {k: np.asarray(obs[k], dtype=np.float64)[:, -1] for k in TABLES if k in obs}


def make_monitor(**kw):
    return CameraFeatureMonitor(features, TABLES, {"img_front": 1.0, "img_wrist": 2.0}, threshold=1.5, debounce=1,
                                **kw)


def obs_of(front, wrist):
    return {"img_front": np.asarray(front)[None], "img_wrist": np.asarray(wrist)[None]}


@settings(max_examples=30, deadline=None)
@given(row=st.integers(0, 299), camera=st.sampled_from(sorted(TABLES)), shift=st.floats(5.0, 50.0))
def test_one_failed_camera_is_not_outvoted_by_the_healthy_one(row, camera, shift):
    monitor = make_monitor()
    nominal = {k: TABLES[k][row] for k in TABLES}
    assert monitor.score(obs_of(nominal["img_front"], nominal["img_wrist"])) == pytest.approx(0.0, abs=1e-5)
    broken = {**nominal, camera: nominal[camera] + shift * TABLES[camera].std(0)}
    per_camera = monitor.camera_scores({k: np.asarray(v)[None, None] for k, v in broken.items()})
    score = monitor.score({k: np.asarray(v)[None] for k, v in broken.items()})
    assert score == pytest.approx(max(float(v[0]) for v in per_camera.values()))
    assert per_camera[camera][0] > 1.5 and monitor.observe({k: np.asarray(v)[None] for k, v in broken.items()}).over


def test_each_camera_is_divided_by_its_own_scale():
    a = make_monitor()
    b = CameraFeatureMonitor(features, TABLES, {"img_front": 1.0, "img_wrist": 4.0})
    far = {"img_front": TABLES["img_front"][0][None, None], "img_wrist": (TABLES["img_wrist"][0] + 30.0)[None, None]}
    assert a.camera_scores(far)["img_wrist"][0] == pytest.approx(2 * b.camera_scores(far)["img_wrist"][0])


def test_non_finite_features_score_inf_and_bad_tables_are_refused(tmp_path):
    monitor = make_monitor()
    assert math.isinf(monitor.score(obs_of(np.full(8, np.nan), TABLES["img_wrist"][0])))
    with pytest.raises(ConfigError, match="a feature table and a scale for every camera"):
        CameraFeatureMonitor(features, TABLES, {"img_front": 1.0})
    with pytest.raises(ConfigError, match="scales must be finite and > 0"):
        CameraFeatureMonitor(features, TABLES, {"img_front": 1.0, "img_wrist": 0.0})
    path = tmp_path / "table.safetensors"
    save_camera_tables(path, TABLES, {"img_front": 1.0, "img_wrist": 2.0})
    tables, scales = load_camera_tables(path)
    assert scales == {"img_front": 1.0, "img_wrist": 2.0}
    assert np.allclose(tables["img_wrist"], TABLES["img_wrist"], atol=0.02)  # stored as float16
    path.write_bytes(b"not a table")
    with pytest.raises(ConfigError, match="is not a camera feature table.*--camera-table"):
        load_camera_tables(path)


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 299)), min_size=2, max_size=6),
       shift=st.floats(0.0, 20.0))
def test_only_the_camera_with_a_new_frame_is_encoded_and_the_score_is_unchanged(rows, shift):
    seen = []

    def counting(obs):
        seen.append(sorted(k for k in obs if k in TABLES))
        return features(obs)

    monitor = CameraFeatureMonitor(counting, TABLES, {"img_front": 1.0, "img_wrist": 2.0}, threshold=1.5, debounce=1)
    reference = make_monitor()
    previous = None
    for front, wrist in rows:
        obs = {"img_front": (TABLES["img_front"][front] + shift)[None],
               "img_wrist": (TABLES["img_wrist"][wrist] - shift)[None]}
        seen.clear()
        assert monitor.score(obs) == pytest.approx(float(reference.score_batch({k: v[None] for k, v in obs.items()})[0]))
        changed = sorted(k for k in TABLES if previous is None or not np.array_equal(previous[k], obs[k]))
        assert seen == ([changed] if changed else [])
        previous = obs
