"""Backends that need a GPU, TensorRT or minutes of CPU compile time; each skips with its reason."""

import os

import numpy as np
import pytest
import torch

from fastdp_ros.engines import load_engine_policy
from fastdp_ros.engines.policy import parity_tolerance
from fastdp_ros.policies import load_policy
from test_engines import make_model, observation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("gpu") / "dp")


@pytest.mark.skipif(os.environ.get("FASTDP_TEST_COMPILE") != "1",
                    reason="torch.compile of the act() step takes ~70 s on the 2-core CPU; set FASTDP_TEST_COMPILE=1")
def test_torch_compile_matches_eager_and_persists_kernels(tiny_model, tmp_path):
    engine = load_engine_policy(tiny_model, "torch_compile", seed=2, cache_dir=tmp_path, warmup=1)
    assert engine.info.built and engine.info.parity_max_abs_diff <= engine.info.parity_tolerance
    eager = load_policy(tiny_model, seed=2)
    obs = observation(eager.spec)
    np.testing.assert_allclose(engine.act(obs), eager.act(obs), atol=1e-4)
    assert not load_engine_policy(tiny_model, "torch_compile", cache_dir=tmp_path, warmup=1).info.built


@needs_cuda
def test_torch_cuda_graph_matches_eager(tiny_model):
    engine = load_engine_policy(tiny_model, "torch", device="cuda", seed=4)
    assert "CUDA graph" in engine.info.description
    assert engine.info.parity_max_abs_diff <= engine.info.parity_tolerance
    eager = load_policy(tiny_model, seed=4)  # CPU eager: same CPU-drawn noise
    obs = observation(eager.spec)
    expected = eager.act(obs)
    # GPU against CPU: cuDNN runs fp32 convolutions in TF32 by default. On an H200 this 4-step loop
    # differed from the CPU by 2.0e-3 on actions of magnitude 2 (within 1e-3 of scale with
    # NVIDIA_TF32_OVERRIDE=0), so the bound is TF32's: 5e-3 of the output's scale
    np.testing.assert_allclose(engine.act(obs), expected, atol=parity_tolerance(expected, 5e-3), rtol=0)


@needs_cuda
def test_onnxruntime_cuda_provider(tiny_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    engine = load_engine_policy(tiny_model, "onnxruntime", device="cuda", cache_dir=tmp_path)
    assert engine.info.parity_max_abs_diff <= engine.info.parity_tolerance


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_parity_and_cache(tiny_model, tmp_path, precision):
    pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed")
    engine = load_engine_policy(tiny_model, "tensorrt", device="cuda", precision=precision, cache_dir=tmp_path)
    assert engine.info.built and engine.info.parity_max_abs_diff <= engine.info.parity_tolerance
    again = load_engine_policy(tiny_model, "tensorrt", device="cuda", precision=precision, cache_dir=tmp_path)
    assert not again.info.built
    obs = observation(engine.spec)
    assert np.all(np.isfinite(again.act(obs)))


@needs_cuda
def test_cuda_graph_captures_a_vp_preconditioned_consistency_student(tmp_path):
    """VP preconditioning's timestep table must be on the GPU before capture (on an H200 the
    shipped VP consistency student failed: a CPU->GPU copy inside the captured graph)."""
    from fastdp_ros.policies.consistency import ConsistencyConfig, distill_consistency
    from fastdp_ros.policies.dp import convert_to_edm
    from fastdp_ros.policies.training import TrainSettings
    from test_dp import obs_of, train_tiny

    ddpm, _ = train_tiny(tmp_path, steps=20)
    edm = convert_to_edm(ddpm, tmp_path / "edm", steps=4)
    out = tmp_path / "cp"
    distill_consistency(str(edm), str(tmp_path / "ds"), str(out), ConsistencyConfig(inference_steps=3),
                        TrainSettings(steps=2, batch_size=16, warmup_steps=1, val_every=10**6, ckpt_every=10**6))
    engine = load_engine_policy(out, "torch", device="cuda", seed=1)
    assert "CUDA graph" in engine.info.description
    assert engine.info.parity_max_abs_diff <= engine.info.parity_tolerance
    assert np.all(np.isfinite(engine.act(obs_of(1.0))))
