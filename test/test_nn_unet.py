"""ConditionalUnet1D: shapes, conditioning, gradients, errors and ONNX export."""

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdp_ros
from fastdp_ros.errors import ConfigError
from fastdp_ros.nn import ConditionalUnet1D, SinusoidalPosEmb

# warnings raised in the package's own files (not torch's, wherever the clone and its .venv are)
PACKAGE_DIR = Path(fastdp_ros.__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(input_dim=3, cond_dim=6, down_dims=(16, 32), **kw):
    kw.setdefault("diffusion_step_embed_dim", 16)
    kw.setdefault("kernel_size", 3)
    kw.setdefault("n_groups", 8)
    return ConditionalUnet1D(input_dim, cond_dim, down_dims=down_dims, **kw)


@pytest.mark.parametrize("horizon", [8, 16])
@pytest.mark.parametrize("down_dims", [(16,), (16, 32), (16, 32, 64)])
def test_output_shape(horizon, down_dims):
    torch.manual_seed(0)
    net = tiny_unet(down_dims=down_dims)
    x = torch.randn(2, horizon, 3)
    out = net(x, torch.tensor([0, 57]), torch.randn(2, 6))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_default_sizes_shape():
    net = ConditionalUnet1D(8, 2 * (2 * 64 + 16))
    out = net(torch.randn(1, 16, 8), torch.tensor([10.0]), torch.randn(1, 288))
    assert out.shape == (1, 16, 8)


def test_timestep_forms_agree():
    torch.manual_seed(0)
    net = tiny_unet().eval()
    x, c = torch.randn(3, 8, 3), torch.randn(3, 6)
    with torch.no_grad():
        ref = net(x, torch.full((3,), 7.0), c)
        assert torch.allclose(net(x, torch.full((3,), 7, dtype=torch.long), c), ref)
        # one shared timestep embeds once for the batch: equal up to float rounding
        assert torch.allclose(net(x, 7, c), ref, atol=1e-6)
        assert torch.allclose(net(x, torch.tensor(7.0), c), ref, atol=1e-6)
        # continuous noise labels differ from integer ones
        assert not torch.allclose(net(x, torch.full((3,), 7.3), c), ref)


def test_conditioning_changes_output_and_batch_independence():
    torch.manual_seed(0)
    net = tiny_unet().eval()
    x, c = torch.randn(2, 8, 3), torch.randn(2, 6)
    with torch.no_grad():
        a = net(x, torch.tensor([5.0, 5.0]), c)
        b = net(x, torch.tensor([5.0, 5.0]), c + 1.0)
        single = net(x[:1], torch.tensor([5.0]), c[:1])
    assert not torch.allclose(a, b)
    assert torch.allclose(a[:1], single, atol=1e-5)


@pytest.mark.parametrize("cond_predict_scale", [True, False])
def test_gradients_reach_every_parameter(cond_predict_scale):
    torch.manual_seed(0)
    net = tiny_unet(down_dims=(16, 32, 32), cond_predict_scale=cond_predict_scale)
    x = torch.randn(4, 16, 3, requires_grad=True)
    c = torch.randn(4, 6, requires_grad=True)
    net(x, torch.rand(4) * 99, c).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert c.grad is not None and c.grad.abs().sum() > 0
    unused = {n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    assert not unused, unused


def test_unconditional():
    net = tiny_unet(cond_dim=0)
    assert net(torch.randn(2, 8, 3), torch.tensor([1, 2])).shape == (2, 8, 3)


def test_sinusoidal_embedding():
    emb = SinusoidalPosEmb(16)
    e = emb(torch.tensor([0.0, 1.0, 50.0]))
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.zeros(8)) and torch.allclose(e[0, 8:], torch.ones(8))
    assert "freqs" not in emb.state_dict()
    with pytest.raises(ConfigError):
        SinusoidalPosEmb(7)


def test_bad_inputs_raise_config_errors():
    net = tiny_unet(down_dims=(16, 32, 64))
    with pytest.raises(ConfigError, match="divisible by 4"):
        net(torch.randn(1, 10, 3), torch.tensor([1]), torch.randn(1, 6))
    with pytest.raises(ConfigError, match="global_cond"):
        net(torch.randn(1, 8, 3), torch.tensor([1]), torch.randn(1, 5))
    with pytest.raises(ConfigError, match=r"\(B, T, 3\)"):
        net(torch.randn(1, 8, 4), torch.tensor([1]), torch.randn(1, 6))
    with pytest.raises(ConfigError, match="n_groups"):
        ConditionalUnet1D(3, 6, down_dims=(12, 32), n_groups=8)
    with pytest.raises(ConfigError, match="odd"):
        ConditionalUnet1D(3, 6, kernel_size=4)


def _export(module, args, names, dynamic):
    f = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module, args, f, dynamo=False, opset_version=17, input_names=names,
            output_names=["out"], dynamic_axes={**{n: {0: "B"} for n in dynamic}, "out": {0: "B"}},
        )
    # a TracerWarning raised in our code would mean a Python value was taken from a tensor
    ours = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
            and Path(w.filename).resolve().is_relative_to(PACKAGE_DIR)]
    assert not ours, [str(w.message) for w in ours]
    return f.getvalue()


def test_onnx_export_matches_eager():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = tiny_unet(input_dim=8, cond_dim=20, down_dims=(16, 32, 64)).eval()
    args = (torch.randn(2, 16, 8), torch.tensor([3.0, 60.0]), torch.randn(2, 20))
    data = _export(net, args, ["sample", "timestep", "global_cond"],
                   ["sample", "timestep", "global_cond"])
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert {i.name for i in model.graph.input} == {"sample", "timestep", "global_cond"}
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch
        x, t, c = torch.randn(batch, 16, 8), torch.rand(batch) * 99, torch.randn(batch, 20)
        with torch.no_grad():
            ref = net(x, t, c).numpy()
        out = sess.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "global_cond": c.numpy()})[0]
        assert np.abs(out - ref).max() < 1e-4


def test_half_precision_keeps_timestep_phases_accurate():
    torch.manual_seed(0)
    net = tiny_unet().eval()
    x, c, t = torch.randn(2, 8, 3), torch.randn(2, 6), torch.tensor([99, 3])
    with torch.no_grad():
        ref = net(x, t, c)
        out = net.to(torch.bfloat16)(x.bfloat16(), t, c.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * max(1.0, ref.abs().max().item())


def _reference_forward(net, x, t, c):
    """The U-Net with every block computing its FiLM from [step embedding, cond] itself."""
    cond = torch.cat([net.diffusion_step_encoder(t), c], dim=-1)
    h, skips = x.transpose(1, 2), []
    for block1, block2, down in net.down_modules:
        h = block2(block1(h, cond), cond)
        skips.append(h)
        h = down(h)
    for block in net.mid_modules:
        h = block(h, cond)
    for block1, block2, up in net.up_modules:
        h = up(block2(block1(torch.cat([h, skips.pop()], dim=1), cond), cond))
    return net.final_conv(h).transpose(1, 2)


@pytest.mark.parametrize("cond_predict_scale", [True, False])
def test_prepared_condition_is_the_same_network(cond_predict_scale):
    torch.manual_seed(0)
    net = tiny_unet(down_dims=(16, 32, 32), cond_predict_scale=cond_predict_scale).eval()
    x, c, t = torch.randn(2, 8, 3), torch.randn(2, 6), torch.tensor([3.0, 70.0])
    with torch.no_grad():
        ref = _reference_forward(net, x, t, c)
        prepared = net.prepare_condition(c)
        assert len(prepared.films) == len(net.residual_blocks()) == 12  # 3 levels down, 2 mid, 2 levels up
        assert torch.allclose(net(x, t, c), ref, atol=1e-5)
        assert torch.allclose(net(x, t, prepared), ref, atol=1e-5)
        # a prepared condition is checked like a raw one
        with pytest.raises(ConfigError, match="global_cond"):
            net(torch.randn(3, 8, 3), torch.tensor([1.0]), prepared)
