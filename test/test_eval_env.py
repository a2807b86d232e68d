"""`fastdp eval M --env module:factory`: a policy evaluated in a gymnasium environment the test
defines (gymenvs.py), the observation adapter, and one-line errors for bad environments."""

import json
import logging

import numpy as np
import pytest

import gymenvs
from fastdp_ros.cli.main import main
from fastdp_ros.policies.spec import ObservationError, PolicySpec
from fastdp_ros.runtime.gym_env import ObservationAdapter, success_of

ENV = "gymenvs:make_joint_target_env"


@pytest.fixture(scope="module")
def lowdim_model(tmp_path_factory):
    from test_dp import train_tiny

    model, _ = train_tiny(tmp_path_factory.mktemp("tiny"), steps=5, images=False)
    return model


def evaluate(model, tmp_path, *args):
    out = tmp_path / "report.json"
    gymenvs.MADE.clear()
    code = main(["eval", str(model), "--env", ENV, "--episodes", "2", "--seed0", "7", "--sampler", "ddim",
                 "--steps", "2", "--out", str(out), *args])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_success_from_info_stops_the_episode(lowdim_model, tmp_path):
    code, report = evaluate(lowdim_model, tmp_path, "--env-kwargs", '{"cameras": [], "succeed_at": 3}',
                            "--stop-at-success")
    assert code == 0
    assert report["success_rate"] == 1.0 and report["episodes"] == 2 and report["seeds"] == [7, 8]
    assert [e["steps"] for e in report["per_episode"]] == [3, 3]
    assert report["extra"]["env"] == ENV and report["task"] == ENV
    env = gymenvs.MADE[-1]
    assert env.seeds == [7, 7, 8]  # warm-up, then one reset per episode from its seed
    assert len(env.actions) == 6 and all(a.shape == (8,) and np.all(np.isfinite(a)) for a in env.actions)
    # the same report as the simulation's
    assert {"success_rate", "success_ci95", "mean_return", "nfe", "latency_ms", "n_action_steps",
            "per_episode"} <= set(report)
    assert report["per_episode"][0]["final"]["goal_error"] >= 0


def test_max_steps_and_the_envs_own_end(lowdim_model, tmp_path):
    code, report = evaluate(lowdim_model, tmp_path, "--env-kwargs", '{"cameras": [], "succeed_at": 3}',
                            "--max-steps", "5")
    assert code == 0 and [e["steps"] for e in report["per_episode"]] == [5, 5]
    assert report["success_rate"] == 1.0  # succeeded on the way, kept going without --stop-at-success
    code, report = evaluate(lowdim_model, tmp_path, "--env-kwargs", '{"cameras": [], "limit": 4, "goal": 9}')
    assert code == 0 and [e["steps"] for e in report["per_episode"]] == [4, 4]
    assert report["success_rate"] == 0.0


@pytest.mark.parametrize("args, words", [
    (["--env", "no_such_module:make"], "cannot import 'no_such_module'"),
    (["--env", "gymenvs:nothing"], "has no 'nothing'"),
    (["--env", "gymenvs"], "package.module:factory"),
    (["--env", ENV, "--env-kwargs", "{bad"], "not valid JSON"),
    (["--env", ENV, "--env-kwargs", '{"colour": 1}'], "rejected its keyword arguments"),
    (["--env", "gymenvs:MADE"], "not callable"),
    (["--env", ENV, "--env-kwargs", '{"array_obs": true}'], "wrap the env"),
    (["--env", ENV, "--obs-map", "img_front=x"], "does not read"),
])
def test_bad_environments_are_one_line(lowdim_model, tmp_path, caplog, args, words):
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["eval", str(lowdim_model), "--episodes", "1", "--steps", "2", "--sampler", "ddim", *args]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors


def spec(image_keys=(), lowdim=None):
    return PolicySpec(image_keys=tuple(image_keys), image_shape=(12, 16, 3) if image_keys else (0, 0, 3),
                      lowdim_dims=lowdim if lowdim is not None else {"state": 3}, action_dim=2, dt=0.1, horizon=4,
                      n_obs_steps=1, n_action_steps=2)


def test_adapter_array_observations_feed_the_only_key():
    frame = ObservationAdapter(spec())(np.array([1.0, 2.0, 3.0]), {})
    assert list(frame) == ["state"] and frame["state"].dtype == np.float32
    np.testing.assert_array_equal(frame["state"], [1, 2, 3])
    image_only = ObservationAdapter(spec(["img_cam"], lowdim={}))
    img = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_only(img)["img_cam"], img)
    with pytest.raises(ObservationError, match="has 2 values"):
        ObservationAdapter(spec())(np.zeros(2))


def test_adapter_dict_observations_map_convert_and_resize():
    img = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    adapter = ObservationAdapter(spec(["img_cam"], {"state": 3, "object_state": 2}), {"img_cam": "rgb"})
    obs = {"rgb": np.transpose(img, (2, 0, 1)).astype(np.float32) / 255.0, "state": [1, 2, 3], "unused": 0}
    frame = adapter(obs, {"object_state": np.array([4.0, 5.0])})  # a key the obs lacks comes from info
    np.testing.assert_array_equal(frame["img_cam"], img)  # channel-first floats in [0, 1] back to uint8
    np.testing.assert_array_equal(frame["object_state"], [4, 5])
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)  # 2x the size: resized to the policy's
    np.testing.assert_array_equal(adapter({**obs, "rgb": big}, {"object_state": [0, 0]})["img_cam"], img)
    with pytest.raises(ObservationError, match="--obs-map object_state=ENTRY"):
        adapter(obs, {})


@pytest.mark.parametrize("info, expected", [({"success": True}, True), ({"is_success": 1.0}, True),
                                            ({"is_success": np.array(False)}, False), ({}, False)])
def test_success_flags(info, expected):
    assert success_of(info) is expected


def test_bag_to_trained_model_to_gymnasium_env(tmp_path):
    """End to end as an outside user: a teleoperation bag -> `fastdp import rosbag2` -> `fastdp
    train --policy dp` (tiny) -> `fastdp eval --env` in a test-defined gymnasium env."""
    from bagmaker import write_bag

    bag = write_bag(tmp_path / "bag", duration=1.6, marker_at=(0.0, 0.55, 1.1))
    ds, model, report = tmp_path / "ds", tmp_path / "model", tmp_path / "eval.json"
    assert main(["import", "rosbag2", str(bag.path), "--out", str(ds), "--image-size", "16",
                 "--action-topic", "/fr3_arm_controller/joint_trajectory", "--split-topic", "/episode_start",
                 "--task", "teleop_reach"]) == 0
    assert main(["dataset", "check", str(ds), "--keys", "img_front,img_wrist,joint_pos,gripper"]) == 0
    assert main(["train", "--policy", "dp", "--dataset", str(ds), "--out", str(model), "--steps", "3",
                 "--batch-size", "4", "--down-dims", "16,32", "--horizon", "8", "--n-obs-steps", "2",
                 "--n-action-steps", "4", "--image-keys", "img_front,img_wrist", "--lowdim-keys", "joint_pos,gripper",
                 "--num-inference-steps", "2", "--val-every", "1000", "--ckpt-every", "1000"]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["spec"]["robot"] == "fr3" and config["spec"]["dt"] == 0.1
    assert config["spec"]["image_shape"] == [16, 16, 3] and config["spec"]["extra"]["task"] == "teleop_reach"
    gymenvs.MADE.clear()
    assert main(["eval", str(model), "--env", ENV, "--env-kwargs", '{"image_shape": [20, 20], "limit": 6}',
                 "--episodes", "2", "--sampler", "ddim", "--steps", "2", "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["task"] == ENV and result["episodes"] == 2  # the report names what was evaluated
    assert [e["steps"] for e in result["per_episode"]] == [6, 6]
    assert len(gymenvs.MADE[-1].actions) == 12
