"""Diffusion Policy (Chi et al. 2023): the teacher every accelerated policy starts from.

An observation encoder (per-camera CNN + proprioception) conditions a ConditionalUnet1D that
denoises a chunk of `horizon` actions. Two noise models:
  ddpm  -- discrete VP diffusion, epsilon prediction, squaredcos_cap_v2, 100 training steps;
           sampled with DDPM (all steps) or DDIM (any number of steps)
  edm   -- Karras et al. VE diffusion (sigma 0.002-80, rho 7) with EDM preconditioning;
           sampled with Heun on the probability-flow ODE (consistency distillation and
           RAGDP's VE variant need such a teacher)

`DiffusionPolicyModel` is the torch module (training loss, encoder, samplers);
`DiffusionPolicy` wraps it behind the common Policy interface.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fastdp_ros.diffusion import (
    DDIMSampler,
    DDPMSampler,
    EDMSampler,
    FixedStepSampler,
    VPPreconditioning,
    alphas_cumprod,
    edm_denoise,
    edm_preconditioning,
    edm_training_sigmas,
    make_betas,
    preconditioned_loss_weight,
)
from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.nn import ConditionalUnet1D, MultiImageObsEncoder
from fastdp_ros.policies.base import BuildRequest, Policy, obs_batch, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.modeldir import load_model_dir, load_state_into
from fastdp_ros.policies.spec import PolicySpec

log = logging.getLogger(__name__)

NOISE_MODELS = ("ddpm", "edm")
BACKBONES = ("small_cnn", "resnet18")
POOLS = ("spatial_softmax", "avg")
SAMPLERS = {"ddpm": ("ddpm", "ddim"), "edm": ("edm",)}
PRECONDITIONINGS = ("edm", "vp")


@dataclass
class DiffusionPolicyConfig(PolicyConfig):
    """Hyper-parameters of a Diffusion Policy: saved into config.json, the flags of `fastdp train --policy dp`."""

    label: ClassVar[str] = "Diffusion Policy"

    # network
    backbone: str = option("small_cnn", choices=BACKBONES, help="camera backbone")
    pool: str = option("spatial_softmax", choices=POOLS, help="camera feature pooling")
    feature_dim: int = option(64, help="features per camera")
    num_keypoints: int = option(32, help="spatial-softmax keypoints per camera")
    share_backbone: bool = option(False, help="one backbone for every camera")
    crop_ratio: float = option(0.9, help="random crop (training) / center crop (run time) side, as a fraction")
    down_dims: tuple[int, ...] = option((64, 128, 256), help="U-Net channel widths, comma-separated")
    diffusion_step_embed_dim: int = option(128, help="width of the U-Net's diffusion-step embedding")
    kernel_size: int = option(5, help="U-Net convolution kernel size")
    n_groups: int = option(8, help="GroupNorm groups of the U-Net")
    # actions: absolute targets, or the arm part relative to the current value of this low-dim
    # key (e.g. "joint_pos"): small offsets normalize to a much finer grid than absolute angles
    relative_to: str = option("", flag="--relative-actions", const="joint_pos",
                              help="learn the arm's targets relative to the current joint positions (joint_pos)")
    # diffusion
    noise_model: str = option("ddpm", choices=NOISE_MODELS, help="ddpm (VP, epsilon) | edm (VE, Karras)")
    num_train_timesteps: int = option(100, help="DDPM diffusion steps")
    beta_schedule: str = option("squaredcos_cap_v2", help="DDPM noise schedule")
    prediction_type: str = option("epsilon", help="what the DDPM network predicts")
    sigma_min: float = option(0.002, help="EDM: lowest noise level")
    sigma_max: float = option(80.0, help="EDM: highest noise level (where sampling starts)")
    rho: float = option(7.0, help="EDM: Karras schedule exponent")
    sigma_data: float = option(0.5, help="EDM: standard deviation of the (normalized) actions")
    # EDM models: "edm" (Karras et al.'s c_in / c_out / c_noise = ln(sigma) / 4) or "vp" (the
    # network reads DDPM-scaled inputs and timesteps and predicts the noise: a DDPM model's
    # weights are a working EDM model as they are, see schedules.VPPreconditioning)
    preconditioning: str = option("edm", choices=PRECONDITIONINGS,
                                  help="edm models: edm (Karras et al.'s) | vp (the network reads DDPM inputs and "
                                       "timesteps: a DDPM model's weights start it as they are; see `fastdp convert`)")
    # default sampler at run time (override with from_model_dir(sampler=..., steps=...)); None:
    # the noise model's own (ddpm, 100 steps | edm, 18 steps), resolved when the config is made
    sampler: str | None = option(None, choices=("ddpm", "ddim", "edm"),
                                 help="default sampler stored with the model (None: ddpm, edm for an EDM model)")
    num_inference_steps: int | None = option(None, help="default sampling steps stored with the model "
                                                        "(None: ddpm 100, edm 18)")
    # training
    batch_size: int = option(64, help="windows per optimizer step")
    lr: float = option(1e-4, help="peak learning rate")
    weight_decay: float = option(1e-6, help="AdamW weight decay")
    warmup_steps: int = option(500, help="linear warm-up steps")
    grad_clip: float = option(1.0, help="gradient norm clip")
    ema_power: float = option(0.75, help="EMA warm-up power")
    ema_max: float = option(0.9999, help="EMA decay bound")
    extra: dict = option(default_factory=dict, parse=json.loads, help="free-form JSON notes stored with the model")
    # a build-time choice, not stored
    init_from: str | None = option(None, stored=False,
                                   help="start from this Diffusion Policy's parameters (same network; the noise "
                                        "model may differ, e.g. an EDM teacher from a DDPM one)")

    def __post_init__(self):
        self.down_dims = tuple(int(d) for d in self.down_dims)
        if self.noise_model not in NOISE_MODELS:
            raise ConfigError(f"noise_model must be one of {NOISE_MODELS}, got {self.noise_model!r}")
        edm = self.noise_model == "edm"
        if self.sampler is None:
            self.sampler = "edm" if edm else "ddpm"
        if self.num_inference_steps is None:
            self.num_inference_steps = 18 if edm else 100
        if self.preconditioning not in PRECONDITIONINGS:
            raise ConfigError(f"preconditioning must be one of {PRECONDITIONINGS}, got {self.preconditioning!r}")
        if self.preconditioning != "edm" and self.noise_model != "edm":
            raise ConfigError(f"preconditioning {self.preconditioning!r} is for EDM models (noise_model 'edm')")
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if self.sampler not in SAMPLERS[self.noise_model]:
            raise ConfigError(
                f"sampler {self.sampler!r} does not fit a {self.noise_model} model; "
                f"use one of {SAMPLERS[self.noise_model]}"
            )


class ObsPreprocessor(nn.Module):
    """Raw observation tensors -> network inputs, inside the graph so exports include it.

    Images: uint8 (B, n_obs, H, W, 3) -> float (B, n_obs, 3, H, W) in [-1, 1].
    Low-dim: float (B, n_obs, D) -> normalized with the dataset's affine statistics.
    """

    def __init__(self, spec: PolicySpec, lowdim_scale: dict[str, np.ndarray], lowdim_offset: dict[str, np.ndarray]):
        super().__init__()
        self.image_keys = tuple(spec.image_keys)
        self.lowdim_keys = tuple(spec.lowdim_dims)
        for k in self.lowdim_keys:
            self.register_buffer(f"scale_{k}", torch.as_tensor(lowdim_scale[k], dtype=torch.float32))
            self.register_buffer(f"offset_{k}", torch.as_tensor(lowdim_offset[k], dtype=torch.float32))

    def affine(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{low-dim key: (scale, offset)}: x * scale + offset is the network's input."""
        return {k: (getattr(self, f"scale_{k}"), getattr(self, f"offset_{k}")) for k in self.lowdim_keys}

    def forward(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.image_keys:
            x = obs[k]
            out[k] = x.permute(*range(x.dim() - 3), x.dim() - 1, x.dim() - 3, x.dim() - 2).float() / 127.5 - 1.0
        for k in self.lowdim_keys:
            out[k] = obs[k].float() * getattr(self, f"scale_{k}") + getattr(self, f"offset_{k}")
        return out


def make_obs_encoder(spec: PolicySpec, config) -> MultiImageObsEncoder:
    """The observation encoder of `spec`'s cameras and low-dim keys, from a config's backbone, pool,
    feature_dim, num_keypoints, crop_ratio (and share_backbone, where it has one)."""
    h, w, c = spec.image_shape
    crop = None
    if spec.image_keys and config.crop_ratio < 1.0:
        crop = (max(8, int(round(h * config.crop_ratio))), max(8, int(round(w * config.crop_ratio))))
    return MultiImageObsEncoder(
        # a low-dimensional policy has no cameras; the encoder then ignores image_shape
        image_keys=spec.image_keys, image_shape=(c, h, w) if spec.image_keys else (1, 1, 1),
        lowdim_keys_dims=spec.lowdim_dims, backbone=config.backbone, pool=config.pool,
        share_backbone=getattr(config, "share_backbone", False), feature_dim=config.feature_dim, crop_shape=crop,
        num_keypoints=config.num_keypoints,
    )


class DiffusionPolicyModel(nn.Module):
    """Encoder + noise-prediction U-Net + action normalization, with the training loss."""

    def __init__(self, spec: PolicySpec, config: DiffusionPolicyConfig, normalizer: dict):
        super().__init__()
        self.spec, self.config = spec, config
        scale, offset = affine_from_normalizer(normalizer, list(spec.lowdim_dims) + [spec.action_key])
        self.preprocess = ObsPreprocessor(spec, scale, offset)
        self.obs_encoder = make_obs_encoder(spec, config)
        self.cond_dim = self.obs_encoder.output_dim * spec.n_obs_steps
        self.unet = ConditionalUnet1D(
            input_dim=spec.action_dim, global_cond_dim=self.cond_dim,
            diffusion_step_embed_dim=config.diffusion_step_embed_dim, down_dims=config.down_dims,
            kernel_size=config.kernel_size, n_groups=config.n_groups,
        )
        self.relative_dims = 0
        if config.relative_to:
            if config.relative_to not in spec.lowdim_dims:
                raise ConfigError(f"relative_to={config.relative_to!r} is not a low-dimensional input of "
                                  f"this policy ({list(spec.lowdim_dims)})")
            self.relative_dims = min(spec.lowdim_dims[config.relative_to], spec.action_dim)
        self.register_buffer("action_scale", torch.as_tensor(scale[spec.action_key], dtype=torch.float32))
        self.register_buffer("action_offset", torch.as_tensor(offset[spec.action_key], dtype=torch.float32))
        if config.noise_model == "ddpm":
            self.train_sampler = DDPMSampler(config.num_train_timesteps, config.beta_schedule,
                                             config.prediction_type)
        #: (sigma, sigma_data) -> (c_skip, c_out, c_in, c_noise) of an EDM model
        self.preconditioning = (
            VPPreconditioning(alphas_cumprod(make_betas(config.beta_schedule, config.num_train_timesteps)))
            if config.preconditioning == "vp" else edm_preconditioning)

    # --- pieces shared by training, sampling, distillation and retrieval -----------------

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observation tensors (B, n_obs, ...) -> global conditioning (B, cond_dim)."""
        feats = self.obs_encoder(self.preprocess(obs))  # (B, n_obs, F)
        return feats.flatten(start_dim=1)

    def action_reference(self, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What relative actions are relative to: the current (last observed) value of the
        `relative_to` key, raw, (B, n); None for absolute actions."""
        key = self.config.relative_to
        if not key:
            return None
        return obs[key][:, -1, : self.relative_dims].float()

    def _shift(self, action: torch.Tensor, reference: torch.Tensor | None, sign: float) -> torch.Tensor:
        if not self.config.relative_to:
            return action
        if reference is None:
            raise ConfigError(f"this model's actions are relative to {self.config.relative_to!r}: "
                              f"pass its current value")
        ref = reference if action.dim() == 2 else reference.unsqueeze(1)
        n = self.relative_dims
        return torch.cat([action[..., :n] + sign * ref.to(action.dtype), action[..., n:]], dim=-1)

    def normalize_action(self, action: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Robot-unit actions (B, [T,] Da) -> the network's normalized frame."""
        return self._shift(action, reference, -1.0) * self.action_scale + self.action_offset

    def unnormalize_action(self, naction: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """The network's normalized actions -> robot units (absolute targets)."""
        return self._shift((naction - self.action_offset) / self.action_scale, reference, +1.0)

    def denoise_fn(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, cond)

    def edm_denoiser(self, x: torch.Tensor, sigma, cond: torch.Tensor) -> torch.Tensor:
        """D(x; sigma): the preconditioned x0 estimate of an EDM model."""
        return edm_denoise(self.unet, x, sigma, cond, self.config.sigma_data, self.preconditioning)

    def make_sampler(self, name: str | None = None, steps: int | None = None) -> nn.Module:
        """A fixed-step sampler for this model's noise model."""
        cfg = self.config
        name = name or cfg.sampler
        if name not in SAMPLERS[cfg.noise_model]:
            raise ConfigError(f"sampler {name!r} does not fit a {cfg.noise_model} model; "
                              f"use one of {SAMPLERS[cfg.noise_model]}")
        if name == "ddpm":
            if steps not in (None, cfg.num_train_timesteps):
                raise ConfigError(f"DDPM runs all {cfg.num_train_timesteps} steps; use --sampler ddim for {steps}")
            return DDPMSampler(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type)
        if name == "ddim":
            return DDIMSampler(cfg.num_train_timesteps, steps or cfg.num_inference_steps, 0.0,
                               cfg.beta_schedule, cfg.prediction_type)
        return EDMSampler(cfg.sigma_min, cfg.sigma_max, cfg.rho, steps or cfg.num_inference_steps,
                          heun=True, sigma_data=cfg.sigma_data, preconditioning=self.preconditioning)

    # --- training --------------------------------------------------------------------

    def forward(self, batch: dict) -> torch.Tensor:
        """The training loss (forward, so DistributedDataParallel synchronizes its gradients)."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        """Denoising loss on a batch {"obs": {key: (B, n_obs, ...)}, "action": (B, horizon, Da)}."""
        cond = self.encode(batch["obs"])
        x0 = self.normalize_action(batch["action"].float(), self.action_reference(batch["obs"]))
        noise = torch.randn_like(x0)
        if self.config.noise_model == "ddpm":
            t = self.train_sampler.sample_timesteps(x0.shape[0], device=x0.device)
            pred = self.unet(self.train_sampler.add_noise(x0, noise, t), t.float(), cond)
            return nn.functional.mse_loss(pred, self.train_sampler.training_target(x0, noise, t))
        sigma = edm_training_sigmas(x0.shape[0], device=x0.device)
        denoised = self.edm_denoiser(x0 + sigma.view(-1, 1, 1) * noise, sigma, cond)
        weight = preconditioned_loss_weight(self.preconditioning, sigma, self.config.sigma_data).view(-1, 1, 1)
        return (weight * (denoised - x0) ** 2).mean()


class ActGraph(nn.Module):
    """The whole act() step as one module: raw observation + noise -> actions in robot units.

    forward(obs, noise[, step_noise]) with obs {key: (B, n_obs, ...)} raw tensors. Its loop has
    a fixed number of steps, so it can be exported as one graph.
    """

    def __init__(self, model: DiffusionPolicyModel, sampler: nn.Module):
        super().__init__()
        self.model = model
        denoise = model.unet
        self.loop = FixedStepSampler(denoise, sampler)
        self.nfe = self.loop.nfe

    def forward(self, obs: dict[str, torch.Tensor], noise: torch.Tensor,
                step_noise: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.model.encode(obs)
        return self.model.unnormalize_action(self.loop(cond, noise, step_noise=step_noise),
                                             self.model.action_reference(obs))


# --- the registration's builders (their bodies are below: train_diffusion_policy, ragdp) ---------


def train_from_request(request: BuildRequest) -> dict:
    """`fastdp train --policy dp`: the request's dataset, layout and settings into train_diffusion_policy."""
    result = train_diffusion_policy(
        request.dataset, request.out, request.config, request.settings, image_keys=request.image_keys,
        lowdim_keys=request.lowdim_keys, horizon=request.horizon, n_obs_steps=request.n_obs_steps,
        n_action_steps=request.n_action_steps, max_episodes=request.max_episodes, resume=request.resume,
        half=request.half, init_from=request.config.init_from)
    return result.summary()


def retrieval_base(files):
    """A Diffusion Policy as the model RAGDP accelerates: its encoder retrieves, its sampler refines
    (VP: DDIM over every training step, so the leap picks an exact noise level; VE: its EDM schedule)."""
    from fastdp_ros.policies.ragdp import RetrievalBase

    spec, config, model = build_model_from_files(files)
    if config.noise_model == "ddpm":
        family, default = "vp", ("ddim", config.num_train_timesteps)
    else:
        family, default = "ve", ("edm", config.num_inference_steps)
    entries = {k: files.config[k] for k in ("spec", "policy", "normalizer")}
    return RetrievalBase(spec, model, model.unet, family, default, model.cond_dim, entries)


@register_policy("dp", config=DiffusionPolicyConfig, train=train_from_request, retrieval_base=retrieval_base,
                 summary="Diffusion Policy teacher (DDPM/DDIM or EDM)")
class DiffusionPolicy(Policy):
    """The Diffusion Policy teacher behind the common interface."""

    def __init__(self, spec: PolicySpec, config: DiffusionPolicyConfig, model: DiffusionPolicyModel,
                 sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(spec)
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.graph = ActGraph(self.model, self.model.make_sampler(sampler, steps)).to(self.device).eval()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @property
    def nfe(self) -> int:
        return self.graph.nfe

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, sampler: str | None = None, steps: int | None = None,
                       seed: int = 0, device: str = "cpu") -> "DiffusionPolicy":
        files = load_model_dir(path)
        spec, config, model = build_model_from_files(files)
        return cls(spec, config, model, sampler=sampler, steps=steps, seed=seed, device=device)

    @torch.inference_mode()
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.encode(obs_batch(obs, self.device))[0].cpu().numpy()

    @torch.inference_mode()
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        shape = (1, self.spec.horizon, self.spec.action_dim)
        noise = torch.randn(shape, generator=self.generator, device=self.device)
        step_noise = None
        sampler = self.graph.loop.sampler
        if getattr(sampler, "stochastic", False):
            step_noise = torch.randn((sampler.num_steps, *shape), generator=self.generator, device=self.device)
        return self.graph(obs_batch(obs, self.device), noise, step_noise)[0].cpu().numpy()

    def export_graph(self):
        """The whole act() step (preprocessing, encoder, every sampler step, unnormalization).

        Inputs: the raw observation, then `noise` (and `step_noise` for a stochastic sampler),
        drawn in the order _act draws them.
        """
        from fastdp_ros.policies.base import flat_export_graph

        sampler = self.graph.loop.sampler
        shape = (1, self.spec.horizon, self.spec.action_dim)
        noise_shapes = {"noise": shape}
        if getattr(sampler, "stochastic", False):
            noise_shapes["step_noise"] = (sampler.num_steps, *shape)
        signature = {"sampler": type(sampler).__name__, "sampler_settings": sampler.extra_repr(), "nfe": self.nfe}
        return flat_export_graph(self.graph, self.spec, noise_shapes, signature, device=self.device,
                                 lowdim_affine=self.model.preprocess.affine())


def affine_from_normalizer(normalizer: dict, keys: list[str]) -> tuple[dict, dict]:
    from fastdp_ros.data import Normalizer

    norm = Normalizer.from_dict(normalizer)
    scale, offset = {}, {}
    for k in keys:
        scale[k], offset[k] = norm.scale_offset(k)
    return scale, offset


def build_model_from_files(files) -> tuple[PolicySpec, DiffusionPolicyConfig, DiffusionPolicyModel]:
    """Rebuild a DiffusionPolicyModel from parsed model files and load its (EMA) weights."""
    cfg = files.config
    try:
        spec = PolicySpec.from_dict(cfg["spec"])
        config = DiffusionPolicyConfig.from_dict(cfg["policy"])
        normalizer = cfg["normalizer"]
    except KeyError as e:
        raise ModelFileError(f"{files.path / 'config.json'} lacks {e}: not a Diffusion Policy model") from None
    except ConfigError as e:
        raise ModelFileError(f"{files.path / 'config.json'}: {e}") from None
    model = DiffusionPolicyModel(spec, config, normalizer)
    load_state_into(model, files.state_dict, files.path)
    return spec, config, model


# --- training ------------------------------------------------------------------------------

DEFAULT_IMAGE_KEYS = ("img_front", "img_wrist")
DEFAULT_LOWDIM_KEYS = ("joint_pos", "gripper")


def make_spec_from_dataset(buffer, image_keys, lowdim_keys, horizon: int, n_obs_steps: int,
                           n_action_steps: int, action_key: str = "action") -> PolicySpec:
    """A PolicySpec for the given keys of a dataset; a missing key is a clear DatasetError."""
    from fastdp_ros.errors import DatasetError

    missing = [k for k in (*image_keys, *lowdim_keys, action_key) if k not in buffer]
    if missing:
        raise DatasetError(f"dataset {buffer.path} has no {missing}; it has {sorted(buffer.keys)}")
    shapes = {tuple(buffer[k].shape[1:]) for k in image_keys}
    if len(shapes) > 1:
        raise DatasetError(f"cameras {list(image_keys)} have different image shapes {sorted(shapes)}")
    image_shape = shapes.pop() if shapes else (0, 0, 3)
    if image_keys and (len(image_shape) != 3 or image_shape[2] != 3):
        raise DatasetError(f"images must be (H, W, 3) RGB, dataset has {image_shape}")

    def dim(k):
        s = buffer[k].shape[1:]
        return int(np.prod(s)) if s else 1

    attrs = buffer.attrs
    if "dt" not in attrs:
        raise DatasetError(f"dataset {buffer.path} has no 'dt' attribute (recording period)")
    return PolicySpec(
        image_keys=tuple(image_keys), image_shape=tuple(int(v) for v in image_shape),
        lowdim_dims={k: dim(k) for k in lowdim_keys}, action_dim=dim(action_key), dt=float(attrs["dt"]),
        horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, action_key=action_key,
        robot=str(attrs.get("robot", "panda")), extra={"task": attrs.get("task")},
    )


def fit_normalizer(buffer, spec: PolicySpec, relative_to: str = ""):
    """Normalizer of a policy: low-dim inputs and actions to [-1, 1], images by the encoder.
    With `relative_to`, the action statistics are those of the relative chunks training sees."""
    from fastdp_ros.data import Normalizer

    modes = {k: "limits" for k in spec.lowdim_dims}
    modes[spec.action_key] = "limits"
    modes.update({k: "image" for k in spec.image_keys})
    data = {k: buffer[k] for k in modes if k in buffer}
    if relative_to:
        data[spec.action_key] = relative_action_chunks(buffer, spec, relative_to)
    return Normalizer.fit(data, modes)


def relative_action_chunks(buffer, spec: PolicySpec, relative_to: str) -> np.ndarray:
    """Every action a training window holds, minus (on the arm part) the value of `relative_to`
    at the window's current step: (windows x horizon, action_dim). Edge-padded like the windows."""
    action = np.asarray(buffer[spec.action_key][:], np.float64)
    reference = np.asarray(buffer[relative_to][:], np.float64)
    n = min(reference.shape[1], action.shape[1])
    ends = np.asarray(buffer.episode_ends[:])
    starts = np.concatenate([[0], ends[:-1]])
    offsets = np.arange(spec.horizon) - (spec.n_obs_steps - 1)
    out = []
    for lo, hi in zip(starts, ends):
        now = np.arange(lo, hi)
        rows = np.clip(now[:, None] + offsets[None, :], lo, hi - 1)  # (L, horizon)
        chunk = action[rows].copy()
        chunk[..., :n] -= reference[now][:, None, :n]
        out.append(chunk.reshape(-1, action.shape[1]))
    return np.concatenate(out).astype(np.float32)


def demonstration_episodes(buffer) -> np.ndarray:
    """Indices of the episodes to learn from: the successful ones when success is recorded."""
    if "episode_success" in buffer.meta_keys:
        ok = np.flatnonzero(np.asarray(buffer.episode_meta("episode_success"), bool))
        if len(ok) < buffer.n_episodes:
            log.info("using %d of %d episodes (the expert's successful ones)", len(ok), buffer.n_episodes)
        return ok
    return np.arange(buffer.n_episodes)


def convert_to_edm(source: str | os.PathLike, out: str | os.PathLike, steps: int = 18,
                   sigma_max: float | None = None) -> Path:
    """Write the DDPM epsilon model in `source` as an EDM model with VP preconditioning.

    No training: the same network and weights, whose probability-flow ODE (Heun over
    `steps` Karras levels) is the DDPM model's own (schedules.VPPreconditioning). This is the
    EDM teacher consistency distillation and RAGDP's VE variant need, at the DDPM model's
    quality. Weights stay in the source's precision.

    sigma_max (None: the source's, 80) is where sampling and distillation start. With VP
    preconditioning D(x; sigma) = x - sigma eps, so a one-step jump from sigma_max multiplies
    the network's error by sigma_max; a few units already hide the data (std ~0.5) in the noise
    (DDIM-10 starts at t = 90, sigma 7.1; DDIM-5 at t = 80, sigma 3.3).
    """
    from fastdp_ros.policies.modeldir import model_hash, save_model_dir

    files = load_model_dir(source)
    if files.policy_type != DiffusionPolicy.policy_type:
        raise ConfigError(f"{source} is a {files.policy_type!r} model; conversion takes a Diffusion Policy "
                          f"({DiffusionPolicy.policy_type})")
    spec, config, model = build_model_from_files(files)
    if config.noise_model != "ddpm" or config.prediction_type != "epsilon":
        raise ConfigError(f"{source} is a {config.noise_model} model predicting {config.prediction_type!r}; "
                          f"conversion to EDM takes a DDPM model that predicts the noise (epsilon)")
    levels = {} if sigma_max is None else {"sigma_max": float(sigma_max)}
    edm = dataclasses.replace(config, noise_model="edm", preconditioning="vp", sampler="edm",
                              num_inference_steps=int(steps), **levels)
    half = any(t.dtype == torch.float16 for t in files.state_dict.values())
    provenance = {"converted_from": os.path.abspath(source), "converted_from_hash": model_hash(source),
                  "conversion": "ddpm -> edm (vp preconditioning), no training",
                  "source_provenance": files.config.get("provenance", {})}
    cfg = {"spec": spec.to_dict(), "policy": edm.to_dict(), "normalizer": files.config["normalizer"],
           "provenance": provenance}
    return save_model_dir(out, DiffusionPolicy.policy_type, cfg, model.state_dict(), half=half)


# Fields that fix the network's parameters: a model to start from must agree on all of them.
NETWORK_FIELDS = ("backbone", "pool", "feature_dim", "num_keypoints", "share_backbone", "down_dims",
                  "diffusion_step_embed_dim", "kernel_size", "n_groups")


def load_initial_weights(model: DiffusionPolicyModel, path: str | os.PathLike) -> dict:
    """Copy the parameters of the Diffusion Policy in `path` into `model` as a training start.

    Only parameters move, never buffers: `model` keeps its own normalizer and noise schedule,
    so a DDPM teacher can seed an EDM one (same encoder and U-Net, another noise model).
    Returns the provenance entry. A model of another kind, observation layout or network
    shape is a ConfigError before any training starts.
    """
    from fastdp_ros.policies.modeldir import model_hash

    files = load_model_dir(path)
    if files.policy_type != DiffusionPolicy.policy_type:
        raise ConfigError(f"--init-from needs a Diffusion Policy (policy_type {DiffusionPolicy.policy_type!r}); "
                          f"{path} is a {files.policy_type!r} model")
    spec, config, source = build_model_from_files(files)
    problems = [f"{name}: {getattr(config, name)!r} vs {getattr(model.config, name)!r}"
                for name in NETWORK_FIELDS if getattr(config, name) != getattr(model.config, name)]
    mine = model.spec
    for name in ("image_keys", "image_shape", "lowdim_dims", "action_dim", "horizon", "n_obs_steps"):
        if getattr(spec, name) != getattr(mine, name):
            problems.append(f"{name}: {getattr(spec, name)!r} vs {getattr(mine, name)!r}")
    if problems:
        raise ConfigError(f"--init-from {path} does not fit the network being trained (its value vs this "
                          f"run's): " + "; ".join(problems))
    with torch.no_grad():
        theirs = dict(source.named_parameters())
        for name, param in model.named_parameters():
            param.copy_(theirs[name])
    mine_buffers = dict(model.named_buffers())
    same_statistics = all(
        name in mine_buffers and mine_buffers[name].shape == value.shape and torch.allclose(mine_buffers[name], value)
        for name, value in source.named_buffers()
        if name.startswith("preprocess.") or name.startswith("action_")
    )
    if not same_statistics:
        log.warning("--init-from %s was trained with other normalization statistics; its weights are "
                    "only a starting point here", path)
    log.info("starting from the parameters of %s (%s noise model)", path, config.noise_model)
    return {"model": os.path.abspath(path), "model_hash": model_hash(path), "noise_model": config.noise_model}


def train_diffusion_policy(dataset: str, out: str, config: DiffusionPolicyConfig, settings,
                           image_keys=DEFAULT_IMAGE_KEYS, lowdim_keys=DEFAULT_LOWDIM_KEYS,
                           horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                           val_ratio: float = 0.05, max_episodes: int | None = None,
                           resume: bool = False, half: bool = False, init_from: str | None = None):
    """Train a Diffusion Policy on a zarr dataset and write the model directory `out`.
    `init_from`: a Diffusion Policy directory whose parameters the training starts from
    (recorded in the provenance; when resuming, the checkpoint's weights replace them)."""
    from fastdp_ros.data import ReplayBuffer, WindowDataset, dataset_fingerprint, split_episodes
    from fastdp_ros.errors import DatasetError
    from fastdp_ros.policies.modeldir import save_model_dir
    from fastdp_ros.policies.training import jsonable, train

    buffer = ReplayBuffer.open(dataset)
    spec = make_spec_from_dataset(buffer, image_keys, lowdim_keys, horizon, n_obs_steps, n_action_steps)
    episodes = demonstration_episodes(buffer)
    if max_episodes is not None:
        episodes = episodes[:max_episodes]
    if len(episodes) == 0:
        raise DatasetError(f"dataset {dataset} has no usable episodes")
    tr, va = split_episodes(len(episodes), val_ratio=val_ratio if len(episodes) > 1 else 0.0, seed=settings.seed)
    train_eps, val_eps = episodes[tr], episodes[va]
    normalizer = fit_normalizer(buffer, spec, config.relative_to)
    keys = list(spec.obs_keys)
    train_set = WindowDataset(buffer, keys, spec.action_key, n_obs_steps, horizon, n_action_steps, episodes=train_eps)
    val_set = (WindowDataset(buffer, keys, spec.action_key, n_obs_steps, horizon, n_action_steps, episodes=val_eps)
               if len(val_eps) else None)
    model = DiffusionPolicyModel(spec, config, normalizer.to_dict())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("Diffusion Policy: %.2fM parameters, %d training windows from %d episodes (%d validation)",
             n_params / 1e6, len(train_set), len(train_eps), len(val_eps))
    provenance = {
        "dataset": os.path.abspath(dataset), "dataset_fingerprint": dataset_fingerprint(buffer),
        "train_episodes": len(train_eps), "val_episodes": len(val_eps),
    }
    if init_from:
        provenance["init_from"] = load_initial_weights(model, init_from)

    def save(m: nn.Module, step: int) -> None:
        cfg = {"spec": spec.to_dict(), "policy": config.to_dict(), "normalizer": normalizer.to_dict(),
               "provenance": {**provenance, "train_steps": step,
                              "train_settings": jsonable(dataclasses.asdict(settings))}}
        save_model_dir(out, DiffusionPolicy.policy_type, cfg, m.state_dict(), half=half)

    return train(model, lambda net, batch: net(batch), train_set, val_set, settings, out, save, resume=resume)
