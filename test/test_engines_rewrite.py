"""The export-time rewrites (engines/onnx_rewrite.py): the same function, in the ops we export."""

import numpy as np
import pytest
import torch
from torch import nn

from fastdp_ros.engines.onnx_rewrite import Conv1dAs2d, GroupNormBN, MishExpLog, onnx_friendly
from fastdp_ros.nn.unet1d import ConditionalUnet1D

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return ConditionalUnet1D(input_dim=4, global_cond_dim=6, diffusion_step_embed_dim=8, down_dims=(16, 32),
                             kernel_size=5, n_groups=4).eval()


def test_rewritten_unet_computes_the_same_and_leaves_the_original_alone():
    unet = tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    rewritten = onnx_friendly(unet)
    kinds = {type(m) for m in rewritten.modules()}
    assert {Conv1dAs2d, GroupNormBN, MishExpLog} <= kinds
    assert not {nn.Conv1d, nn.GroupNorm, nn.Mish} & kinds
    assert any(isinstance(m, nn.Conv1d) for m in unet.modules())  # a copy was rewritten
    x, cond = torch.randn(3, 8, 4), torch.randn(3, 6)
    t = torch.tensor([0, 17, 99])
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x, t, cond), unet(x, t, cond), atol=1e-5, rtol=1e-5)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 2, 1, 1), (2, 1, 1, 1), (1, 4, 2, 2), (1, 0, 1, 1)])
def test_conv1d_as_2d_matches_conv1d(stride, padding, dilation, groups):
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 12, 5 if padding else 1, stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(Conv1dAs2d(conv)(x), conv(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 12, 16), (1, 12, 5, 7)])
def test_group_norm_as_instance_and_batch_norm_matches_group_norm(shape):
    torch.manual_seed(0)
    norm = nn.GroupNorm(3, 12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = 3.0 * torch.randn(shape) + 1.0
    with torch.no_grad():
        torch.testing.assert_close(GroupNormBN(norm)(x), norm(x), atol=1e-5, rtol=1e-5)


def test_unrewritable_modules_are_kept():
    same = nn.Conv1d(4, 4, 3, padding="same")
    circular = nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular")
    plain_norm = nn.GroupNorm(2, 4, affine=False)
    rewritten = onnx_friendly(nn.Sequential(same, circular, plain_norm))
    assert [type(m) for m in rewritten] == [nn.Conv1d, nn.Conv1d, nn.GroupNorm]


def test_mish_rewrite_matches_mish_over_the_whole_float_range():
    x = torch.cat([torch.linspace(-120, 120, 4001), torch.tensor([-1e30, -100.0, 88.7, 89.0, 1e4, 1e30])])
    got, want = MishExpLog()(x), nn.Mish()(x)
    assert torch.isfinite(got).all()  # exp() overflows to inf above 88.7; tanh(inf) = 1 keeps mish(x) = x
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_exported_graph_has_2d_convs_and_no_softplus(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines.onnxruntime_backend import export_onnx
    from fastdp_ros.policies.base import ExportGraph

    unet = tiny_unet()

    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x, cond):
            return self.unet(x, torch.tensor([10]), cond)

    x, cond = torch.randn(1, 8, 4), torch.randn(1, 6)
    graph = ExportGraph(module=Step().eval(), obs_keys=("x",), noise_shapes={"cond": (1, 6)},
                        example_inputs=(x, cond), output_name="eps")
    path = tmp_path / "step.onnx"
    export_onnx(graph, path)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "Softplus" not in ops and {"Conv", "InstanceNormalization", "BatchNormalization"} <= ops
    shapes = {i.name: len(i.dims) for i in model.graph.initializer}
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert conv_weights and all(shapes.get(w, 4) == 4 for w in conv_weights)

    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy(), "cond": cond.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, graph.module(x, cond).numpy(), atol=1e-5, rtol=1e-5)
