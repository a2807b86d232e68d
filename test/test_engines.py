"""Engines on the CPU: parity with eager, the engine cache (reuse, corruption), clear errors."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from fastdp_ros.engines import EngineParityError, EnginePolicy, load_engine_policy, make_backend
from fastdp_ros.engines import onnxruntime_backend
from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.policies import Policy, PolicySpec, load_policy, register_policy, save_model_dir
from fastdp_ros.policies.dp import DiffusionPolicyConfig, DiffusionPolicyModel, fit_normalizer

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

H = 16


def make_model(path, images=True, seed=0, **cfg):
    """A tiny untrained Diffusion Policy model directory (random weights: parity needs no training)."""
    spec = PolicySpec(image_keys=("img_front",) if images else (), image_shape=(H, H, 3) if images else (0, 0, 3),
                      lowdim_dims={"joint_pos": 7, "gripper": 1}, action_dim=8, dt=0.1, horizon=8, n_obs_steps=2,
                      n_action_steps=4, extra={"task": "push"})
    rng = np.random.default_rng(seed)
    data = {"joint_pos": rng.uniform(-2, 2, (50, 7)).astype(np.float32),
            "gripper": rng.uniform(0, 0.04, (50, 1)).astype(np.float32),
            "action": rng.uniform(-2, 2, (50, 8)).astype(np.float32)}
    normalizer = fit_normalizer(data, spec)
    base = dict(feature_dim=16, num_keypoints=8, down_dims=(32, 64), diffusion_step_embed_dim=16, n_groups=4,
                crop_ratio=0.9, sampler="ddim", num_inference_steps=4)
    base.update(cfg)
    config = DiffusionPolicyConfig(**base)
    torch.manual_seed(seed)
    model = DiffusionPolicyModel(spec, config, normalizer.to_dict())
    save_model_dir(path, "dp", {"spec": spec.to_dict(), "policy": config.to_dict(),
                                "normalizer": normalizer.to_dict()}, model.state_dict())
    return path


def observation(spec, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: rng.uniform(-1, 1, (spec.n_obs_steps, d)).astype(np.float32) for k, d in spec.lowdim_dims.items()}
    for k in spec.image_keys:
        obs[k] = rng.integers(0, 256, (spec.n_obs_steps, *spec.image_shape), dtype=np.uint8)
    return obs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("engines") / "dp")


@pytest.fixture(scope="module")
def built_model(tmp_path_factory):
    """A copy of a tiny model whose onnxruntime engine is already in its engines/ folder."""
    path = make_model(tmp_path_factory.mktemp("built") / "dp")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = load_engine_policy(path, "onnxruntime", threads=1)
    finally:
        torch.set_num_threads(n)
    assert policy.info.built
    return path


def model_copy(src, tmp_path):
    """A private copy (with its engines/) that a test may damage."""
    return shutil.copytree(src, tmp_path / "model")


def engine_dir(model):
    (entry,) = [p for p in (model / "engines").iterdir() if p.name.startswith("onnxruntime-")]
    return entry


def test_torch_backend_is_the_eager_policy(tiny_model):
    eager = load_policy(tiny_model, seed=3)
    engine = load_engine_policy(tiny_model, "torch", seed=3)
    assert isinstance(engine, EnginePolicy)
    assert engine.spec == eager.spec and engine.nfe == eager.nfe == 4
    assert engine.parameter_count == sum(p.numel() for p in eager.model.parameters())
    for i in range(3):
        obs = observation(eager.spec, i)
        np.testing.assert_array_equal(engine.act(obs), eager.act(obs))
    np.testing.assert_array_equal(engine.encode(obs), eager.encode(obs))


def test_onnxruntime_matches_eager_and_is_cached_in_the_model(built_model, tmp_path, monkeypatch):
    model = model_copy(built_model, tmp_path)
    entry = engine_dir(model)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["key"]["backend"] == "onnxruntime" and manifest["key"]["graph"]["sampler"] == "DDIMSampler"
    assert set(manifest["key"]["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert 0 <= manifest["parity"]["max_abs_diff"] <= 1e-4

    def no_export(*args, **kwargs):
        raise AssertionError("a matching cached engine must not be exported again")

    monkeypatch.setattr(onnxruntime_backend, "export_onnx", no_export)
    engine = load_engine_policy(model, "onnxruntime", seed=7, threads=1)
    assert not engine.info.built and engine.info.engine_path == str(entry / "model.onnx")
    eager = load_policy(model, seed=7)
    for i in range(3):  # same seed, same noise: the same actions within fp32 rounding
        obs = observation(eager.spec, i)
        np.testing.assert_allclose(engine.act(obs), eager.act(obs), atol=1e-4)
    assert engine.nfe == 4


def test_sampler_and_steps_are_part_of_the_cache_key(built_model, tmp_path):
    model = model_copy(built_model, tmp_path)
    engine = load_engine_policy(model, "onnxruntime", steps=2, threads=1)
    assert engine.info.built and engine.nfe == 2
    assert len([p for p in (model / "engines").iterdir() if p.is_dir()]) == 2
    assert not load_engine_policy(model, "onnxruntime", steps=2, threads=1).info.built


def test_stochastic_sampler_takes_step_noise_as_input(tmp_path):
    """DDPM draws noise at every step: the graph takes it as an input, so it stays deterministic."""
    model = make_model(tmp_path / "ddpm", images=False, sampler="ddpm", num_train_timesteps=5)
    engine = load_engine_policy(model, "onnxruntime", seed=1, threads=1, cache_dir=tmp_path / "cache")
    assert list(engine.graph.noise_shapes) == ["noise", "step_noise"]
    assert engine.graph.noise_shapes["step_noise"] == (5, 1, 8, 8)
    eager = load_policy(model, seed=1)
    obs = observation(eager.spec)
    np.testing.assert_allclose(engine.act(obs), eager.act(obs), atol=1e-4)


def test_corrupted_engine_is_rebuilt(built_model, tmp_path, caplog):
    model = model_copy(built_model, tmp_path)
    onnx_file = engine_dir(model) / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="fastdp_ros.engines"):
        engine = load_engine_policy(model, "onnxruntime", threads=1)
    assert engine.info.built
    assert "corrupted" in caplog.text and "sha256" in caplog.text
    assert not load_engine_policy(model, "onnxruntime", threads=1).info.built  # the rebuilt one is good


def test_corrupted_engine_is_rejected_on_request(built_model, tmp_path):
    model = model_copy(built_model, tmp_path)
    onnx_file = engine_dir(model) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"corrupted: .*1000 bytes.*fastdp export --rebuild"):
        load_engine_policy(model, "onnxruntime", on_corrupt="error", threads=1)


def test_unloadable_engine_with_consistent_manifest_is_rebuilt(built_model, tmp_path, caplog):
    """A file that matches its recorded hash but does not load (e.g. written by a broken build)."""
    from fastdp_ros.engines.cache import file_sha256

    model = model_copy(built_model, tmp_path)
    entry = engine_dir(model)
    (entry / "model.onnx").write_bytes(b"not an onnx model")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(size=17, sha256=file_sha256(entry / "model.onnx"))
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="fastdp_ros.engines"):
        assert load_engine_policy(model, "onnxruntime", threads=1).info.built
    assert "cannot be loaded" in caplog.text


def test_engine_computing_something_else_is_rebuilt(built_model, tmp_path, caplog):
    """The cached engine's output is checked against the eager reference stored at build time."""
    model = model_copy(built_model, tmp_path)
    manifest_file = engine_dir(model) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["reference_output"] = (np.asarray(manifest["reference_output"]) + 0.5).tolist()
    manifest_file.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="fastdp_ros.engines"):
        assert load_engine_policy(model, "onnxruntime", threads=1).info.built
    assert "differs from the eager reference" in caplog.text


def test_parity_failure_is_an_error_and_leaves_no_engine(tiny_model, tmp_path):
    with pytest.raises(EngineParityError, match="differs from eager execution"):
        load_engine_policy(tiny_model, "onnxruntime", parity_tol=1e-12, threads=1, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_read_only_model_directory_uses_the_user_cache(tiny_model, tmp_path, monkeypatch):
    from fastdp_ros.engines import cache

    writable = cache._writable_dir

    def model_dir_read_only(path):
        return not str(path).startswith(str(tiny_model)) and writable(path)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache, "_writable_dir", model_dir_read_only)
    engine = load_engine_policy(tiny_model, "onnxruntime", threads=1)
    assert engine.info.engine_path.startswith(str(tmp_path / "xdg" / "fastdp_ros" / "engines"))


@pytest.mark.parametrize("backend, options, message", [
    ("onnx", {}, "unknown backend 'onnx'; known backends: torch, torch_compile, onnxruntime, tensorrt"),
    ("tensorrt", {}, "runs on a CUDA GPU"),
    ("onnxruntime", {"precision": "fp16"}, "fp16 engines through the TensorRT provider only"),
    ("onnxruntime", {"precision": "int8"}, "not 'int8'"),
    ("onnxruntime", {"backend_options": {"provider": "rocm"}}, "unknown onnxruntime provider 'rocm'"),
    ("torch", {"backend_options": {"provider": "cuda"}}, "backend 'torch' has no options ['provider']"),
    ("onnxruntime", {"device": "tpu"}, "unknown device 'tpu'"),
    ("onnxruntime", {"on_corrupt": "ignore"}, "on_corrupt must be one of"),
])
def test_user_errors_are_clear(tiny_model, backend, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
        load_engine_policy(tiny_model, backend, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_clear(tiny_model):
    with pytest.raises(ConfigError, match="needs CUDA"):
        load_engine_policy(tiny_model, "tensorrt", device="cuda")


def test_missing_gpu_provider_says_what_to_install():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(ConfigError, match="install onnxruntime-gpu"):
        make_backend("onnxruntime", provider="cuda")


@register_policy("engines_test_toy")
class ToyPolicy(Policy):
    """A policy that provides no export graph."""

    nfe = 0

    @classmethod
    def from_model_dir(cls, path, **options):
        from fastdp_ros.policies import read_config

        return cls(PolicySpec.from_dict(read_config(path)["spec"]))

    def _encode(self, obs):
        return obs["joint_pos"][-1]

    def _act(self, obs):
        return np.zeros((self.spec.horizon, self.spec.action_dim), np.float32)


def test_policy_without_export_graph(tmp_path):
    spec = PolicySpec(image_keys=(), image_shape=(0, 0, 3), lowdim_dims={"joint_pos": 7, "gripper": 1},
                      action_dim=8, dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4)
    path = save_model_dir(tmp_path / "toy", "engines_test_toy", {"spec": spec.to_dict()},
                          torch.nn.Linear(1, 1).state_dict())
    with pytest.raises(ConfigError, match="policy 'engines_test_toy' cannot be exported"):
        load_engine_policy(path, "onnxruntime")
    eager = load_engine_policy(path, "torch")  # torch runs the policy's own act()
    assert eager.act(observation(spec)).shape == (8, 8)


def test_gpu_cache_key_changes_with_the_gpu_and_its_driver(monkeypatch):
    """A compiled GPU engine must never load on another GPU model or driver: both are in its key."""
    from fastdp_ros.engines import base

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H200")
    monkeypatch.setattr(base, "gpu_driver_version", lambda: "580.159.03")
    tag = base.device_tag("cuda:0")
    assert "NVIDIA H200" in tag and "sm90" in tag and "driver580.159.03" in tag
    monkeypatch.setattr(base, "gpu_driver_version", lambda: "590.44.01")
    assert base.device_tag("cuda:0") != tag
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100 80GB HBM3")
    assert "H100" in base.device_tag("cuda") and base.device_tag("cpu") == "cpu"


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.03  Thu Oct  9 10:01:00 UTC 2025\n", "580.159.03"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)\n",
     "570.86.15"),
    ("GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", None),
])
def test_driver_version_is_read_from_the_nvrm_line(text, version):
    from fastdp_ros.engines.base import driver_version_from_proc

    assert driver_version_from_proc(text) == version


class _IgnoresStepNoise(torch.nn.Module):
    def forward(self, x, noise, step_noise):  # step_noise unused, as after RAGDP's last jump
        return 2.0 * x + noise


def test_onnx_runner_feeds_only_the_inputs_the_exported_graph_kept(tmp_path):
    from fastdp_ros.policies.base import ExportGraph

    examples = (torch.ones(1, 3), torch.zeros(1, 3), torch.zeros(2, 1, 3))
    graph = ExportGraph(_IgnoresStepNoise().eval(), ("x",), {"noise": (1, 3), "step_noise": (2, 1, 3)}, examples)
    runner = make_backend("onnxruntime", threads=1).build(graph, tmp_path / "model.onnx")
    assert runner.used == {"x", "noise"}  # the exporter dropped the unread input
    out = runner([np.full((1, 3), 2.0, np.float32), np.ones((1, 3), np.float32), np.ones((2, 1, 3), np.float32)])
    np.testing.assert_allclose(out, np.full((1, 3), 5.0))
