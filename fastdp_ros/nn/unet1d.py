"""A 1-D temporal U-Net that denoises action sequences, conditioned by FiLM.

Layout (after Chi et al., "Diffusion Policy", 2023): the action chunk (B, T, Da) is treated
as a Da-channel signal over T time steps. Each resolution level has two residual blocks
(Conv1d -> GroupNorm -> Mish, twice) whose features are modulated by a per-channel scale
and bias predicted from [timestep embedding, global condition]; levels are joined by
strided-conv downsampling, transposed-conv upsampling and skip connections.

The timestep is a float tensor, so the same network serves DDPM/DDIM (integer step index
given as float) and EDM/consistency models (the continuous noise label c_noise).

The FiLM of a block reads Mish([timestep embedding, global condition]) through one Linear, so
it splits exactly into a timestep share and an observation share. A sampler calls the network
many times with the same observation: `prepare_condition(global_cond)` computes the observation
share of every block once, and forward() accepts the result in place of global_cond (in an
exported fixed-step loop the timestep shares are constants, so each step's FiLM is two adds).
forward()
keeps no Python-side state and has no data-dependent control flow, so it traces and exports
to ONNX as one graph (see test/test_nn_unet.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fastdp_ros.errors import ConfigError
from fastdp_ros.nn._util import is_tracing

__all__ = ["SinusoidalPosEmb", "ConditionalResidualBlock1D", "ConditionalUnet1D", "PreparedCondition"]


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (B,) float tensor into (B, dim) = [sin(t f_i), cos(t f_i)].

    Frequencies f_i are geometric from 1 down to 1/max_period. They live in a non-persistent
    buffer: they follow .to(device) but do not appear in the state dict.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"timestep embedding dim must be an even number >= 2, got {dim}")
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        freqs = torch.exp(-math.log(max_period) * exponent).to(torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the phases are computed in float32 even in a half-precision model (t * f reaches
        # ~100 rad for DDPM steps); the result takes the module's dtype
        args = t.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1).to(self.freqs.dtype)


class Conv1dBlock(nn.Sequential):
    """Conv1d (same padding) -> GroupNorm -> Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )


class PreparedCondition(NamedTuple):
    """The observation's share of every residual block's FiLM (ConditionalUnet1D.prepare_condition)."""

    global_cond: torch.Tensor  # (B, C), kept for shape checks
    films: tuple[tuple[torch.Tensor, ...], ...]  # per block in forward order: (scale, bias) or (bias,)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM modulation of the first one's output by `cond`.

    With cond_predict_scale the condition predicts a per-channel (scale, bias) pair and the
    features become scale * h + bias; otherwise only a bias is added. forward(x, cond) computes
    the FiLM from cond; forward(x, film=...) takes it precomputed and split (ConditionalUnet1D
    does: in an exported loop the step's share is then a constant added, with no slicing).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        cond_dim: int,
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ):
        super().__init__()
        self.block1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.out_ch = out_ch
        self.cond_predict_scale = cond_predict_scale
        film_dim = 2 * out_ch if cond_predict_scale else out_ch
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def split_film(self, film: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, film_dim) -> (scale, bias) or (bias,), each (B, out_ch, 1)."""
        film = film.unsqueeze(-1)
        if self.cond_predict_scale:
            return film[:, : self.out_ch], film[:, self.out_ch :]
        return (film,)

    def film_share(self, features: torch.Tensor, start: int, bias: bool) -> tuple[torch.Tensor, ...]:
        """The FiLM's share from Mish'ed cond columns start:start+F of the Linear, split."""
        linear = self.cond_encoder[1]
        weight = linear.weight[:, start : start + features.shape[-1]]
        return self.split_film(F.linear(features, weight, linear.bias if bias else None))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                film: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        h = self.block1(x)
        if film is None:
            film = self.split_film(self.cond_encoder(cond))
        if self.cond_predict_scale:
            scale, bias = film
            h = scale * h + bias
        else:
            h = h + film[0]
        h = self.block2(h)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noise-prediction network for action sequences.

    Args:
        input_dim: action dimension Da (channels of the 1-D signal).
        global_cond_dim: size C of the flat conditioning vector (observation features over
            the n_obs_steps history); 0 for an unconditional network (global_cond=None).
        diffusion_step_embed_dim: width of the timestep embedding.
        down_dims: channels per resolution level; the horizon T must be divisible by
            2 ** (len(down_dims) - 1) (see `horizon_multiple`).
        kernel_size: temporal kernel of the residual blocks (odd).
        n_groups: GroupNorm groups; must divide every entry of down_dims.
        cond_predict_scale: FiLM with scale and bias (True) or bias only (False).

    forward(sample (B, T, Da), timestep (B,) float or int tensor, or a scalar,
            global_cond (B, C)) -> (B, T, Da)
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 128,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ):
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if input_dim < 1:
            raise ConfigError(f"input_dim must be >= 1, got {input_dim}")
        if global_cond_dim < 0:
            raise ConfigError(f"global_cond_dim must be >= 0, got {global_cond_dim}")
        if not down_dims:
            raise ConfigError("down_dims must name at least one level, e.g. (64, 128, 256)")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd, got {kernel_size}")
        bad = [d for d in down_dims if d < 1 or d % n_groups]
        if n_groups < 1 or bad:
            raise ConfigError(
                f"n_groups={n_groups} must divide every entry of down_dims={down_dims}"
            )

        self.input_dim = int(input_dim)
        self.global_cond_dim = int(global_cond_dim)
        self.down_dims = down_dims
        self.horizon_multiple = 2 ** (len(down_dims) - 1)

        dsed = int(diffusion_step_embed_dim)
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        self.diffusion_step_embed_dim = dsed
        cond_dim = dsed + self.global_cond_dim

        def res(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                i, o, cond_dim, kernel_size, n_groups, cond_predict_scale
            )

        dims = (self.input_dim,) + down_dims
        levels = list(zip(dims[:-1], dims[1:]))
        n = len(levels)

        self.down_modules = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(levels):
            last = i == n - 1
            self.down_modules.append(
                nn.ModuleList(
                    [
                        res(d_in, d_out),
                        res(d_out, d_out),
                        nn.Conv1d(d_out, d_out, 3, stride=2, padding=1) if not last else nn.Identity(),
                    ]
                )
            )

        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])

        self.up_modules = nn.ModuleList()
        # every up level undoes one downsampling; the finest level's skip stays unused
        for d_in, d_out in reversed(levels[1:]):
            self.up_modules.append(
                nn.ModuleList(
                    [
                        res(d_out * 2, d_in),
                        res(d_in, d_in),
                        nn.ConvTranspose1d(d_in, d_in, 4, stride=2, padding=1),
                    ]
                )
            )

        start = down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel_size, n_groups),
            nn.Conv1d(start, self.input_dim, 1),
        )

    def _check(self, sample: torch.Tensor, timestep, global_cond: torch.Tensor | None) -> None:
        if sample.dim() != 3 or sample.shape[-1] != self.input_dim:
            raise ConfigError(
                f"ConditionalUnet1D expects sample of shape (B, T, {self.input_dim}), "
                f"got {tuple(sample.shape)}"
            )
        if sample.shape[1] % self.horizon_multiple:
            raise ConfigError(
                f"horizon T={sample.shape[1]} must be divisible by {self.horizon_multiple} "
                f"for down_dims={self.down_dims}; pad the horizon or use fewer levels"
            )
        if torch.is_tensor(timestep) and timestep.numel() not in (1, sample.shape[0]):
            raise ConfigError(
                f"timestep must hold 1 or B={sample.shape[0]} values, got shape "
                f"{tuple(timestep.shape)}"
            )
        if self.global_cond_dim:
            if global_cond is None or tuple(global_cond.shape) != (
                sample.shape[0],
                self.global_cond_dim,
            ):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ConfigError(
                    f"global_cond must have shape (B, {self.global_cond_dim}) = "
                    f"({sample.shape[0]}, {self.global_cond_dim}), got {got}"
                )

    def residual_blocks(self) -> list[ConditionalResidualBlock1D]:
        """Every residual block, in the order forward() runs them."""
        blocks = [b for level in self.down_modules for b in level[:2]]
        blocks += list(self.mid_modules)
        return blocks + [b for level in self.up_modules for b in level[:2]]

    def prepare_condition(self, global_cond: torch.Tensor) -> PreparedCondition:
        """The observation's share of every block's FiLM: compute once, denoise many times."""
        if isinstance(global_cond, PreparedCondition):
            return global_cond
        if not self.global_cond_dim:
            raise ConfigError("prepare_condition needs a conditional network (global_cond_dim > 0)")
        features = F.mish(global_cond)
        start = self.diffusion_step_embed_dim
        films = tuple(b.film_share(features, start, bias=False) for b in self.residual_blocks())
        return PreparedCondition(global_cond, films)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        global_cond: torch.Tensor | PreparedCondition | None = None,
    ) -> torch.Tensor:
        prepared = global_cond if isinstance(global_cond, PreparedCondition) else None
        if not is_tracing():
            self._check(sample, timestep, global_cond if prepared is None else prepared.global_cond)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([float(timestep)], device=sample.device)
        # (1,) or (B,): a single timestep's embedding and FiLM share broadcast over the batch
        timestep = timestep.reshape(-1)

        # FiLM of block i = W_i Mish([step embedding, global_cond]) + b_i: in one product for a
        # single call, as a step share plus the prepared observation share in a sampling loop
        step = self.diffusion_step_encoder(timestep)
        if self.global_cond_dim and prepared is None:
            cond = torch.cat([step.expand(sample.shape[0], -1), global_cond.to(step.dtype)], dim=-1)
            films = [b.split_film(b.cond_encoder(cond)) for b in self.residual_blocks()]
        else:
            step = F.mish(step)
            films = [b.film_share(step, 0, bias=True) for b in self.residual_blocks()]
            if prepared is not None:
                films = [tuple(a + b for a, b in zip(f, g)) for f, g in zip(films, prepared.films)]
        films = iter(films)

        x = sample.transpose(1, 2)  # (B, Da, T)
        skips = []
        for block1, block2, down in self.down_modules:
            x = block1(x, film=next(films))
            x = block2(x, film=next(films))
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, film=next(films))
        for block1, block2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = block1(x, film=next(films))
            x = block2(x, film=next(films))
            x = up(x)
        x = self.final_conv(x)
        return x.transpose(1, 2)
