"""Discrete-time samplers: DDPM (ancestral, every training step) and DDIM (any K steps).

Both are torch modules whose step count and coefficients are fixed at construction: the
coefficients are immutable tuples of Python floats (computed in float64), the timesteps a
tuple of ints, mirrored in buffers for inspection and device moves. sample() is a plain
Python for-loop over those tuples with no data-dependent control flow and no scheduler state,
so a traced call unrolls into one graph (see FixedStepSampler).

Both samplers run the same x0 prediction (and the same clipping), so DDIM with K equal to
the number of training steps and eta=1 is DDPM ancestral sampling, step for step.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import nn

from fastdp_ros.diffusion.schedules import alphas_cumprod, make_betas
from fastdp_ros.errors import ConfigError

__all__ = ["DDPMSampler", "DDIMSampler", "DenoiseFn", "PREDICTION_TYPES", "TIMESTEP_SPACINGS"]

#: denoise_fn(x (B, T, D), t (B,) float, cond (B, C) or None) -> (B, T, D); see the package docs
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _static_size(x: torch.Tensor, dim: int) -> int:
    """x.shape[dim] as a Python int, also while tracing (for axes that are never dynamic)."""
    size = x.shape[dim]
    if torch.is_tensor(size):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            size = int(size)
    return int(size)


def timestep_tensor(x: torch.Tensor, value: float) -> torch.Tensor:
    """A (1,) tensor holding `value`, shared by the whole batch of x.

    It does not depend on x's shape, so in a traced fixed-step loop it is a constant and an
    exporter folds everything computed from the step alone (the U-Net's step embedding and
    its FiLM shares) into constants.
    """
    return torch.full((1,), float(value), dtype=x.dtype, device=x.device)


class _DiscreteSampler(nn.Module):
    """Shared schedule, forward process and x0/epsilon algebra of DDPM and DDIM."""

    def __init__(
        self,
        num_train_timesteps: int,
        beta_schedule: str,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unknown prediction_type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}"
            )
        if clip_sample_range <= 0:
            raise ConfigError(f"clip_sample_range must be > 0, got {clip_sample_range}")
        betas = make_betas(beta_schedule, num_train_timesteps)
        ac = alphas_cumprod(betas)
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self._betas = tuple(betas.tolist())
        self._ac = tuple(ac.tolist())
        # buffers derive from the constructor arguments: they follow .to() but are not saved
        tables = {
            "betas": betas,
            "alphas_cumprod": ac,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.to(torch.float32), persistent=False)

    # ---- forward process and training -------------------------------------------------------

    def _gather(self, table: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        t = t.to(device=table.device, dtype=torch.long).reshape(-1)
        v = table[t].to(x.dtype)
        return v.reshape(-1, *([1] * (x.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; t an int or a (B,) int tensor."""
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """What the network regresses at x_t = add_noise(x0, noise, t) for this prediction_type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a = self._gather(self.sqrt_alphas_cumprod, t, x0)
        s = self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * noise - s * x0

    def sample_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Uniform training timesteps in [0, num_train_timesteps), shape (batch_size,)."""
        return torch.randint(
            0, self.num_train_timesteps, (batch_size,), generator=generator, device=device
        )

    # ---- reverse process ------------------------------------------------------------------

    def _x0_eps(self, x: torch.Tensor, out: torch.Tensor, t: int):
        """x0 prediction (clipped if asked) and the epsilon consistent with it, at step t."""
        abar = self._ac[t]
        a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
        if self.prediction_type == "epsilon":
            x0 = (x - s * out) / a
            eps = out
        elif self.prediction_type == "sample":
            x0 = out
            eps = None
        else:  # v_prediction
            x0 = a * x - s * out
            eps = a * out + s * x
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
            eps = None
        if eps is None:
            eps = (x - a * x0) / s
        return x0, eps

    @property
    def timesteps(self) -> tuple[int, ...]:
        """Training timesteps visited by sample(), in order (Python ints; `timestep_table`
        holds them as a tensor)."""
        return self._timesteps

    def extra_repr(self) -> str:
        return (f"num_train_timesteps={self.num_train_timesteps}, steps={self.num_steps}, "
                f"beta_schedule={self.beta_schedule!r}, prediction_type={self.prediction_type!r}, "
                f"clip_sample={self.clip_sample}")

    @property
    def num_steps(self) -> int:
        return len(self._timesteps)

    def nfe(self, start_index: int = 0) -> int:
        """Network evaluations of sample_from(start_index)."""
        return self.num_steps - self._check_start(start_index)

    @property
    def stochastic(self) -> bool:
        """Whether any step adds fresh noise (then step_noise or a generator matters)."""
        return any(s > 0 for s in self._noise_std)

    def _check_start(self, start_index: int) -> int:
        if int(start_index) != start_index or not 0 <= start_index < self.num_steps:
            raise ConfigError(
                f"start_index must be an integer in [0, {self.num_steps - 1}], got {start_index!r}"
            )
        return int(start_index)

    def noise_to_index(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """Noise a clean sample to the level of step `index` (for sample_from(index))."""
        t = self._timesteps[self._check_start(index)]
        abar = self._ac[t]
        return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise

    def sample(
        self,
        denoise_fn: DenoiseFn,
        noise: torch.Tensor,
        cond: torch.Tensor | None = None,
        step_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run every step from pure noise x_T = noise (B, T, D) to a clean sample.

        step_noise: (num_steps, B, T, D) fresh noise for each step (entry i is used by step
            i; entries of steps that add no noise are ignored). Pass it for reproducible or
            exported sampling. Without it, stochastic steps draw from `generator` (or torch's
            global generator): fine in eager mode, not for export.
        """
        return self.sample_from(denoise_fn, noise, 0, cond, step_noise, generator)

    def sample_from(
        self,
        denoise_fn: DenoiseFn,
        x: torch.Tensor,
        start_index: int,
        cond: torch.Tensor | None = None,
        step_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run steps start_index..num_steps-1 from x, a sample at the noise level of
        timesteps[start_index] (e.g. from noise_to_index). step_noise has num_steps entries
        (indexed by absolute step) or num_steps - start_index entries (relative)."""
        start = self._check_start(start_index)
        offset = 0
        if step_noise is not None:
            n = _static_size(step_noise, 0)
            if n == self.num_steps:
                offset = 0
            elif n == self.num_steps - start:
                offset = start
            else:
                raise ConfigError(
                    f"step_noise must hold {self.num_steps} (or {self.num_steps - start}) steps, "
                    f"got shape {tuple(step_noise.shape)}"
                )
        for i in range(start, self.num_steps):
            t = self._timesteps[i]
            out = denoise_fn(x, timestep_tensor(x, t), cond)
            z = None
            if self._noise_std[i] > 0:
                if step_noise is not None:
                    z = step_noise[i - offset]
                else:
                    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = self._update(x, out, i, z)
        return x

    def step(self, x: torch.Tensor, model_output: torch.Tensor, index: int,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """One reverse step i = index from x with the network's output at timesteps[index]."""
        i = self._check_start(index)
        if self._noise_std[i] > 0 and noise is None:
            noise = torch.randn_like(x)
        return self._update(x, model_output, i, noise)


class DDPMSampler(_DiscreteSampler):
    """DDPM ancestral sampling over all training steps (Ho et al. 2020), "fixed_small" variance.

    Step t: x0 from the network output (clipped to +-clip_sample_range if clip_sample), then
    x_{t-1} = c0_t x0 + c1_t x_t + sigma_t z with the posterior q(x_{t-1} | x_t, x0):
    c0_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t), c1_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t),
    sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t) (0 at t = 0).
    """

    def __init__(
        self,
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
    ):
        super().__init__(num_train_timesteps, beta_schedule, prediction_type, clip_sample,
                         clip_sample_range)
        n = self.num_train_timesteps
        self._timesteps = tuple(range(n - 1, -1, -1))
        c0, c1, std = [], [], []
        for t in self._timesteps:
            abar, beta = self._ac[t], self._betas[t]
            abar_prev = self._ac[t - 1] if t > 0 else 1.0
            c0.append(beta * math.sqrt(abar_prev) / (1.0 - abar))
            c1.append((1.0 - abar_prev) * math.sqrt(1.0 - beta) / (1.0 - abar))
            var = beta * (1.0 - abar_prev) / (1.0 - abar)
            std.append(math.sqrt(max(var, 1e-20)) if t > 0 else 0.0)
        self._c0, self._c1, self._noise_std = tuple(c0), tuple(c1), tuple(std)
        self.register_buffer(
            "timestep_table", torch.tensor(self._timesteps, dtype=torch.long), persistent=False
        )

    def _update(self, x, out, i, z):
        x0, _ = self._x0_eps(x, out, self._timesteps[i])
        x = self._c0[i] * x0 + self._c1[i] * x
        if z is not None:
            x = x + self._noise_std[i] * z
        return x


class DDIMSampler(_DiscreteSampler):
    """DDIM sampling (Song et al. 2021) with K = num_inference_steps steps.

    Step from t to the next timestep s (abar_s = 1 after the last step if set_alpha_to_one):
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s),
    where eps is the noise consistent with the (clipped) x0. eta=0 is deterministic; with
    K == num_train_timesteps and eta=1 this is DDPM ancestral sampling.

    timestep_spacing: "leading" (0, N/K, 2N/K, ... reversed: diffusers' and diffusion_policy's
    default), "trailing" (starting at N-1: better for small K) or "linspace".
    """

    def __init__(
        self,
        num_train_timesteps: int = 100,
        num_inference_steps: int = 10,
        eta: float = 0.0,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        set_alpha_to_one: bool = True,
    ):
        super().__init__(num_train_timesteps, beta_schedule, prediction_type, clip_sample,
                         clip_sample_range)
        n, k = self.num_train_timesteps, num_inference_steps
        if int(k) != k or not 1 <= k <= n:
            raise ConfigError(
                f"num_inference_steps must be an integer in [1, {n}], got {num_inference_steps!r}"
            )
        if eta < 0:
            raise ConfigError(f"eta must be >= 0, got {eta}")
        self.num_inference_steps = k = int(k)
        self.eta = float(eta)
        self.timestep_spacing = timestep_spacing
        self._timesteps = ddim_timesteps(n, k, timestep_spacing)
        final_abar = 1.0 if set_alpha_to_one else self._ac[0]
        c_x0, c_eps, std = [], [], []
        for i, t in enumerate(self._timesteps):
            abar = self._ac[t]
            abar_prev = self._ac[self._timesteps[i + 1]] if i + 1 < k else final_abar
            var = (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
            sigma = self.eta * math.sqrt(max(var, 0.0))
            c_x0.append(math.sqrt(abar_prev))
            c_eps.append(math.sqrt(max(1.0 - abar_prev - sigma * sigma, 0.0)))
            std.append(sigma)
        self._c_x0, self._c_eps, self._noise_std = tuple(c_x0), tuple(c_eps), tuple(std)
        self.register_buffer(
            "timestep_table", torch.tensor(self._timesteps, dtype=torch.long), persistent=False
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, eta={self.eta}, "
                f"timestep_spacing={self.timestep_spacing!r}")

    def _update(self, x, out, i, z):
        x0, eps = self._x0_eps(x, out, self._timesteps[i])
        x = self._c_x0[i] * x0 + self._c_eps[i] * eps
        if z is not None:
            x = x + self._noise_std[i] * z
        return x


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int,
                   spacing: str = "leading") -> tuple[int, ...]:
    """K strictly decreasing training timesteps in [0, N) for a DDIM schedule."""
    n, k = int(num_train_timesteps), int(num_inference_steps)
    if spacing == "leading":
        ratio = n // k
        ts = [i * ratio for i in range(k)]
    elif spacing == "trailing":
        ts = [int(math.floor(n - j * n / k + 0.5)) - 1 for j in range(k)][::-1]
    elif spacing == "linspace":
        ts = [int(math.floor(i * (n - 1) / max(k - 1, 1) + 0.5)) for i in range(k)]
    else:
        raise ConfigError(
            f"unknown timestep_spacing {spacing!r}; known: {', '.join(TIMESTEP_SPACINGS)}"
        )
    return tuple(sorted(ts, reverse=True))
