"""Model directories: exact round trip, never unpickle, clear errors on bad files."""

import json

import numpy as np
import pytest
import torch

from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.policies import (
    ObservationError,
    PolicySpec,
    check_observation,
    load_model_dir,
    model_hash,
    policy_class,
    read_config,
    save_model_dir,
)
from fastdp_ros.policies.modeldir import load_state_into


def tiny_module():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 3))


def make_spec(**kw):
    base = dict(image_keys=("img_front",), image_shape=(8, 8, 3), lowdim_dims={"joint_pos": 7},
                action_dim=8, dt=0.1, horizon=4, n_obs_steps=2, n_action_steps=2)
    base.update(kw)
    return PolicySpec(**base)


@pytest.fixture
def saved(tmp_path):
    m = tiny_module()
    cfg = {"spec": make_spec().to_dict(), "hidden": 8}
    path = save_model_dir(tmp_path / "m", "toy", cfg, m.state_dict())
    return path, m


def test_round_trip_exact(saved):
    path, m = saved
    files = load_model_dir(path)
    assert files.policy_type == "toy"
    assert files.config["hidden"] == 8
    assert PolicySpec.from_dict(files.config["spec"]) == make_spec()
    assert "code_version" in files.config["provenance"]
    m2 = tiny_module()
    for p in m2.parameters():
        torch.nn.init.zeros_(p)
    load_state_into(m2, files.state_dict, path)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_half_storage_casts_back(tmp_path):
    m = tiny_module()
    path = save_model_dir(tmp_path / "h", "toy", {}, m.state_dict(), half=True)
    files = load_model_dir(path)
    assert all(t.dtype == torch.float16 for t in files.state_dict.values())
    m2 = tiny_module()
    load_state_into(m2, files.state_dict, path)
    assert next(m2.parameters()).dtype == torch.float32
    x = torch.randn(2, 4)
    assert torch.allclose(m(x), m2(x), atol=1e-2)


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        read_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="config.json is missing"):
        read_config(tmp_path / "empty")


def test_corrupted_config(saved):
    path, _ = saved
    (path / "config.json").write_text('{"policy_type": "toy", ')
    with pytest.raises(ModelFileError, match=r"config.json is not valid JSON"):
        load_model_dir(path)


def test_truncated_weights_named(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"model.safetensors cannot be read .*truncated or corrupted"):
        load_model_dir(path)


def test_pickle_file_is_rejected_not_executed(saved, tmp_path):
    path, m = saved
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    (path / "model.safetensors").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_model_dir(path)
    assert not marker.exists()


def test_mismatched_weights(saved):
    path, _ = saved
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GroupNorm(2, 16), torch.nn.Linear(16, 3))
    files = load_model_dir(path)
    with pytest.raises(ModelFileError, match="shape mismatches"):
        load_state_into(other, files.state_dict, path)
    with pytest.raises(ModelFileError, match="missing 2 tensors"):
        load_state_into(torch.nn.Sequential(*tiny_module(), torch.nn.Linear(3, 3)), files.state_dict, path)


def test_model_hash_changes_with_weights(saved):
    path, m = saved
    h = model_hash(path)
    assert h == model_hash(path)
    sd = m.state_dict()
    sd["0.bias"] = sd["0.bias"] + 1
    save_model_dir(path, "toy", json.loads((path / "config.json").read_text()), sd)
    assert model_hash(path) != h


def test_unknown_policy_type():
    with pytest.raises(ConfigError, match="unknown policy type 'nope'"):
        policy_class("nope")


def test_check_observation():
    spec = make_spec()
    good = {"img_front": np.zeros((2, 8, 8, 3), np.uint8), "joint_pos": np.zeros((2, 7))}
    out = check_observation(spec, good)
    assert out["joint_pos"].dtype == np.float32
    with pytest.raises(ObservationError, match="missing"):
        check_observation(spec, {"img_front": good["img_front"]})
    with pytest.raises(ObservationError, match="shape"):
        check_observation(spec, {**good, "img_front": np.zeros((2, 9, 8, 3), np.uint8)})
    with pytest.raises(ObservationError, match="uint8"):
        check_observation(spec, {**good, "img_front": np.zeros((2, 8, 8, 3), np.float32)})
    bad = good["joint_pos"].copy()
    bad[1, 3] = np.nan
    with pytest.raises(ObservationError, match="NaN"):
        check_observation(spec, {**good, "joint_pos": bad})


def test_spec_rejects_inconsistent_chunking():
    with pytest.raises(ConfigError, match="n_action_steps"):
        make_spec(n_action_steps=5, horizon=4)


def test_spec_keeps_lowdim_order_through_json(tmp_path):
    spec = make_spec(lowdim_dims={"joint_pos": 7, "gripper": 1, "a_first_alphabetically": 2})
    path = save_model_dir(tmp_path / "o", "toy", {"spec": spec.to_dict()}, tiny_module().state_dict())
    back = PolicySpec.from_dict(read_config(path)["spec"])
    assert list(back.lowdim_dims) == ["joint_pos", "gripper", "a_first_alphabetically"]
    assert back == spec
