"""FixedStepSampler: a network and a sampler as one module whose forward is the whole loop."""

from __future__ import annotations

import torch
from torch import nn

from fastdp_ros.errors import ConfigError

__all__ = ["FixedStepSampler"]


class FixedStepSampler(nn.Module):
    """forward(cond, noise[, x_init][, step_noise]) -> action chunk (B, T, D), every step unrolled.

    Args:
        model: the network, called as model(x, t, cond) (the denoise_fn convention).
        sampler: DDPMSampler, DDIMSampler or EDMSampler (anything with sample/sample_from/
            noise_to_index/nfe).
        start_index: 0 samples from pure noise; k > 0 runs only steps k.. from a given clean
            sample x_init noised to step k's level (retrieval-augmented sampling).

    Inputs of forward:
        cond: (B, C) global conditioning (or None for an unconditional model).
        noise: (B, T, D) standard normal noise.
        x_init: (B, T, D) clean initial sample; required iff start_index > 0.
        step_noise: (num_steps, B, T, D) per-step noise of a stochastic sampler (DDPM, DDIM
            with eta > 0); without it those draw from torch's generator, which cannot be
            exported.

    Because the sampler's steps and coefficients are fixed at construction and forward has no
    data-dependent control flow, torch.onnx.export / torch.jit.trace of this module yields one
    graph that contains all nfe network evaluations.
    """

    def __init__(self, model: nn.Module, sampler: nn.Module, start_index: int = 0):
        super().__init__()
        self.model = model
        self.sampler = sampler
        self.start_index = int(start_index)
        self.nfe = sampler.nfe(self.start_index)  # validates start_index

    def forward(
        self,
        cond: torch.Tensor | None,
        noise: torch.Tensor,
        x_init: torch.Tensor | None = None,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # the condition is the same at every step: a network that can precompute its share
        # (ConditionalUnet1D.prepare_condition) does it once here, not once per step
        prepare = getattr(self.model, "prepare_condition", None)
        if cond is not None and prepare is not None:
            cond = prepare(cond)
        if self.start_index == 0:
            return self.sampler.sample(self.model, noise, cond, step_noise)
        if x_init is None:
            raise ConfigError(
                f"FixedStepSampler with start_index={self.start_index} needs x_init"
            )
        x = self.sampler.noise_to_index(x_init, noise, self.start_index)
        return self.sampler.sample_from(self.model, x, self.start_index, cond, step_noise)
