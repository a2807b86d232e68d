"""Noise schedules and samplers, written to be traced and exported as one graph.

The denoise_fn convention
-------------------------
Every sampler drives a network through one call signature:

    denoise_fn(x, t, cond) -> out

    x     (B, T, D) float   the noisy action chunk (for EDM: already scaled by c_in(sigma))
    t     (B,)      float   DDPM/DDIM: the training timestep index (0..N-1) as a float;
                            EDM/consistency: the noise label c_noise = ln(sigma) / 4
    cond  (B, C) float or None   global conditioning (flattened observation features)
    out   (B, T, D)         DDPM/DDIM: the quantity named by the sampler's prediction_type
                            ("epsilon", "sample" or "v_prediction"); EDM: the raw network
                            output F, which the sampler preconditions into
                            D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond)

`fastdp_ros.nn.ConditionalUnet1D` has exactly this forward(sample, timestep, global_cond).
A `Denoiser` (edm.py) is the preconditioned D(x, sigma) -> x0 estimate, used by heun_step.

Fixed steps
-----------
Samplers are nn.Modules whose number of steps is fixed at construction; coefficients are
immutable tuples of Python floats (mirrored as buffers), so sample() is a plain loop with no
mutable scheduler state and no data-dependent branches. Stochastic samplers take their
per-step noise as an input tensor (step_noise) for reproducible and exportable sampling.
`FixedStepSampler(model, sampler)` packages network + loop for torch.onnx.export.
"""

from fastdp_ros.diffusion.discrete import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DenoiseFn,
    ddim_timesteps,
    timestep_tensor,
)
from fastdp_ros.diffusion.edm import Denoiser, EDMSampler, edm_denoise, euler_step, heun_step
from fastdp_ros.diffusion.schedules import (
    BETA_SCHEDULES,
    VPPreconditioning,
    alphas_cumprod,
    consistency_preconditioning,
    cosine_betas,
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
    karras_sigmas,
    linear_betas,
    make_betas,
    preconditioned_loss_weight,
)
from fastdp_ros.diffusion.wrapper import FixedStepSampler

__all__ = [
    "DenoiseFn",
    "Denoiser",
    "DDPMSampler",
    "DDIMSampler",
    "EDMSampler",
    "FixedStepSampler",
    "edm_denoise",
    "euler_step",
    "heun_step",
    "ddim_timesteps",
    "timestep_tensor",
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
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
]
