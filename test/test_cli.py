"""The `fastdp` command end to end on tiny runs, and its one-line errors for bad input."""

import json
import logging

import numpy as np
import pytest

from fastdp_ros.cli.main import main
from fastdp_ros.data import ReplayBuffer, WindowDataset


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "push"
    assert main(["collect", "--task", "push", "--episodes", "2", "--out", str(out), "--image-size", "32"]) == 0
    return out


def test_collect_writes_a_store_the_reader_opens(tiny_store):
    buf = ReplayBuffer.open(tiny_store, required_keys=["img_front", "img_wrist", "joint_pos", "action"])
    assert buf.n_episodes == 2
    assert buf["img_front"].shape[1:] == (32, 32, 3)
    assert buf.attrs["task"] == "push" and buf.attrs["dt"] == pytest.approx(0.1)
    assert list(buf.episode_meta("episode_seed")) == [0, 1]
    assert all(buf.episode_meta("episode_success"))
    assert buf["object_state"].shape[1:] == (10,)
    ds = WindowDataset(buf, ["img_front", "joint_pos"], n_obs_steps=2, horizon=16, n_action_steps=8)
    sample = ds[0]
    assert sample["obs"]["img_front"].shape == (2, 32, 32, 3)
    assert sample["action"].shape == (16, 8)


def test_replay_reproduces_the_recording(tiny_store, tmp_path):
    report = tmp_path / "replay.json"
    assert main(["replay", str(tiny_store), "--out", str(report)]) == 0
    episodes = json.loads(report.read_text())["episodes"]
    assert all(e["replay_success"] for e in episodes)
    assert max(e["max_joint_deviation"] for e in episodes) < 1e-5


def test_collect_is_deterministic_from_seed(tiny_store, tmp_path):
    again = tmp_path / "again"
    assert main(["collect", "--task", "push", "--episodes", "1", "--out", str(again), "--image-size", "32"]) == 0
    a, b = ReplayBuffer.open(tiny_store), ReplayBuffer.open(again)
    first = a.get_episode(0)
    for key, value in b.get_episode(0).items():
        np.testing.assert_array_equal(value, first[key], err_msg=key)


def test_collect_with_action_noise_records_the_executed_noisy_actions(tiny_store, tmp_path):
    noisy = tmp_path / "noisy"
    assert main(["collect", "--task", "push", "--episodes", "1", "--out", str(noisy), "--image-size", "32",
                 "--action-noise", "0.02", "--keep-failed"]) == 0
    clean, mixed = ReplayBuffer.open(tiny_store).get_episode(0), ReplayBuffer.open(noisy).get_episode(0)
    assert ReplayBuffer.open(noisy).attrs["action_noise"] == 0.02
    n = min(len(clean["action"]), len(mixed["action"]))
    arm = np.abs(mixed["action"][:n, :7] - clean["action"][:n, :7])
    assert arm.max() > 0.01  # the arm actions differ from the expert's ...
    np.testing.assert_array_equal(mixed["action"][0, 7], clean["action"][0, 7])  # ... the gripper's do not
    # the recorded actions are the executed ones: replaying them reproduces the episode
    report = tmp_path / "replay.json"
    assert main(["replay", str(noisy), "--out", str(report)]) == 0
    assert max(e["max_joint_deviation"] for e in json.loads(report.read_text())["episodes"]) < 1e-5


def test_collect_records_a_policys_rollouts_that_replay(tmp_path):
    from test_dp import train_tiny

    model, _ = train_tiny(tmp_path / "tiny", steps=5, images=False)
    rollouts = tmp_path / "rollouts"
    assert main(["collect", "--task", "reach", "--policy", str(model), "--steps", "2", "--episodes", "2",
                 "--seed", "3000000", "--out", str(rollouts)]) == 0
    buf = ReplayBuffer.open(rollouts, required_keys=["joint_pos", "gripper", "action", "reward", "object_state"])
    assert buf.n_episodes == 2 and list(buf.episode_meta("episode_seed")) == [3000000, 3000001]
    assert buf.attrs["policy"] == str(model.resolve()) and buf.attrs["policy_options"] == {"steps": 2}
    assert not any(buf.episode_meta("episode_success"))  # an untrained model: failures, kept
    episode = buf.get_episode(0)
    assert len(episode["reward"]) == buf.attrs["max_steps"] and np.all(episode["reward"] < 0)
    np.testing.assert_allclose(buf.episode_meta("episode_return")[0], episode["reward"].sum(), rtol=1e-5)
    # each row pairs the observation with the action chosen from it: replaying reproduces the rollout
    report = tmp_path / "replay.json"
    assert main(["replay", str(rollouts), "--out", str(report)]) == 0
    assert max(e["max_joint_deviation"] for e in json.loads(report.read_text())["episodes"]) < 1e-5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["collect", "--task", "fly", "--episodes", "1", "--out", "{tmp}/x"], "unknown task 'fly'"),
        (["collect", "--task", "push", "--episodes", "1", "--out", "{tmp}/file/x"], "{tmp}/file/x"),
        (["collect", "--task", "push", "--episodes", "0", "--out", "{tmp}/x"], "--episodes must be >= 1"),
        (["collect", "--task", "push", "--action-noise", "-1", "--out", "{tmp}/x"], "--action-noise must be"),
        (["collect", "--task", "push", "--policy", "{tmp}/missing", "--out", "{tmp}/x"], "does not exist"),
        (["collect", "--task", "push", "--policy", "{tmp}/m", "--keep-failed", "--out", "{tmp}/x"],
         "options of the scripted expert"),
        (["replay", "{tmp}/missing"], "missing"),
        (["train", "--policy", "nope", "--dataset", "{tmp}/x", "--out", "{tmp}/m"], "--policy 'nope'"),
        (["train", "--policy", "dp", "--dataset", "{tmp}/x", "--out", "{tmp}/m", "--preconditioning", "vp"],
         "is for EDM models"),
        (["convert", "{tmp}/missing", "--to", "edm", "--out", "{tmp}/m"], "does not exist"),
        (["convert", "{tmp}/missing", "--to", "edm", "--out", "{tmp}/m", "--steps", "0"], "--steps must be >= 1"),
        (["eval", "{tmp}/missing"], "does not exist"),
        (["run", "models/push_onedp", "--rate", "-5"], "--rate must be > 0 Hz, got -5"),
        (["eval", "models/push_onedp", "--threads", "0", "--episodes", "1"], "--threads must be an integer >= 1"),
        (["train", "--policy", "dp", "--dataset", "{tmp}/x", "--out", "{tmp}/m", "--threads", "-2"],
         "--threads must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_clear_error(argv, message, tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(tmp=tmp_path) for a in argv]
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message.format(tmp=tmp_path) in errors[0], errors


def test_existing_store_needs_overwrite(tiny_store, caplog):
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["collect", "--task", "push", "--episodes", "1", "--out", str(tiny_store)]) == 2
    assert "pass --overwrite" in caplog.text and "overwrite=True" not in caplog.text
