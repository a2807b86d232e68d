"""EDM / Karras et al. (2022) deterministic sampling of the probability-flow ODE.

dx/dsigma = (x - D(x; sigma)) / sigma, integrated from sigma_max to 0 over the Karras
noise levels with Euler or Heun (2nd order; Euler on the final step to sigma = 0). The
denoiser is the preconditioned network

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond)

where F is a `denoise_fn` (x, t, cond) whose t is the noise label c_noise = ln(sigma) / 4.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastdp_ros.diffusion.discrete import DenoiseFn, timestep_tensor
from fastdp_ros.diffusion.schedules import edm_preconditioning, karras_sigmas
from fastdp_ros.errors import ConfigError

__all__ = ["EDMSampler", "edm_denoise", "euler_step", "heun_step", "Denoiser"]

#: denoiser(x, sigma) -> x0 estimate; sigma a Python float, a 0-d tensor or a (B,) tensor
Denoiser = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]


def _per_sample(sigma, x: torch.Tensor):
    """Make a (B,) sigma broadcast against x (B, ...); floats and 0-d tensors pass through."""
    if torch.is_tensor(sigma) and sigma.dim() > 0:
        return sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return sigma


def edm_denoise(
    denoise_fn: DenoiseFn,
    x: torch.Tensor,
    sigma,
    cond: torch.Tensor | None = None,
    sigma_data: float = 0.5,
    preconditioning=edm_preconditioning,
) -> torch.Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond).

    sigma: a Python float (> 0), a 0-d tensor or a (B,) tensor. `preconditioning(sigma,
    sigma_data)` returns (c_skip, c_out, c_in, c_noise) (EDM's by default; pass
    schedules.consistency_preconditioning wrapped to fix sigma_min for consistency models).
    """
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    if torch.is_tensor(sigma):
        t = c_noise.to(x.dtype).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in = (_per_sample(c.to(x.dtype).reshape(-1), x) for c in (c_skip, c_out, c_in))
    else:
        t = timestep_tensor(x, c_noise)
    return c_skip * x + c_out * denoise_fn(c_in * x, t, cond)


def euler_step(denoiser: Denoiser, x: torch.Tensor, sigma_from, sigma_to) -> torch.Tensor:
    """One Euler step of the probability-flow ODE from sigma_from to sigma_to."""
    sf, st = _per_sample(sigma_from, x), _per_sample(sigma_to, x)
    d = (x - denoiser(x, sigma_from)) / sf
    return x + (st - sf) * d


def heun_step(denoiser: Denoiser, x: torch.Tensor, sigma_from, sigma_to) -> torch.Tensor:
    """One Heun (2nd-order) step from sigma_from to sigma_to; Euler where sigma_to == 0.

    sigmas may be Python floats (the branch is resolved in Python) or tensors, 0-d or (B,)
    (per-sample levels, as in consistency distillation's teacher step; the branch is a
    torch.where, so it traces and differentiates).
    """
    sf, st = _per_sample(sigma_from, x), _per_sample(sigma_to, x)
    d = (x - denoiser(x, sigma_from)) / sf
    x_euler = x + (st - sf) * d
    if not torch.is_tensor(sigma_to):
        if float(sigma_to) == 0.0:
            return x_euler
        d2 = (x_euler - denoiser(x_euler, sigma_to)) / st
        return x + (st - sf) * (0.5 * (d + d2))
    positive = sigma_to > 0
    safe = torch.where(positive, sigma_to, torch.ones_like(sigma_to))
    safe_b = _per_sample(safe, x)
    d2 = (x_euler - denoiser(x_euler, safe)) / safe_b
    x_heun = x + (st - sf) * (0.5 * (d + d2))
    return torch.where(_per_sample(positive, x), x_heun, x_euler)


class EDMSampler(nn.Module):
    """Deterministic Karras/EDM sampler with a fixed number of noise levels.

    Args:
        sigma_min, sigma_max, rho: the Karras schedule (karras_sigmas).
        num_steps: N noise levels; N ODE steps, the last one to sigma = 0.
        heun: 2nd-order Heun steps (2N - 1 network evaluations) or Euler (N).
        sigma_data: the data's standard deviation used by the preconditioning.
        preconditioning: (sigma, sigma_data) -> (c_skip, c_out, c_in, c_noise); EDM's by
            default, schedules.VPPreconditioning for a network trained as a DDPM model.

    sample(denoise_fn, noise, cond) starts from x = sigma_max * noise; sample_from(denoise_fn,
    x, start_index, cond) from an x at noise level sigmas[start_index] (noise_to_index).
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        num_steps: int = 18,
        heun: bool = True,
        sigma_data: float = 0.5,
        preconditioning=edm_preconditioning,
    ):
        super().__init__()
        if sigma_data <= 0:
            raise ConfigError(f"sigma_data must be > 0, got {sigma_data}")
        sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.num_steps = int(num_steps)
        self.heun = bool(heun)
        self.sigma_data = float(sigma_data)
        self.preconditioning = preconditioning
        self._sigmas = tuple(sigmas.tolist())
        self.register_buffer("sigmas", sigmas.to(torch.float32), persistent=False)

    @property
    def sigma_levels(self) -> tuple[float, ...]:
        """The N + 1 noise levels as Python floats (the last is 0)."""
        return self._sigmas

    stochastic = False

    def extra_repr(self) -> str:
        precond = "" if self.preconditioning is edm_preconditioning else f", preconditioning={self.preconditioning!r}"
        return (f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho}, "
                f"num_steps={self.num_steps}, heun={self.heun}, sigma_data={self.sigma_data}{precond}")

    def _check_start(self, start_index: int) -> int:
        if int(start_index) != start_index or not 0 <= start_index < self.num_steps:
            raise ConfigError(
                f"start_index must be an integer in [0, {self.num_steps - 1}], got {start_index!r}"
            )
        return int(start_index)

    def nfe(self, start_index: int = 0) -> int:
        """Network evaluations of sample_from(start_index)."""
        steps = self.num_steps - self._check_start(start_index)
        return 2 * steps - 1 if self.heun else steps

    def denoiser(self, denoise_fn: DenoiseFn, cond: torch.Tensor | None = None) -> Denoiser:
        """D(x, sigma) for this sampler's sigma_data, with cond bound."""

        def d(x: torch.Tensor, sigma) -> torch.Tensor:
            return edm_denoise(denoise_fn, x, sigma, cond, self.sigma_data, self.preconditioning)

        return d

    def noise_to_index(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """x0 + sigmas[index] * noise."""
        return x0 + self._sigmas[self._check_start(index)] * noise

    def run_ode(self, denoiser: Denoiser, x: torch.Tensor, start_index: int = 0) -> torch.Tensor:
        """Integrate with an explicit denoiser D(x, sigma) from sigmas[start_index] to 0."""
        start = self._check_start(start_index)
        step = heun_step if self.heun else euler_step
        for i in range(start, self.num_steps):
            x = step(denoiser, x, self._sigmas[i], self._sigmas[i + 1])
        return x

    def sample(self, denoise_fn: DenoiseFn, noise: torch.Tensor,
               cond: torch.Tensor | None = None, step_noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """From standard-normal noise (B, T, D) to a sample. step_noise/generator are accepted
        for a uniform sampler interface and ignored (the sampler is deterministic)."""
        return self.run_ode(self.denoiser(denoise_fn, cond), self._sigmas[0] * noise, 0)

    def sample_from(self, denoise_fn: DenoiseFn, x: torch.Tensor, start_index: int,
                    cond: torch.Tensor | None = None, step_noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """From x at noise level sigmas[start_index] to a sample."""
        return self.run_ode(self.denoiser(denoise_fn, cond), x, start_index)
