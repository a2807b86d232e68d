"""`fastdp import robomimic` on an HDF5 file the test writes with h5py in robomimic's layout."""

import json
import logging

import h5py
import numpy as np
import pytest

from fastdp_ros.cli.main import main
from fastdp_ros.data import ReplayBuffer

LENGTHS = (5, 8, 3)


def write_robomimic(path, lengths=LENGTHS, drop_actions_of=None, env_args=True, image_sizes=None):
    rng = np.random.default_rng(0)
    written = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if env_args:
            data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1,
                                                 "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}})
        for i, n in enumerate(lengths):  # written out of order: demo_10 must come after demo_2
            name = f"demo_{[0, 10, 2][i] if len(lengths) == 3 else i}"
            demo = data.create_group(name)
            size = (image_sizes or {}).get(i, (16, 16))
            d = {"actions": rng.normal(size=(n, 7)), "rewards": rng.random(n), "dones": np.arange(n) == n - 1,
                 "agentview_image": rng.integers(0, 256, (n, *size, 3), dtype=np.uint8),
                 "robot0_eef_pos": rng.normal(size=(n, 3)), "robot0_joint_pos": rng.normal(size=(n, 7))}
            if i != drop_actions_of:
                demo.create_dataset("actions", data=d["actions"])
            demo.create_dataset("rewards", data=d["rewards"])
            demo.create_dataset("dones", data=d["dones"].astype(np.int64))
            demo.attrs["num_samples"] = n
            obs = demo.create_group("obs")
            for k in ("agentview_image", "robot0_eef_pos", "robot0_joint_pos"):
                obs.create_dataset(k, data=d[k])
            written.append((name, d))
    return dict(written)


def test_robomimic_arrays_match_what_was_written(tmp_path):
    written = write_robomimic(tmp_path / "demo.hdf5")
    out = tmp_path / "ds"
    assert main(["import", "robomimic", str(tmp_path / "demo.hdf5"), "--out", str(out),
                 "--map", "robot0_joint_pos=joint_pos"]) == 0
    buf = ReplayBuffer.open(out)
    assert buf.keys == ["action", "done", "img_agentview", "joint_pos", "reward", "robot0_eef_pos"]
    assert buf.attrs["dt"] == pytest.approx(0.05) and buf.attrs["robot"] == "panda" and buf.attrs["task"] == "Lift"
    assert buf.attrs["cameras"] == ["agentview"]
    for i, name in enumerate(["demo_0", "demo_2", "demo_10"]):  # numeric order
        ep, d = buf.get_episode(i), written[name]
        np.testing.assert_array_equal(ep["action"], d["actions"].astype(np.float32))
        np.testing.assert_array_equal(ep["reward"], d["rewards"].astype(np.float32))
        np.testing.assert_array_equal(ep["done"], d["dones"])
        np.testing.assert_array_equal(ep["img_agentview"], d["agentview_image"])
        np.testing.assert_array_equal(ep["joint_pos"], d["robot0_joint_pos"].astype(np.float32))
        np.testing.assert_array_equal(ep["robot0_eef_pos"], d["robot0_eef_pos"].astype(np.float32))


@pytest.mark.parametrize("case, words", [
    ("no_actions", "has no 'actions'"),
    ("mixed_sizes", "per-step shape"),
    ("no_dt", "pass --dt"),
    ("truncated", "cannot read"),
    ("unknown_robot", "unknown robot type 'ur5'"),
])
def test_bad_robomimic_files_are_one_line_and_no_dataset(case, words, tmp_path, caplog):
    path = tmp_path / "demo.hdf5"
    write_robomimic(path, drop_actions_of=2 if case == "no_actions" else None, env_args=case != "no_dt",
                    image_sizes={1: (8, 8)} if case == "mixed_sizes" else None)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    out = tmp_path / "ds"
    extra = ["--robot", "ur5"] if case == "unknown_robot" else []
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["import", "robomimic", str(path), "--out", str(out), *extra]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
    assert not out.exists() and not list(tmp_path.glob(".ds.*"))
