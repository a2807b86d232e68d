"""Neural-network building blocks of fastdp_ros (plain torch, export-friendly).

- `ConditionalUnet1D`: the temporal U-Net that denoises action chunks (B, T, Da), FiLM-
  conditioned on [timestep embedding, global observation features]; float timesteps.
- image encoders (`MultiImageObsEncoder`, `ResNet18GN`, `SmallCNN`, spatial-softmax and
  average pooling, `RandomCrop`); inputs are float images in [-1, 1], (B, C, H, W).
- `MLP`, `EMAModel`, `HyperNetwork` + `functional_mlp` (for Latent Weight Diffusion).

This package imports nothing from fastdp_ros but `errors`.
"""

from fastdp_ros.nn.ema import EMAModel
from fastdp_ros.nn.hypernet import HyperNetwork, functional_mlp, mlp_param_count
from fastdp_ros.nn.mlp import MLP, make_activation
from fastdp_ros.nn.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D, PreparedCondition, SinusoidalPosEmb
from fastdp_ros.nn.vision import (
    AvgPool,
    MultiImageObsEncoder,
    RandomCrop,
    ResNet18GN,
    SmallCNN,
    SpatialSoftmax,
    SpatialSoftmaxPool,
    make_backbone,
)

__all__ = [
    "ConditionalUnet1D",
    "ConditionalResidualBlock1D",
    "PreparedCondition",
    "SinusoidalPosEmb",
    "MultiImageObsEncoder",
    "ResNet18GN",
    "SmallCNN",
    "SpatialSoftmax",
    "SpatialSoftmaxPool",
    "AvgPool",
    "RandomCrop",
    "make_backbone",
    "MLP",
    "make_activation",
    "EMAModel",
    "HyperNetwork",
    "functional_mlp",
    "mlp_param_count",
]
