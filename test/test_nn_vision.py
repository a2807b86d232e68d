"""Image encoders: backbones, pooling, crop augmentation, the multi-camera encoder."""

import io
import warnings

import numpy as np
import pytest
import torch

from fastdp_ros.errors import ConfigError
from fastdp_ros.nn import (
    AvgPool,
    MultiImageObsEncoder,
    RandomCrop,
    ResNet18GN,
    SmallCNN,
    SpatialSoftmax,
    SpatialSoftmaxPool,
)
from fastdp_ros.nn.vision import group_norm


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(*lead, c=3, h=96, w=96):
    return torch.rand(*lead, c, h, w) * 2 - 1


def test_small_cnn_feature_map():
    net = SmallCNN()
    assert net(images(2)).shape == (2, 64, 12, 12)
    assert net.out_channels == 64


@pytest.mark.parametrize("width", [16, 64])
def test_resnet18gn_feature_map(width):
    net = ResNet18GN(width=width)
    out = net(images(1))
    assert out.shape == (1, 8 * width, 3, 3)
    assert net.out_channels == 8 * width
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    blocks = [m for m in net.modules() if type(m).__name__ == "BasicBlockGN"]
    assert len(blocks) == 8


def test_resnet18gn_standard_width_parameter_count():
    # ResNet-18's conv weights (11.2 M without the fc layer); GroupNorm keeps BN's affine count
    n = sum(p.numel() for p in ResNet18GN().parameters())
    assert 11_100_000 < n < 11_200_000


def test_group_norm_groups_divide_channels():
    for ch in (8, 24, 40, 56, 64, 512):
        gn = group_norm(ch)
        assert ch % gn.num_groups == 0 and gn.num_groups <= max(1, ch // 16)


def test_spatial_softmax_keypoints_in_range_and_located():
    ss = SpatialSoftmax(4, 12, 10)
    fmap = torch.randn(3, 4, 12, 10) * 50  # peaky softmax
    kp = ss(fmap)
    assert kp.shape == (3, 4, 2)
    assert kp.min() >= -1 and kp.max() <= 1
    # a single hot pixel puts the keypoint on it: (x, y) = (col, row) mapped to [-1, 1]
    hot = torch.full((1, 4, 12, 10), -1e4)
    hot[0, 0, 0, 0] = 0  # top-left
    hot[0, 1, 11, 9] = 0  # bottom-right
    hot[0, 2, 0, 9] = 0  # top-right
    hot[0, 3, 11, 0] = 0  # bottom-left
    kp = ss(hot)[0]
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert torch.allclose(kp, expected, atol=1e-5)
    # a uniform map gives the centre
    assert torch.allclose(ss(torch.zeros(1, 4, 12, 10)), torch.zeros(1, 4, 2), atol=1e-6)


def test_spatial_softmax_with_keypoint_conv_and_pools():
    ss = SpatialSoftmax(64, 12, 12, num_keypoints=32)
    assert ss(torch.randn(2, 64, 12, 12)).shape == (2, 32, 2)
    assert SpatialSoftmaxPool(64, 12, 12, 48, num_keypoints=None)(torch.randn(2, 64, 12, 12)).shape == (2, 48)
    assert AvgPool(64, 48)(torch.randn(2, 64, 12, 12)).shape == (2, 48)


def test_random_crop_train_and_eval():
    torch.manual_seed(0)
    crop = RandomCrop((84, 80))
    x = torch.arange(96 * 96, dtype=torch.float32).reshape(1, 1, 96, 96).repeat(8, 3, 1, 1)
    out = crop(x)
    assert out.shape == (8, 3, 84, 80)
    # each sample is a contiguous window of the original, channels kept together
    tops = (out[:, 0, 0, 0] // 96).long()
    lefts = (out[:, 0, 0, 0] % 96).long()
    for i in range(8):
        win = x[i, :, tops[i] : tops[i] + 84, lefts[i] : lefts[i] + 80]
        assert torch.equal(out[i], win)
    assert len({(int(t), int(l)) for t, l in zip(tops, lefts)}) > 1  # per-sample offsets
    crop.eval()
    centre = crop(x)
    assert torch.equal(centre, x[:, :, 6:90, 8:88])
    with pytest.raises(ConfigError):
        RandomCrop((100, 80)).eval()(x)


@pytest.mark.parametrize("backbone,pool", [("small_cnn", "spatial_softmax"), ("small_cnn", "avg"),
                                           ("resnet18", "spatial_softmax")])
def test_multi_image_encoder_shapes(backbone, pool):
    kw = {"backbone_kwargs": {"width": 16}} if backbone == "resnet18" else {}
    enc = MultiImageObsEncoder(["img_front", "img_wrist"], (3, 96, 96), {"joint_pos": 7, "gripper": 1},
                               backbone=backbone, pool=pool, feature_dim=32, **kw)
    assert enc.output_dim == 2 * 32 + 8
    obs = {"img_front": images(2), "img_wrist": images(2), "joint_pos": torch.randn(2, 7),
           "gripper": torch.randn(2, 1)}
    out = enc(obs)
    assert out.shape == (2, enc.output_dim)
    # proprioception is appended as-is, after the image features, in dict order
    assert torch.equal(out[:, 64:71], obs["joint_pos"]) and torch.equal(out[:, 71:], obs["gripper"])
    # extra leading dims (B, n_obs_steps)
    obs2 = {k: v.unsqueeze(1).expand(2, 3, *v.shape[1:]) for k, v in obs.items()}
    out2 = enc(obs2)
    assert out2.shape == (2, 3, enc.output_dim)
    assert torch.allclose(out2[:, 1], out, atol=1e-5)


def test_shared_vs_per_camera():
    torch.manual_seed(0)
    kw = dict(image_keys=["a", "b"], image_shape=(3, 64, 64), lowdim_keys_dims={"q": 2}, feature_dim=16)
    shared = MultiImageObsEncoder(share_backbone=True, **kw)
    separate = MultiImageObsEncoder(share_backbone=False, **kw)
    assert list(shared.encoders) == ["shared"] and list(separate.encoders) == ["a", "b"]
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_separate == 2 * n_shared
    assert shared.output_dim == separate.output_dim == 2 * 16 + 2
    x = images(2, h=64, w=64)
    obs = {"a": x, "b": x, "q": torch.zeros(2, 2)}
    s = shared(obs)
    assert torch.allclose(s[:, :16], s[:, 16:32], atol=1e-6)  # same weights, same image
    p = separate(obs)
    assert not torch.allclose(p[:, :16], p[:, 16:32])
    # cameras are encoded independently: changing camera b leaves camera a's features alone
    obs_b = dict(obs, b=images(2, h=64, w=64))
    assert torch.allclose(shared(obs_b)[:, :16], s[:, :16], atol=1e-6)


def test_encoder_with_crop_and_lowdim_only():
    enc = MultiImageObsEncoder(["cam"], (3, 96, 96), {}, crop_shape=(84, 84), feature_dim=8)
    enc.train()
    assert enc({"cam": images(4)}).shape == (4, 8)
    enc.eval()
    x = images(2)
    assert torch.equal(enc({"cam": x}), enc({"cam": x}))  # deterministic centre crop at eval
    only = MultiImageObsEncoder([], (3, 96, 96), {"q": 3})
    assert only.output_dim == 3 and only({"q": torch.ones(2, 3)}).shape == (2, 3)


def test_encoder_gradients_flow():
    enc = MultiImageObsEncoder(["a"], (3, 48, 48), {"q": 2}, feature_dim=8)
    enc({"a": images(2, h=48, w=48), "q": torch.randn(2, 2)}).square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_encoder_config_errors():
    with pytest.raises(ConfigError, match="channel-first"):
        MultiImageObsEncoder(["a"], (96, 96, 3))
    with pytest.raises(ConfigError, match="backbone"):
        MultiImageObsEncoder(["a"], (3, 96, 96), backbone="vit")
    with pytest.raises(ConfigError, match="pool"):
        MultiImageObsEncoder(["a"], (3, 96, 96), pool="max")
    with pytest.raises(ConfigError, match="unique"):
        MultiImageObsEncoder(["a", "a"], (3, 96, 96))
    with pytest.raises(ConfigError, match="crop"):
        MultiImageObsEncoder(["a"], (3, 96, 96), crop_shape=(100, 84))
    enc = MultiImageObsEncoder(["a"], (3, 32, 32), {"q": 2}, feature_dim=4)
    with pytest.raises(ConfigError, match="lacks"):
        enc({"a": images(1, h=32, w=32)})
    with pytest.raises(ConfigError, match="channel-first"):
        enc({"a": torch.zeros(1, 32, 32, 3), "q": torch.zeros(1, 2)})
    with pytest.raises(ConfigError, match="low-dim"):
        enc({"a": images(1, h=32, w=32), "q": torch.zeros(1, 3)})


def test_encoder_onnx_export_matches_eager():
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    enc = MultiImageObsEncoder(["a", "b"], (3, 64, 64), {"q": 3}, crop_shape=(56, 56), feature_dim=16)

    class Flat(torch.nn.Module):  # the exporter takes positional tensors
        def __init__(self, e):
            super().__init__()
            self.e = e

        def forward(self, a, b, q):
            return self.e({"a": a, "b": b, "q": q})

    flat = Flat(enc).eval()
    args = (images(2, h=64, w=64), images(2, h=64, w=64), torch.randn(2, 3))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(flat, args, f, dynamo=False, opset_version=17, input_names=["a", "b", "q"],
                          dynamic_axes={k: {0: "B"} for k in "abq"})
    flat.eval()  # export restores the previous mode; keep the centre crop
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    new = (images(3, h=64, w=64), images(3, h=64, w=64), torch.randn(3, 3))
    with torch.no_grad():
        ref = flat(*new).numpy()
    out = sess.run(None, dict(zip("abq", (t.numpy() for t in new))))[0]
    assert np.abs(out - ref).max() < 1e-4
