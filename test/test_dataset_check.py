"""`fastdp dataset check` and the check train / distill / index run before they start."""

import json
import logging

import numpy as np
import pytest
import zarr

from fastdp_ros.cli.main import main
from fastdp_ros.data import ReplayBuffer
from fastdp_ros.data.check import check_dataset
from test_dp import make_dataset


def errors_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_good_dataset_is_listed(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", n_episodes=3, length=7)
    report_path = tmp_path / "check.json"
    assert main(["dataset", "check", str(ds), "--keys", "img_front,joint_pos", "--json", str(report_path)]) == 0
    text = capsys.readouterr().out
    assert "3 episodes, 21 steps (length 7-7" in text and "dt 0.1 s, robot panda, task push" in text
    assert "data/img_front: uint8 (16, 16, 3) per step" in text and "data/action: float32 (8,)" in text
    assert "missing optional: cameras, joint_names, image_size" in text
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["keys"]["joint_pos"] == {"shape": [7], "dtype": "float32"}
    assert report["meta"] == ["episode_seed", "episode_success"]


def _broken(tmp_path, case):
    attrs = {"dt": 0.1, "robot": "panda"}
    if case == "no_dt":
        attrs.pop("dt")
    if case == "bad_dt":
        attrs["dt"] = -1
    if case == "unknown_robot":
        attrs["robot"] = "ur5"
    buf = ReplayBuffer.create(tmp_path / case, attrs=attrs)
    if case == "empty":
        return buf.path
    action = np.zeros((5, 2), np.float32)
    if case == "nonfinite":
        action[3, 1] = np.nan
    data = {"actions" if case == "no_action" else "action": action, "state": np.zeros((5, 3), np.float32)}
    buf.add_episode(data)
    if case == "half_written":  # a crash between the arrays and meta/episode_ends
        zarr.open_group(str(buf.path), mode="r+")["data"]["state"].resize((8, 3))
    return buf.path


@pytest.mark.parametrize("case, words", [
    ("no_dt", "no 'dt' attribute"),
    ("bad_dt", "'dt' must be a number of seconds > 0"),
    ("unknown_robot", "unknown robot 'ur5'"),
    ("empty", "no episodes"),
    ("nonfinite", "data/action holds 1 non-finite values"),
    ("no_action", "no action array 'action' (did you mean 'actions'? `fastdp dataset rename"),
    ("half_written", "data/state has 8 rows"),
])
def test_problems_fail_with_the_reason(tmp_path, caplog, case, words):
    path = _broken(tmp_path, case)
    report = check_dataset(path)
    assert not report.ok and any(words in p for p in report.problems), report.problems
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["dataset", "check", str(path)]) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors


def test_other_action_key_and_missing_observation_keys(tmp_path, caplog):
    path = _broken(tmp_path, "no_action")
    assert main(["dataset", "check", str(path), "--action-key", "actions"]) == 0
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["dataset", "check", str(path), "--action-key", "actions", "--keys", "state,img_front"]) == 2
    assert "no ['img_front']" in errors_of(caplog)[0]
    assert "not a zarr dataset" in check_dataset(tmp_path).problems[0]


def test_a_dataset_without_robot_says_what_is_assumed(tmp_path):
    buf = ReplayBuffer.create(tmp_path / "ds", attrs={"dt": 0.1})
    buf.add_episode({"action": np.zeros((3, 2), np.float32)})
    report = check_dataset(buf.path)
    assert report.ok and "robot (a policy trained on it assumes panda)" in report.missing_optional


@pytest.mark.parametrize("verb", ["train", "distill", "index"])
def test_train_distill_index_check_the_dataset_first(tmp_path, caplog, verb):
    path = _broken(tmp_path, "unknown_robot")
    argv = {"train": ["train", "--policy", "dp", "--image-keys", "", "--lowdim-keys", "state"],
            "distill": ["distill", "--policy", "onedp", "--teacher", str(tmp_path / "teacher")],
            "index": ["index", "--policy", "ragdp", "--teacher", str(tmp_path / "teacher")]}[verb]
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main([*argv, "--dataset", str(path), "--out", str(tmp_path / "model")]) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1 and "unknown robot 'ur5'" in errors[0], errors
    assert not (tmp_path / "model").exists()


def test_rename_and_set_fix_a_dataset_in_place(tmp_path, caplog):
    path = _broken(tmp_path, "no_action")
    before = ReplayBuffer.open(path).get_episode(0)
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["dataset", "rename", str(path), "actions=state"]) == 2  # would clash: nothing renamed
        assert main(["dataset", "rename", str(path), "nope=x"]) == 2
    assert ReplayBuffer.open(path).keys == ["actions", "state"]
    assert main(["dataset", "rename", str(path), "actions=action"]) == 0
    np.testing.assert_array_equal(ReplayBuffer.open(path).get_episode(0)["action"], before["actions"])
    path = _broken(tmp_path, "unknown_robot")
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["dataset", "set", str(path), "robot=ur10"]) == 2
    assert main(["dataset", "set", str(path), "robot=FR3", "dt=0.05", "image_size=[96, 96]", "task=stack"]) == 0
    attrs = ReplayBuffer.open(path).attrs
    assert attrs["robot"] == "fr3" and attrs["dt"] == 0.05 and attrs["image_size"] == [96, 96]
    assert attrs["task"] == "stack" and check_dataset(path).ok
