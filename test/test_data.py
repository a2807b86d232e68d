"""Dataset layer: zarr store, windows, normalizer, split, fingerprint (tiny data, no torch)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastdp_ros.data import (
    Normalizer,
    ReplayBuffer,
    SequenceSampler,
    WindowDataset,
    dataset_fingerprint,
    split_episodes,
)
from fastdp_ros.data.replay_buffer import chunks_for
from fastdp_ros.errors import ConfigError, DatasetError, FastDPError

ATTRS = {"task": "push", "robot": "fr3", "cameras": ["front", "wrist"], "dt": 0.1,
         "image_size": [8, 10]}
LENGTHS = [5, 3, 7]


def make_episode(ep: int, length: int) -> dict[str, np.ndarray]:
    """Every value encodes its episode and frame: joint_pos[t] == 100*ep + t."""
    t = np.arange(length)
    code = 100 * ep + t
    img = np.broadcast_to((code % 256).astype(np.uint8)[:, None, None, None], (length, 8, 10, 3))
    return {
        "img_front": np.ascontiguousarray(img),
        "joint_pos": np.repeat(code[:, None], 7, axis=1).astype(np.float32),
        "action": np.repeat(code[:, None], 8, axis=1).astype(np.float32) + 0.5,
        "reward": (t == length - 1).astype(np.float32),
    }


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "push.zarr"
    rb = ReplayBuffer.create(path, ATTRS)
    for ep, length in enumerate(LENGTHS):
        rb.add_episode(make_episode(ep, length), seed=10 + ep, success=ep != 1)
    return path


# ---------------------------------------------------------------------------- store
def test_round_trip(store):
    rb = ReplayBuffer.open(store)
    assert rb.n_episodes == 3
    assert rb.n_steps == sum(LENGTHS)
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum(LENGTHS))
    assert rb.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(rb.episode_lengths, LENGTHS)
    assert rb.keys == ["action", "img_front", "joint_pos", "reward"]
    assert rb.attrs == ATTRS
    np.testing.assert_array_equal(rb.episode_meta("seed"), [10, 11, 12])
    np.testing.assert_array_equal(rb.episode_meta("episode_success"), [True, False, True])
    assert rb.meta_keys == ["episode_seed", "episode_success"]
    np.testing.assert_array_equal(rb.episode_meta("episode_seed"), [10, 11, 12])
    for ep, length in enumerate(LENGTHS):
        expected = make_episode(ep, length)
        got = rb.get_episode(ep)
        assert set(got) == set(expected)
        for k in expected:
            assert got[k].dtype == expected[k].dtype
            np.testing.assert_array_equal(got[k], expected[k])
    assert rb.episode_slice(1) == slice(5, 8)
    assert rb.episode_slice(-1) == slice(8, 15)
    assert set(rb.get_episode(2, keys=["reward"])) == {"reward"}
    assert rb["img_front"].shape == (15, 8, 10, 3)
    mem = rb.load_to_memory(["joint_pos"])
    assert isinstance(mem["joint_pos"], np.ndarray) and mem["joint_pos"].shape == (15, 7)
    with pytest.raises(IndexError):
        rb.get_episode(3)


def test_layout_is_diffusion_policy_zarr_v2(store):
    root = zarr.open_group(str(store), mode="r")
    assert (store / ".zgroup").is_file()  # zarr format 2, readable by zarr 2 and 3
    np.testing.assert_array_equal(root["meta/episode_ends"][:], np.cumsum(LENGTHS))
    assert root["data/joint_pos"].shape == (15, 7)
    assert root["meta/episode_seed"].shape == (3,)
    # images are chunked as whole frames, a few per chunk
    assert root["data/img_front"].chunks[1:] == (8, 10, 3)
    assert 1 <= root["data/img_front"].chunks[0] <= 8
    assert chunks_for((96, 96, 3), np.uint8) == (8, 96, 96, 3)
    assert chunks_for((480, 640, 3), np.uint8) == (1, 480, 640, 3)
    assert chunks_for((8,), np.float32)[0] >= 256


def test_append_after_reopen(store):
    rb = ReplayBuffer.open(store, mode="r+")
    assert rb.add_episode(make_episode(3, 4), seed=13, success=True) == 3
    rb2 = ReplayBuffer.open(store)
    assert rb2.n_episodes == 4 and rb2.n_steps == 19
    np.testing.assert_array_equal(rb2.get_episode(3)["joint_pos"][:, 0], [300, 301, 302, 303])
    np.testing.assert_array_equal(rb2.episode_meta("seed"), [10, 11, 12, 13])


def test_read_only_mode_refuses_writes(store):
    rb = ReplayBuffer.open(store)
    with pytest.raises(DatasetError, match="read-only"):
        rb.add_episode(make_episode(3, 2), seed=1, success=True)


def test_empty_store_and_set_episode_meta(tmp_path):
    rb = ReplayBuffer.create(tmp_path / "e.zarr", {})
    assert rb.n_episodes == 0 and rb.n_steps == 0 and rb.keys == []
    rb = ReplayBuffer.open(tmp_path / "e.zarr")
    assert rb.n_episodes == 0
    rb = ReplayBuffer.open(tmp_path / "e.zarr", mode="r+")
    rb.add_episode({"a": np.zeros((2, 3))})
    rb.add_episode({"a": np.ones((1, 3))})
    rb.set_episode_meta("success", [True, False])
    np.testing.assert_array_equal(
        ReplayBuffer.open(tmp_path / "e.zarr").episode_meta("success"), [True, False]
    )


def test_create_overwrite(store):
    with pytest.raises(DatasetError, match="already exists"):
        ReplayBuffer.create(store, ATTRS)
    rb = ReplayBuffer.create(store, {"task": "lift"}, overwrite=True)
    assert rb.n_episodes == 0 and rb.attrs == {"task": "lift"}


def test_overwrite_refuses_non_store(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a zarr dataset"):
        ReplayBuffer.create(tmp_path, {}, overwrite=True)
    assert (tmp_path / "notes.txt").exists()


# ---------------------------------------------------------------------------- bad input
def test_missing_required_keys(store):
    with pytest.raises(DatasetError) as err:
        ReplayBuffer.open(store, required_keys=["img_front", "img_wrist", "tcp_pose"])
    assert "img_wrist" in str(err.value) and "tcp_pose" in str(err.value)


def test_inconsistent_lengths(store):
    root = zarr.open_group(str(store), mode="r+")
    root["data/joint_pos"].resize((14, 7))
    with pytest.raises(DatasetError) as err:
        ReplayBuffer.open(store)
    msg = str(err.value)
    assert "data/joint_pos" in msg and "14" in msg and "15" in msg
    assert "action" not in msg


def test_episode_ends_not_increasing(store):
    root = zarr.open_group(str(store), mode="r+")
    root["meta/episode_ends"][1] = 5
    with pytest.raises(DatasetError, match="strictly increasing"):
        ReplayBuffer.open(store)


def test_existing_path_without_overwrite(tmp_path):
    with pytest.raises(DatasetError, match="already exists"):
        ReplayBuffer.create(tmp_path, {})


def test_unwritable_path_parent_is_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "data.zarr"
    with pytest.raises(DatasetError) as err:
        ReplayBuffer.create(target, {})
    assert str(target) in str(err.value)
    assert err.value.__cause__ is None


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_unwritable_path_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DatasetError) as err:
            ReplayBuffer.create(ro / "data.zarr", {})
        assert str(ro / "data.zarr") in str(err.value)
    finally:
        ro.chmod(0o700)


def test_open_non_store(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ReplayBuffer.open(tmp_path / "nope.zarr")
    with pytest.raises(DatasetError, match="not a zarr dataset"):
        ReplayBuffer.open(tmp_path)
    (tmp_path / "f.zarr").write_text("not zarr")
    with pytest.raises(DatasetError, match="not a zarr dataset"):
        ReplayBuffer.open(tmp_path / "f.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(DatasetError, match="not a ReplayBuffer"):
        ReplayBuffer.open(tmp_path / "g.zarr")


def test_add_episode_rejects_bad_episodes(store):
    rb = ReplayBuffer.open(store, mode="r+")
    ep = make_episode(3, 4)
    with pytest.raises(DatasetError, match="same length"):
        rb.add_episode({**ep, "reward": np.zeros(3)}, seed=1, success=True)
    with pytest.raises(DatasetError, match="missing \\['reward'\\]"):
        rb.add_episode({k: v for k, v in ep.items() if k != "reward"}, seed=1, success=True)
    with pytest.raises(DatasetError, match="unexpected \\['extra'\\]"):
        rb.add_episode({**ep, "extra": np.zeros(4)}, seed=1, success=True)
    with pytest.raises(DatasetError, match="per-step shape"):
        rb.add_episode({**ep, "joint_pos": np.zeros((4, 6))}, seed=1, success=True)
    with pytest.raises(DatasetError, match="empty episode"):
        rb.add_episode({k: v[:0] for k, v in ep.items()}, seed=1, success=True)
    with pytest.raises(DatasetError, match="metadata"):
        rb.add_episode(ep, seed=1)
    with pytest.raises(DatasetError, match="dtype"):
        rb.add_episode({**ep, "note": np.array(["a"] * 4)}, seed=1, success=True)
    # nothing was written by the failed calls
    assert ReplayBuffer.open(store).n_episodes == 3


def test_attrs_must_be_json(tmp_path):
    with pytest.raises(DatasetError, match="JSON"):
        ReplayBuffer.create(tmp_path / "a.zarr", {"bad": object()})
    rb = ReplayBuffer.create(tmp_path / "b.zarr", {"dt": np.float64(0.1), "size": (96, 96)})
    assert rb.attrs == {"dt": 0.1, "size": [96, 96]}


def test_errors_are_fastdp_errors():
    assert issubclass(DatasetError, FastDPError)


# ---------------------------------------------------------------------------- windows
def expected_windows(length, horizon, pad_before, pad_after):
    return max(0, length - horizon + pad_before + pad_after + 1)


def test_window_count_and_padding(store):
    rb = ReplayBuffer.open(store)
    ds = WindowDataset(rb, ["joint_pos", "img_front"], n_obs_steps=2, horizon=4, n_action_steps=2)
    assert ds.pad_before == 1 and ds.pad_after == 1
    assert len(ds) == sum(expected_windows(n, 4, 1, 1) for n in LENGTHS)  # 4 + 2 + 6
    assert len(ds) == 12

    first = ds[0]
    assert set(first) == {"obs", "action"}
    assert first["obs"]["joint_pos"].shape == (2, 7)
    assert first["obs"]["img_front"].shape == (2, 8, 10, 3)
    assert first["obs"]["img_front"].dtype == np.uint8
    assert first["action"].shape == (4, 8)
    # missing history repeats frame 0
    np.testing.assert_array_equal(first["obs"]["joint_pos"][:, 0], [0, 0])
    np.testing.assert_array_equal(first["action"][:, 0], [0.5, 0.5, 1.5, 2.5])
    assert ds.frame_of(0) == (0, 0)

    # last window of episode 0 (length 5) repeats the final action
    last0 = max(i for i in range(len(ds)) if ds.episode_index_of(i) == 0)
    np.testing.assert_array_equal(ds[last0]["action"][:, 0], [2.5, 3.5, 4.5, 4.5])
    np.testing.assert_array_equal(ds[last0]["obs"]["joint_pos"][:, 0], [2, 3])
    last = ds[len(ds) - 1]
    np.testing.assert_array_equal(last["action"][:, 0], [204.5, 205.5, 206.5, 206.5])
    assert ds[-1]["action"].shape == (4, 8)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_windows_never_cross_episodes(store):
    rb = ReplayBuffer.open(store)
    for n_obs, horizon, n_act in [(2, 4, 2), (1, 3, 3), (3, 6, 4), (2, 16, 8)]:
        ds = WindowDataset(rb, ["joint_pos", "img_front"], n_obs_steps=n_obs, horizon=horizon,
                           n_action_steps=n_act)
        assert len(ds) == sum(
            expected_windows(n, horizon, n_obs - 1, n_act - 1) for n in LENGTHS
        )
        rows = ds.current_rows()
        for i in range(len(ds)):
            ep, frame = ds.frame_of(i)
            sample = ds[i]
            codes = np.concatenate([sample["obs"]["joint_pos"][:, 0], sample["action"][:, 0] - 0.5])
            assert np.all(codes // 100 == ep), (i, codes)
            assert sample["obs"]["joint_pos"][-1, 0] == 100 * ep + frame
            obs = sample["obs"]
            assert np.all(obs["img_front"][:, 0, 0, 0] == obs["joint_pos"][:, 0])
            # steps advance by one inside the episode and only repeat at its edges
            assert np.all(np.diff(codes[n_obs:]) >= 0) and np.all(np.diff(codes[:n_obs]) >= 0)
            assert rows[i] == rb.episode_slice(ep).start + frame


def test_windows_from_dict_and_episode_subset(store):
    rb = ReplayBuffer.open(store)
    data = {**rb.load_to_memory(), "episode_ends": rb.episode_ends}
    ds = WindowDataset(data, ["joint_pos"], n_obs_steps=2, horizon=4, n_action_steps=2,
                       episodes=[2, 0])
    assert {ds.episode_index_of(i) for i in range(len(ds))} == {0, 2}
    assert len(ds) == expected_windows(7, 4, 1, 1) + expected_windows(5, 4, 1, 1)  # 6 + 4
    lazy = WindowDataset(rb, ["joint_pos"], n_obs_steps=2, horizon=4, n_action_steps=2,
                         episodes=[2, 0], in_memory=False)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["action"], lazy[i]["action"])
        np.testing.assert_array_equal(ds[i]["obs"]["joint_pos"], lazy[i]["obs"]["joint_pos"])


def test_window_defaults_and_short_episodes(store):
    rb = ReplayBuffer.open(store)
    ds = WindowDataset(rb, ["joint_pos"])  # n_obs 2, horizon 16, n_action 8
    assert len(ds) == 0  # every episode is shorter than 16 - 1 - 7
    s = SequenceSampler([5, 8], sequence_length=3, pad_before=2, pad_after=2)
    assert len(s) == (5 + 2) + (3 + 2)
    np.testing.assert_array_equal(s.rows(0), [0, 0, 0])
    np.testing.assert_array_equal(s.rows(len(s) - 1), [7, 7, 7])


def test_window_bad_config(store):
    rb = ReplayBuffer.open(store)
    with pytest.raises(DatasetError, match="img_wrist"):
        WindowDataset(rb, ["img_wrist"])
    with pytest.raises(ConfigError):
        WindowDataset(rb, ["joint_pos"], n_obs_steps=3, horizon=2)
    with pytest.raises(ConfigError):
        WindowDataset(rb, ["joint_pos"], n_obs_steps=2, horizon=4, n_action_steps=4)
    with pytest.raises(DatasetError, match="out of range"):
        WindowDataset(rb, ["joint_pos"], horizon=4, n_action_steps=2, episodes=[5])


# ---------------------------------------------------------------------------- normalizer
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 4)), elements=finite),
    mode=st.sampled_from(["limits", "gaussian"]),
    const_dim=st.booleans(),
)
def test_normalizer_round_trip(x, mode, const_dim):
    if const_dim:
        x[:, 0] = x[0, 0]
    norm = Normalizer.fit({"a": x}, {"a": mode})
    y = norm.normalize("a", x)
    assert np.all(np.isfinite(y))
    tol = 1e-9 * (1.0 + np.abs(x).max())
    np.testing.assert_allclose(norm.unnormalize("a", y), x, rtol=0, atol=tol)
    if const_dim:
        np.testing.assert_allclose(y[:, 0], 0.0, atol=1e-9)
    if mode == "limits":
        assert y.min() >= -1 - 1e-9 and y.max() <= 1 + 1e-9
    # JSON round trip gives the same map
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(back.normalize("a", x), y)


def test_normalizer_modes_and_scale_offset():
    rng = np.random.default_rng(0)
    act = rng.normal(3.0, 2.0, size=(200, 3))
    act[:, 2] = 1.25  # constant dimension
    img = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    norm = Normalizer.fit(
        {"action": act, "joint_pos": act, "img": img},
        {"action": "limits", "joint_pos": "gaussian", "img": "image", "t": "identity"},
    )
    y = norm.normalize("action", act)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[:, :2].min(0), -1)
    np.testing.assert_allclose(y[:, :2].max(0), 1)
    np.testing.assert_array_equal(y[:, 2], 0)
    g = norm.normalize("joint_pos", act)
    np.testing.assert_allclose(g[:, :2].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(g[:, :2].std(0), 1, atol=1e-12)
    # leading batch/time dims, float32 in -> float32 out
    batch = act.astype(np.float32).reshape(10, 20, 3)
    yb = norm.normalize("action", batch)
    assert yb.dtype == np.float32 and yb.shape == (10, 20, 3)
    scale, offset = norm.scale_offset("action")
    assert scale.dtype == np.float32 and scale.shape == (3,)
    np.testing.assert_allclose(batch * scale + offset, yb, atol=1e-5)
    yi = norm.normalize("img", img)
    assert yi.dtype == np.float32 and yi.min() >= -1 and yi.max() <= 1
    np.testing.assert_allclose(norm.normalize("img", np.array([0, 255], np.uint8)), [-1, 1])
    np.testing.assert_allclose(norm.unnormalize("img", yi), img, atol=1e-4)
    np.testing.assert_array_equal(norm.normalize("t", np.arange(3.0)), np.arange(3.0))
    # serialisation
    d = norm.to_dict()
    text = json.dumps(d)
    back = Normalizer.from_dict(json.loads(text))
    assert back.keys == norm.keys
    for key, x in [("action", act), ("joint_pos", act), ("img", img)]:
        np.testing.assert_array_equal(back.normalize(key, x), norm.normalize(key, x))
        assert back.mode(key) == norm.mode(key)


def test_normalizer_fits_on_replay_buffer(store):
    rb = ReplayBuffer.open(store)
    norm = Normalizer.fit(rb, {"action": "limits", "img_front": "image"})
    np.testing.assert_allclose(norm.stats("action")["min"], 0.5)
    np.testing.assert_allclose(norm.stats("action")["max"], 206.5)


def test_normalizer_errors():
    norm = Normalizer.fit({"a": np.zeros((3, 2))}, {"a": "limits"})
    with pytest.raises((DatasetError, ConfigError), match="'b'"):
        norm.normalize("b", np.zeros(2))
    with pytest.raises(DatasetError, match="shape"):
        norm.normalize("a", np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="unknown normalizer mode"):
        Normalizer.fit({"a": np.zeros((3, 2))}, {"a": "minmax"})
    with pytest.raises(DatasetError, match="no data for key 'z'"):
        Normalizer.fit({"a": np.zeros((3, 2))}, {"z": "gaussian"})
    with pytest.raises(DatasetError, match="NaN"):
        Normalizer.fit({"a": np.array([[0.0], [np.nan]])}, {"a": "limits"})
    with pytest.raises(ConfigError):
        Normalizer.from_dict({"keys": {"a": {"mode": "limits", "min": [0.0]}}})


# ---------------------------------------------------------------------------- split
def test_split_deterministic_and_disjoint():
    for n in [2, 3, 10, 57]:
        train, val = split_episodes(n, val_ratio=0.1, seed=3)
        train2, val2 = split_episodes(n, val_ratio=0.1, seed=3)
        np.testing.assert_array_equal(train, train2)
        np.testing.assert_array_equal(val, val2)
        assert len(val) >= 1 and len(train) >= 1
        assert not set(train) & set(val)
        assert sorted(set(train) | set(val)) == list(range(n))
    assert len(split_episodes(100, 0.2, seed=0)[1]) == 20
    assert not np.array_equal(split_episodes(100, 0.2, seed=0)[1], split_episodes(100, 0.2, 1)[1])
    train, val = split_episodes(1)
    assert train.tolist() == [0] and val.tolist() == []
    assert split_episodes(10, val_ratio=0.0)[1].tolist() == []
    with pytest.raises(DatasetError):
        split_episodes(0)
    with pytest.raises(ConfigError):
        split_episodes(10, val_ratio=1.0)


# ---------------------------------------------------------------------------- fingerprint
def test_fingerprint(store, tmp_path):
    fp = dataset_fingerprint(ReplayBuffer.open(store))
    assert isinstance(fp, str) and len(fp) == 64
    assert dataset_fingerprint(store) == fp  # stable, path accepted
    # same content written again -> same fingerprint
    other = ReplayBuffer.create(tmp_path / "copy.zarr", ATTRS)
    for ep, length in enumerate(LENGTHS):
        other.add_episode(make_episode(ep, length), seed=10 + ep, success=ep != 1)
    assert dataset_fingerprint(other) == fp
    other.update_attrs({"task": "lift"})
    assert dataset_fingerprint(other) != fp
    rb = ReplayBuffer.open(store, mode="r+")
    rb.add_episode(make_episode(3, 2), seed=0, success=True)
    assert dataset_fingerprint(rb) != fp


def test_no_torch_import():
    import subprocess

    code = "import sys, fastdp_ros.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
