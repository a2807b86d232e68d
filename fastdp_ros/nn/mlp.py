"""A plain multi-layer perceptron and the activation names the nn package understands."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from fastdp_ros.errors import ConfigError

__all__ = ["MLP", "make_activation", "activation_fn"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "mish": nn.Mish,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}


def make_activation(activation: str | type[nn.Module] | nn.Module) -> nn.Module:
    """A fresh activation module from a name ("mish", "relu", ...), a class or an instance."""
    if isinstance(activation, str):
        try:
            return _ACTIVATIONS[activation.lower()]()
        except KeyError:
            known = ", ".join(sorted(_ACTIVATIONS))
            raise ConfigError(f"unknown activation {activation!r}; known: {known}") from None
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    raise ConfigError(
        f"activation must be a name, an nn.Module class or instance, got {activation!r}"
    )


def activation_fn(
    activation: str | type[nn.Module] | nn.Module | Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable activation: names/classes become modules, plain callables pass through."""
    if callable(activation) and not (isinstance(activation, type)):
        return activation
    return make_activation(activation)


class MLP(nn.Module):
    """Linear -> [LayerNorm] -> activation for every hidden width, then a final Linear.

    Args:
        in_dim: input features.
        hidden_dims: widths of the hidden layers (may be empty: a single Linear).
        out_dim: output features.
        activation: nn.Mish (default), nn.ReLU, another nn.Module class, or a name.
        layer_norm: insert LayerNorm before each hidden activation.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        activation: str | type[nn.Module] = nn.Mish,
        layer_norm: bool = False,
    ):
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden_dims):
            raise ConfigError(
                f"MLP sizes must be >= 1, got in_dim={in_dim}, hidden_dims={hidden_dims}, "
                f"out_dim={out_dim}"
            )
        layers: list[nn.Module] = []
        d = int(in_dim)
        for h in hidden_dims:
            layers.append(nn.Linear(d, h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(make_activation(activation))
            d = h
        layers.append(nn.Linear(d, int(out_dim)))
        self.net = nn.Sequential(*layers)
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
