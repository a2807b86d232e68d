"""A hypernetwork that writes the weights of a small MLP policy, and that MLP as a function.

Latent Weight Diffusion diffuses in a latent space; `HyperNetwork` decodes a latent into the
flat parameter vector of a target MLP with layer sizes [in, h1, ..., out], and
`functional_mlp` runs that MLP with those weights, batched over latents.

Flat parameter layout, layer after layer: the weight (out_i, in_i) row-major, then the
bias (out_i,). `mlp_param_count(layer_sizes)` gives its length.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastdp_ros.errors import ConfigError
from fastdp_ros.nn._util import is_tracing
from fastdp_ros.nn.mlp import MLP, activation_fn

__all__ = ["mlp_param_count", "functional_mlp", "HyperNetwork"]


def _check_sizes(layer_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in layer_sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ConfigError(
            f"target layer sizes must be [in, ..., out] with at least two entries >= 1, "
            f"got {list(layer_sizes)}"
        )
    return sizes


def mlp_param_count(layer_sizes: Sequence[int]) -> int:
    """Number of weights and biases of an MLP with these layer sizes."""
    sizes = _check_sizes(layer_sizes)
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def functional_mlp(
    x: torch.Tensor,
    flat_params: torch.Tensor,
    layer_sizes: Sequence[int],
    activation: str | Callable[[torch.Tensor], torch.Tensor] = "mish",
    final_activation: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the MLP `layer_sizes` with weights `flat_params`.

    Shapes:
        flat_params (P,):     x (..., in)   -> (..., out)         one network
        flat_params (B, P):   x (B, in)     -> (B, out)           one input per network
                              x (B, N, in)  -> (B, N, out)        N inputs per network
    The activation follows every layer but the last (`final_activation` there, if given).
    """
    sizes = _check_sizes(layer_sizes)
    count = mlp_param_count(sizes)
    if flat_params.dim() not in (1, 2):
        raise ConfigError(f"flat_params must be (P,) or (B, P), got {tuple(flat_params.shape)}")
    if not is_tracing():
        if flat_params.shape[-1] != count:
            raise ConfigError(
                f"flat_params must have P={count} entries for layer sizes {list(sizes)}, "
                f"got {tuple(flat_params.shape)}"
            )
        if x.shape[-1] != sizes[0]:
            raise ConfigError(f"x must end in {sizes[0]} features, got {tuple(x.shape)}")
    act = activation_fn(activation)
    final = activation_fn(final_activation) if final_activation is not None else None

    batched = flat_params.dim() == 2
    squeeze = False
    h = x
    if batched:
        if x.dim() == 2:
            h, squeeze = x.unsqueeze(1), True
        elif x.dim() != 3:
            raise ConfigError(f"with (B, P) params x must be (B, in) or (B, N, in), got {tuple(x.shape)}")

    offset = 0
    last = len(sizes) - 2
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = flat_params[..., offset : offset + d_in * d_out]
        offset += d_in * d_out
        b = flat_params[..., offset : offset + d_out]
        offset += d_out
        if batched:
            w = w.reshape(-1, d_out, d_in)
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        else:
            h = F.linear(h, w.reshape(d_out, d_in), b)
        if i < last:
            h = act(h)
        elif final is not None:
            h = final(h)
    return h.squeeze(1) if squeeze else h


class HyperNetwork(nn.Module):
    """MLP from a latent (B, latent_dim) to the flat weights (B, P) of a target MLP.

    Args:
        latent_dim: size of the latent.
        target_layer_sizes: [in, h1, ..., out] of the target (policy) MLP.
        hidden: width of the hypernetwork's hidden layers.
        num_hidden_layers: hidden layers of the hypernetwork.
        activation: the hypernetwork's activation.
        target_activation: the target MLP's activation (used by `run_target`).
        init_scale: scale of the output layer's initial weights; its bias is set to a
            standard (PyTorch-default) initialization of the target, so at start every
            latent decodes to a sensibly initialized target near that point.
    """

    def __init__(
        self,
        latent_dim: int,
        target_layer_sizes: Sequence[int],
        hidden: int = 256,
        num_hidden_layers: int = 2,
        activation: str = "mish",
        target_activation: str = "mish",
        init_scale: float = 1e-2,
    ):
        super().__init__()
        self.target_layer_sizes = _check_sizes(target_layer_sizes)
        self.num_target_params = mlp_param_count(self.target_layer_sizes)
        self.latent_dim = int(latent_dim)
        self.target_activation = target_activation
        self.net = MLP(latent_dim, [hidden] * num_hidden_layers, self.num_target_params,
                       activation=activation)
        out_layer = self.net.net[-1]
        with torch.no_grad():
            out_layer.weight.mul_(init_scale)
            out_layer.bias.copy_(self._default_target_params())

    def _default_target_params(self) -> torch.Tensor:
        chunks = []
        for d_in, d_out in zip(self.target_layer_sizes[:-1], self.target_layer_sizes[1:]):
            layer = nn.Linear(d_in, d_out)
            chunks += [layer.weight.detach().reshape(-1), layer.bias.detach()]
        return torch.cat(chunks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, num_target_params)."""
        return self.net(z)

    def run_target(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Decode z and run the target MLP on x ((B, in) or (B, N, in))."""
        return functional_mlp(x, self(z), self.target_layer_sizes, self.target_activation)
