"""Image encoders in plain torch (no torchvision): backbones, pooling heads, crop augmentation.

Conventions
-----------
Every module here takes float images in [-1, 1], channel-first, shape (B, C, H, W) (or, for
`MultiImageObsEncoder`, any number of leading dims: (..., C, H, W)). The conversion from
camera frames -- uint8 (H, W, C) -> float (C, H, W) scaled to [-1, 1] -- is the policy's
preprocessing, not the encoder's, so an exported encoder graph holds only network ops.

Backbones
  `ResNet18GN`  ResNet-18 layout (BasicBlocks [2, 2, 2, 2]) with GroupNorm instead of
                BatchNorm (batch statistics are a liability with EMA, small batches and
                export), configurable width. 96x96 -> (8*width, 3, 3).
  `SmallCNN`    four conv layers (strides 2, 2, 2, 1); 96x96 -> (64, 12, 12). About a tenth of
                ResNet-18's compute: trains in reasonable time on a CPU.
Pooling
  `spatial_softmax`  per-channel softmax over the feature map and the expected (x, y) image
                     coordinate of each keypoint in [-1, 1], then a Linear to feature_dim.
  `avg`              global average pooling, then a Linear to feature_dim.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from fastdp_ros.errors import ConfigError
from fastdp_ros.nn._util import is_tracing

__all__ = [
    "group_norm",
    "BasicBlockGN",
    "ResNet18GN",
    "SmallCNN",
    "SpatialSoftmax",
    "SpatialSoftmaxPool",
    "AvgPool",
    "RandomCrop",
    "make_backbone",
    "MultiImageObsEncoder",
]


def group_norm(channels: int, channels_per_group: int = 16) -> nn.GroupNorm:
    """GroupNorm with about `channels_per_group` channels per group (always a divisor)."""
    target = max(1, channels // max(1, channels_per_group))
    groups = max(g for g in range(1, target + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class BasicBlockGN(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm and a projected shortcut if needed."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, channels_per_group: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_ch, channels_per_group)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_ch, channels_per_group)
        self.act = nn.ReLU(inplace=True)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                group_norm(out_ch, channels_per_group),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 feature extractor with GroupNorm; returns the last feature map.

    Args:
        in_channels: image channels (3 for RGB).
        width: channels of the first stage (64 in the standard ResNet-18); stages use
            width, 2*width, 4*width, 8*width.
        blocks: BasicBlocks per stage.
        channels_per_group: GroupNorm group size (16 as in diffusion_policy's GN swap).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        channels_per_group: int = 16,
    ):
        super().__init__()
        if width < 1 or in_channels < 1 or not blocks or any(b < 1 for b in blocks):
            raise ConfigError(
                f"ResNet18GN needs width >= 1, in_channels >= 1 and >= 1 block per stage, got "
                f"width={width}, in_channels={in_channels}, blocks={tuple(blocks)}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            group_norm(width, channels_per_group),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        ch = width
        for i, n in enumerate(blocks):
            out = width * 2**i
            layer = [BasicBlockGN(ch, out, 1 if i == 0 else 2, channels_per_group)]
            layer += [BasicBlockGN(out, out, 1, channels_per_group) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            ch = out
        self.stages = nn.Sequential(*stages)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SmallCNN(nn.Module):
    """A light conv net: conv(5x5, s2) then 3x3 convs; GroupNorm + ReLU after each.

    Args:
        in_channels: image channels.
        channels: output channels of each conv layer.
        strides: stride of each conv layer (same length as channels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 64, 64),
        strides: Sequence[int] = (2, 2, 2, 1),
        channels_per_group: int = 16,
    ):
        super().__init__()
        channels, strides = tuple(channels), tuple(strides)
        if not channels or len(channels) != len(strides):
            raise ConfigError(
                f"SmallCNN needs as many strides as channels, got channels={channels}, "
                f"strides={strides}"
            )
        layers: list[nn.Module] = []
        ch = in_channels
        for i, (out, s) in enumerate(zip(channels, strides)):
            k = 5 if i == 0 else 3
            layers += [
                nn.Conv2d(ch, out, k, stride=s, padding=k // 2, bias=False),
                group_norm(out, channels_per_group),
                nn.ReLU(inplace=True),
            ]
            ch = out
        self.net = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map: softmax over H*W per channel, expected (x, y) in [-1, 1].

    Args:
        in_channels, height, width: the feature map's shape.
        num_keypoints: if given, a 1x1 conv first maps in_channels to this many keypoint
            channels; otherwise every input channel is a keypoint.
        temperature: softmax temperature (learnable if learnable_temperature).

    forward(x (B, C, H, W)) -> (B, K, 2), the last dim being (x, y): x runs along the width
    (left -1 to right +1), y along the height (top -1 to bottom +1).
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_keypoints: int | None = None,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
    ):
        super().__init__()
        if num_keypoints is not None:
            self.keypoint_conv: nn.Module = nn.Conv2d(in_channels, num_keypoints, 1)
            self.num_keypoints = int(num_keypoints)
        else:
            self.keypoint_conv = nn.Identity()
            self.num_keypoints = int(in_channels)
        if temperature <= 0:
            raise ConfigError(f"spatial softmax temperature must be > 0, got {temperature}")
        temp = torch.tensor(float(temperature))
        if learnable_temperature:
            self.temperature = nn.Parameter(temp)
        else:
            self.register_buffer("temperature", temp)
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        # (H*W, 2) of (x, y)
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
        self.register_buffer("grid", grid, persistent=False)
        self.height, self.width = int(height), int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.keypoint_conv(x)
        b, k = x.shape[0], x.shape[1]
        logits = x.reshape(b, k, -1) / self.temperature
        attention = torch.softmax(logits, dim=-1)  # (B, K, H*W)
        return attention @ self.grid  # (B, K, 2)


class SpatialSoftmaxPool(nn.Module):
    """SpatialSoftmax keypoints, flattened, then a Linear to out_dim."""

    def __init__(self, in_channels: int, height: int, width: int, out_dim: int,
                 num_keypoints: int | None = 32):
        super().__init__()
        self.keypoints = SpatialSoftmax(in_channels, height, width, num_keypoints)
        self.proj = nn.Linear(2 * self.keypoints.num_keypoints, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.keypoints(x).flatten(1))


class AvgPool(nn.Module):
    """Global average pooling, then a Linear to out_dim."""

    def __init__(self, in_channels: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(-2, -1)))


class RandomCrop(nn.Module):
    """Random crop to (h, w) per sample in training mode, deterministic center crop in eval.

    Works on (B, C, H, W); each sample of the batch gets its own offset. Draws from torch's
    global generator (seed it with torch.manual_seed for reproducible training).
    """

    def __init__(self, crop_shape: Sequence[int]):
        super().__init__()
        if len(crop_shape) != 2 or min(crop_shape) < 1:
            raise ConfigError(f"crop_shape must be (height, width), got {tuple(crop_shape)}")
        self.crop_h, self.crop_w = int(crop_shape[0]), int(crop_shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if not is_tracing() and (h < self.crop_h or w < self.crop_w):
            raise ConfigError(
                f"crop ({self.crop_h}, {self.crop_w}) is larger than the image ({h}, {w})"
            )
        if not self.training:
            top = (h - self.crop_h) // 2
            left = (w - self.crop_w) // 2
            return x[..., top : top + self.crop_h, left : left + self.crop_w]
        b = x.shape[0]
        top = torch.randint(0, h - self.crop_h + 1, (b,), device=x.device)
        left = torch.randint(0, w - self.crop_w + 1, (b,), device=x.device)
        rows = top[:, None] + torch.arange(self.crop_h, device=x.device)  # (B, ch)
        cols = left[:, None] + torch.arange(self.crop_w, device=x.device)  # (B, cw)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # advanced indexing puts the indexed dims first: (B, ch, cw, C)
        out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)


_BACKBONES = ("small_cnn", "resnet18")
_POOLS = ("spatial_softmax", "avg")


def make_backbone(name: str, in_channels: int = 3, **kwargs) -> nn.Module:
    """"small_cnn" -> SmallCNN, "resnet18" -> ResNet18GN; kwargs go to the constructor."""
    if name == "small_cnn":
        return SmallCNN(in_channels, **kwargs)
    if name == "resnet18":
        return ResNet18GN(in_channels, **kwargs)
    raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(_BACKBONES)}")


class _ImageEncoder(nn.Module):
    """crop (optional) -> backbone -> pool, for images (N, C, H, W)."""

    def __init__(self, image_shape, crop_shape, backbone, backbone_kwargs, pool, feature_dim,
                 num_keypoints):
        super().__init__()
        c, h, w = image_shape
        self.crop = RandomCrop(crop_shape) if crop_shape is not None else nn.Identity()
        if crop_shape is not None:
            h, w = int(crop_shape[0]), int(crop_shape[1])
        self.backbone = make_backbone(backbone, c, **backbone_kwargs)
        with torch.no_grad():
            fmap = self.backbone(torch.zeros(1, c, h, w))
        _, fc, fh, fw = fmap.shape
        if pool == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmaxPool(fc, fh, fw, feature_dim, num_keypoints)
        elif pool == "avg":
            self.pool = AvgPool(fc, feature_dim)
        else:
            raise ConfigError(f"unknown pool {pool!r}; known: {', '.join(_POOLS)}")
        self.feature_map_shape = (int(fc), int(fh), int(fw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(self.crop(x)))


class MultiImageObsEncoder(nn.Module):
    """Encodes a dict observation (camera images + proprioception) into one flat vector.

    Args:
        image_keys: camera keys, e.g. ("img_front", "img_wrist"); their features come first,
            in this order.
        image_shape: (C, H, W) shared by all cameras (channel-first, float in [-1, 1]; the
            policy's preprocessing converts uint8 (H, W, C) frames).
        lowdim_keys_dims: {key: dim} of low-dimensional inputs (already normalized); they
            are appended as-is after the image features, in the dict's order.
        backbone: "small_cnn" or "resnet18".
        pool: "spatial_softmax" or "avg".
        share_backbone: one encoder (backbone and pooling head) for all cameras, run once on
            the cameras stacked along the batch; otherwise one encoder per camera.
        feature_dim: features per camera.
        crop_shape: (h, w): random crop during training, center crop in eval mode.
        num_keypoints: spatial-softmax keypoints (a 1x1 conv maps the channels to them);
            None uses every backbone channel as a keypoint.
        backbone_kwargs: extra constructor arguments of the backbone (e.g. width=32).

    forward(obs: {key: tensor}) with images (..., C, H, W) and low-dim (..., dim) sharing
    the same leading dims (e.g. (B,) or (B, n_obs_steps)) -> (..., output_dim).
    """

    def __init__(
        self,
        image_keys: Sequence[str],
        image_shape: Sequence[int],
        lowdim_keys_dims: Mapping[str, int] | None = None,
        backbone: str = "small_cnn",
        pool: str = "spatial_softmax",
        share_backbone: bool = False,
        feature_dim: int = 64,
        crop_shape: Sequence[int] | None = None,
        num_keypoints: int | None = 32,
        backbone_kwargs: Mapping | None = None,
    ):
        super().__init__()
        self.image_keys = tuple(str(k) for k in image_keys)
        self.lowdim_keys_dims = {str(k): int(v) for k, v in (lowdim_keys_dims or {}).items()}
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ConfigError(f"image_shape must be (C, H, W), got {image_shape}")
        if image_shape[0] > image_shape[1] or image_shape[0] > image_shape[2]:
            raise ConfigError(
                f"image_shape must be channel-first (C, H, W), got {image_shape}; "
                "convert (H, W, C) frames in the policy's preprocessing"
            )
        keys = self.image_keys + tuple(self.lowdim_keys_dims)
        if len(set(keys)) != len(keys):
            raise ConfigError(f"observation keys must be unique, got {keys}")
        if not keys:
            raise ConfigError("MultiImageObsEncoder needs at least one image or low-dim key")
        for k in keys:
            if not k or "." in k:
                raise ConfigError(f"observation key {k!r} must be non-empty and contain no '.'")
        for k, d in self.lowdim_keys_dims.items():
            if d < 1:
                raise ConfigError(f"low-dim key {k!r} must have dim >= 1, got {d}")
        if backbone not in _BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r}; known: {', '.join(_BACKBONES)}")
        if pool not in _POOLS:
            raise ConfigError(f"unknown pool {pool!r}; known: {', '.join(_POOLS)}")
        if crop_shape is not None:
            crop_shape = tuple(int(s) for s in crop_shape)
            if len(crop_shape) != 2 or crop_shape[0] > image_shape[1] or crop_shape[1] > image_shape[2]:
                raise ConfigError(
                    f"crop_shape {crop_shape} must be (h, w) no larger than the image "
                    f"{image_shape[1:]}"
                )
        if feature_dim < 1:
            raise ConfigError(f"feature_dim must be >= 1, got {feature_dim}")

        self.image_shape = image_shape
        self.share_backbone = bool(share_backbone)
        self.feature_dim = int(feature_dim)

        def encoder() -> _ImageEncoder:
            return _ImageEncoder(image_shape, crop_shape, backbone, dict(backbone_kwargs or {}),
                                 pool, feature_dim, num_keypoints)

        if not self.image_keys:
            self.encoders = nn.ModuleDict()
        elif self.share_backbone:
            self.encoders = nn.ModuleDict({"shared": encoder()})
        else:
            self.encoders = nn.ModuleDict({k: encoder() for k in self.image_keys})
        self.output_dim = len(self.image_keys) * self.feature_dim + sum(
            self.lowdim_keys_dims.values()
        )

    def _check(self, obs: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in self.image_keys + tuple(self.lowdim_keys_dims) if k not in obs]
        if missing:
            raise ConfigError(f"observation lacks keys {missing}; got keys {sorted(obs)}")
        lead = None
        for k in self.image_keys:
            x = obs[k]
            if x.dim() < 4 or tuple(x.shape[-3:]) != self.image_shape:
                raise ConfigError(
                    f"image {k!r} must have shape (..., {', '.join(map(str, self.image_shape))}) "
                    f"(channel-first float in [-1, 1]), got {tuple(x.shape)}"
                )
            lead = tuple(x.shape[:-3]) if lead is None else lead
            if tuple(x.shape[:-3]) != lead:
                raise ConfigError(f"image {k!r} has leading dims {tuple(x.shape[:-3])}, expected {lead}")
        for k, d in self.lowdim_keys_dims.items():
            x = obs[k]
            if x.dim() < 1 or x.shape[-1] != d:
                raise ConfigError(f"low-dim {k!r} must have shape (..., {d}), got {tuple(x.shape)}")
            lead = tuple(x.shape[:-1]) if lead is None else lead
            if tuple(x.shape[:-1]) != lead:
                raise ConfigError(f"low-dim {k!r} has leading dims {tuple(x.shape[:-1])}, expected {lead}")

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not is_tracing():
            self._check(obs)
        feats = []
        if self.image_keys:
            first = obs[self.image_keys[0]]
            lead = first.shape[:-3]
            c, h, w = self.image_shape
            flat = [obs[k].reshape(-1, c, h, w) for k in self.image_keys]
            if self.share_backbone:
                out = self.encoders["shared"](torch.cat(flat, dim=0))
                feats += list(out.chunk(len(flat), dim=0))
            else:
                feats += [self.encoders[k](x) for k, x in zip(self.image_keys, flat)]
            feats = [f.reshape(*lead, self.feature_dim) for f in feats]
        for k in self.lowdim_keys_dims:
            feats.append(obs[k].to(feats[0].dtype if feats else obs[k].dtype))
        return torch.cat(feats, dim=-1)
