"""Noise schedules: discrete-time betas (DDPM/DDIM) and continuous EDM/Karras sigmas.

Everything is computed in float64 and returned as float64 tensors (or Python floats); the
samplers cast once to their working dtype.
"""

from __future__ import annotations

import bisect
import math

import torch

from fastdp_ros.errors import ConfigError

__all__ = [
    "cosine_betas",
    "linear_betas",
    "make_betas",
    "alphas_cumprod",
    "karras_sigmas",
    "edm_preconditioning",
    "consistency_preconditioning",
    "VPPreconditioning",
    "preconditioned_loss_weight",
    "edm_loss_weight",
    "edm_training_sigmas",
    "BETA_SCHEDULES",
]


def cosine_betas(num_train_timesteps: int = 100, s: float = 0.008, max_beta: float = 0.999):
    """The improved-DDPM cosine schedule ("squaredcos_cap_v2", Nichol & Dhariwal 2021).

    alpha_bar(u) = cos(((u + s) / (1 + s)) * pi / 2) ** 2 for u in [0, 1], and
    beta_i = min(1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), max_beta).
    """
    n = _check_steps(num_train_timesteps)

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(num_train_timesteps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Betas spaced linearly from beta_start to beta_end (Ho et al. 2020)."""
    n = _check_steps(num_train_timesteps)
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


BETA_SCHEDULES = {"squaredcos_cap_v2": cosine_betas, "linear": linear_betas}


def make_betas(beta_schedule: str, num_train_timesteps: int = 100) -> torch.Tensor:
    """Betas of a named schedule: "squaredcos_cap_v2" or "linear"."""
    try:
        fn = BETA_SCHEDULES[beta_schedule]
    except KeyError:
        known = ", ".join(sorted(BETA_SCHEDULES))
        raise ConfigError(f"unknown beta_schedule {beta_schedule!r}; known: {known}") from None
    return fn(num_train_timesteps)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{i <= t} (1 - beta_i)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def karras_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """Karras et al. (2022) noise levels: num_steps levels from sigma_max down to sigma_min,
    spaced uniformly in sigma ** (1 / rho), followed by a final 0 -> (num_steps + 1,).
    """
    n = _check_steps(num_steps)
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if rho <= 0:
        raise ConfigError(f"rho must be > 0, got {rho}")
    if n == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    else:
        ramp = torch.arange(n, dtype=torch.float64) / (n - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """EDM (Karras et al. 2022, table 1) preconditioning -> (c_skip, c_out, c_in, c_noise).

    D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise), with
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma * sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4.
    `sigma` may be a Python float (floats are returned) or a tensor (tensors, same shape).
    """
    sd2 = sigma_data**2
    if torch.is_tensor(sigma):
        s2 = sigma * sigma
        root = torch.sqrt(s2 + sd2)
        return sd2 / (s2 + sd2), sigma * sigma_data / root, 1.0 / root, torch.log(sigma) / 4.0
    sigma = float(sigma)
    if sigma <= 0:
        raise ConfigError(f"sigma must be > 0 for preconditioning, got {sigma}")
    root = math.sqrt(sigma * sigma + sd2)
    return sd2 / (sigma * sigma + sd2), sigma * sigma_data / root, 1.0 / root, math.log(sigma) / 4.0


def consistency_preconditioning(sigma, sigma_min: float = 0.002, sigma_data: float = 0.5):
    """Consistency-model boundary-respecting skip/out (Song et al. 2023) -> (c_skip, c_out, c_in, c_noise).

    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),
    so that D(x; sigma_min) = x exactly; c_in and c_noise as in EDM.
    """
    _, _, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
    sd2 = sigma_data**2
    if torch.is_tensor(sigma):
        d = sigma - sigma_min
        return sd2 / (d * d + sd2), d * sigma_data / torch.sqrt(sigma * sigma + sd2), c_in, c_noise
    d = float(sigma) - sigma_min
    return sd2 / (d * d + sd2), d * sigma_data / math.sqrt(float(sigma) ** 2 + sd2), c_in, c_noise


class VPPreconditioning:
    """EDM's VP preconditioning (Karras et al. 2022, table 1) over a discrete DDPM schedule.

    D(x; sigma) = x - sigma F(x / sqrt(sigma^2 + 1), t(sigma)), with t(sigma) the fractional
    DDPM timestep whose noise level sqrt((1 - abar_t) / abar_t) is sigma (piecewise linear in
    ln sigma, clamped to [0, T - 1]). A DDPM epsilon network is such an F as it is: x / sqrt(
    sigma^2 + 1) is the DDPM sample x_t for x = x0 + sigma eps, so a model with this
    preconditioning starts as its DDPM teacher's probability-flow ODE, with no training.
    Call it like edm_preconditioning: (sigma, sigma_data) -> (c_skip, c_out, c_in, c_noise);
    sigma_data is not used.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.to(torch.float64)
        if abar.dim() != 1 or len(abar) < 2 or not bool(((abar > 0) & (abar < 1)).all()):
            raise ConfigError("VP preconditioning needs >= 2 cumulative alphas in (0, 1)")
        self.log_sigmas = torch.log(torch.sqrt((1.0 - abar) / abar))
        if not bool((self.log_sigmas[1:] > self.log_sigmas[:-1]).all()):
            raise ConfigError("VP preconditioning needs a schedule whose noise grows with t")
        self._table = self.log_sigmas.tolist()
        # the table on each (device, dtype) it is used with, made once: a copy per call would be a
        # host-to-device transfer inside every step, which CUDA graph capture refuses
        self._device_tables: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"VPPreconditioning(num_train_timesteps={len(self.log_sigmas)})"

    def timestep(self, sigma):
        """t(sigma): a float for a float, else a tensor shaped like sigma."""
        if torch.is_tensor(sigma):
            # sum of per-segment fractions = piecewise-linear interpolation, clamped at both
            # ends; unlike searchsorted it exports to ONNX (Sub, Div, Clip, ReduceSum)
            table = self.table_on(sigma.device, sigma.dtype)
            x = torch.log(sigma).unsqueeze(-1)
            return ((x - table[:-1]) / (table[1:] - table[:-1])).clamp(0.0, 1.0).sum(-1)
        sigma = float(sigma)
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0 for preconditioning, got {sigma}")
        # called once per sampler step in eager act(): locate the segment, do not scan all
        table = self._table
        x = math.log(sigma)
        i = min(max(bisect.bisect_right(table, x), 1), len(table) - 1)
        lo, hi = table[i - 1], table[i]
        return (i - 1) + min(1.0, max(0.0, (x - lo) / (hi - lo)))

    def table_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """ln sigma_t for every DDPM timestep, as a tensor on `device` (kept for the next call)."""
        key = (device, dtype)
        if key not in self._device_tables:
            self._device_tables[key] = self.log_sigmas.to(device=device, dtype=dtype)
        return self._device_tables[key]

    def __call__(self, sigma, sigma_data: float = 0.5):
        t = self.timestep(sigma)
        if torch.is_tensor(sigma):
            return torch.ones_like(sigma), -sigma, torch.rsqrt(sigma * sigma + 1.0), t
        return 1.0, -float(sigma), 1.0 / math.sqrt(float(sigma) ** 2 + 1.0), t


def preconditioned_loss_weight(preconditioning, sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """Denoising loss weight 1 / c_out(sigma)^2 (EDM's lambda for its own preconditioning;
    the epsilon-prediction loss for VP)."""
    c_out = preconditioning(sigma, sigma_data)[1]
    return 1.0 / (c_out * c_out)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2 (= 1 / c_out^2)."""
    return (sigma * sigma + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_training_sigmas(
    batch_size: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels: ln(sigma) ~ N(p_mean, p_std^2), shape (batch_size,)."""
    z = torch.randn(batch_size, generator=generator, device=device)
    return torch.exp(p_mean + p_std * z)


def _check_steps(n) -> int:
    if int(n) != n or int(n) < 1:
        raise ConfigError(f"number of steps must be an integer >= 1, got {n!r}")
    return int(n)
