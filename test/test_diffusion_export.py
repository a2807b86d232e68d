"""FixedStepSampler: the whole sampling loop as one exported graph, checked with onnxruntime."""

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdp_ros
from fastdp_ros.diffusion import DDIMSampler, DDPMSampler, EDMSampler, FixedStepSampler
from fastdp_ros.errors import ConfigError
from fastdp_ros.nn import ConditionalUnet1D

# warnings raised in the package's own files (not torch's, wherever the clone and its .venv are)
PACKAGE_DIR = Path(fastdp_ros.__file__).resolve().parent

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


T, D, C = 16, 4, 12


def tiny_net():
    torch.manual_seed(0)
    return ConditionalUnet1D(D, C, 16, (16, 32, 32), kernel_size=3, n_groups=8).eval()


def export(module, args, names, batch_axes):
    f = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=17, input_names=names,
                          output_names=["action"],
                          dynamic_axes={**{n: {batch_axes.get(n, 0): "B"} for n in names},
                                        "action": {0: "B"}})
    ours = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
            and Path(w.filename).resolve().is_relative_to(PACKAGE_DIR)]
    assert not ours, [str(w.message) for w in ours]
    data = f.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_ddim4_loop_exports_and_matches_eager():
    net = tiny_net()
    wrapped = FixedStepSampler(net, DDIMSampler(100, num_inference_steps=4)).eval()
    assert wrapped.nfe == 4
    args = (torch.randn(2, C), torch.randn(2, T, D))
    sess = export(wrapped, args, ["cond", "noise"], {})
    assert [i.name for i in sess.get_inputs()] == ["cond", "noise"]
    for batch in (2, 1, 5):
        cond, noise = torch.randn(batch, C), torch.randn(batch, T, D)
        with torch.no_grad():
            ref = wrapped(cond, noise).numpy()
        out = sess.run(None, {"cond": cond.numpy(), "noise": noise.numpy()})[0]
        assert out.shape == (batch, T, D)
        assert np.abs(out - ref).max() < 1e-4


def test_exported_loop_unrolls_every_step():
    net = tiny_net()
    convs_per_eval = sum(isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) for m in net.modules())
    for k in (1, 3):
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(FixedStepSampler(net, DDIMSampler(100, k)).eval(),
                              (torch.randn(1, C), torch.randn(1, T, D)), f, dynamo=False,
                              opset_version=17)
        model = onnx.load_from_string(f.getvalue())
        n = sum(1 for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose"))
        assert n == k * convs_per_eval


def test_stochastic_ddpm_loop_with_step_noise_input_and_partial_start():
    """Retrieval-style sampling: noise a given action to step k, run the remaining steps."""
    net = tiny_net()
    sampler = DDPMSampler(12)
    wrapped = FixedStepSampler(net, sampler, start_index=8).eval()
    assert wrapped.nfe == 4
    b = 2
    args = (torch.randn(b, C), torch.randn(b, T, D), torch.rand(b, T, D) * 2 - 1,
            torch.randn(12, b, T, D))
    names = ["cond", "noise", "x_init", "step_noise"]
    sess = export(wrapped, args, names, {"step_noise": 1})
    new = (torch.randn(3, C), torch.randn(3, T, D), torch.rand(3, T, D) * 2 - 1, torch.randn(12, 3, T, D))
    with torch.no_grad():
        ref = wrapped(*new).numpy()
        # the same as noising by hand and continuing the eager loop
        x = sampler.noise_to_index(new[2], new[1], 8)
        manual = sampler.sample_from(net, x, 8, new[0], new[3]).numpy()
    out = sess.run(None, {n: t.numpy() for n, t in zip(names, new)})[0]
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(manual - ref).max() < 1e-6
    with pytest.raises(ConfigError, match="x_init"):
        wrapped(new[0], new[1])


def test_edm_heun_loop_exports_and_matches_eager():
    net = tiny_net()
    wrapped = FixedStepSampler(net, EDMSampler(num_steps=3, heun=True)).eval()
    assert wrapped.nfe == 5
    sess = export(wrapped, (torch.randn(2, C), torch.randn(2, T, D)), ["cond", "noise"], {})
    cond, noise = torch.randn(3, C), torch.randn(3, T, D)
    with torch.no_grad():
        ref = wrapped(cond, noise).numpy()
    out = sess.run(None, {"cond": cond.numpy(), "noise": noise.numpy()})[0]
    # the first step starts at sigma_max = 80: compare relative to the sample's scale
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_fixed_step_sampler_rejects_bad_start():
    with pytest.raises(ConfigError, match="start_index"):
        FixedStepSampler(tiny_net(), DDIMSampler(100, 4), start_index=4)
