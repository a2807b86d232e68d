"""Latent Weight Diffusion (LWD; Hegde et al. 2024, arXiv 2410.14040): diffuse policies, not actions.

A trajectory encoder maps a demonstration segment of K steps (the low-dimensional states the
generated policy reads and the actions taken) to a Gaussian latent; a hypernetwork decodes a
latent into the weights of a small closed-loop policy, an MLP from the current low-dimensional
observation (joints, gripper; optionally the step within the segment) to an action. Encoder and
hypernetwork are trained together so that the generated policy reproduces the segment's actions,
with the paper's KL regularisation of the latent towards N(0, I) (a VAE). A diffusion model in
latent space, conditioned on the observation at the segment's start (images and proprioception
through the same observation encoder a Diffusion Policy uses), learns the distribution of the
segments' latents (their means, gradients stopped), in the same training run.

At run time a diffusion query (DDIM over the latent, then the hypernetwork) happens once per
segment of K control steps; between queries the generated policy runs on every step from the
current joints, closed loop, at the cost of a few thousand multiply-adds (numpy). act() returns
the current action (the chunk's rows are that action), so the runner asks every step.

Export: the query (preprocessing, encoder, every DDIM step, hypernetwork) is the export graph
(input: observation + latent noise; output: the generated policy's flat weights), so ONNX Runtime
/ TensorRT run it; `export_generated_policy_onnx` writes the generated policy itself as ONNX.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastdp_ros.diffusion import DDIMSampler, DDPMSampler, FixedStepSampler
from fastdp_ros.errors import ConfigError, DatasetError, ModelFileError
from fastdp_ros.nn import SinusoidalPosEmb
from fastdp_ros.nn.hypernet import HyperNetwork, functional_mlp, mlp_param_count
from fastdp_ros.nn.mlp import MLP
from fastdp_ros.policies.base import BuildRequest, Policy, flat_export_graph, obs_batch, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.dp import (
    ObsPreprocessor, affine_from_normalizer, demonstration_episodes, make_obs_encoder, make_spec_from_dataset,
)
from fastdp_ros.policies.modeldir import load_model_dir, load_state_into, save_model_dir
from fastdp_ros.policies.spec import PolicySpec

log = logging.getLogger(__name__)

ACTIVATIONS = ("mish", "relu", "tanh")


@dataclass
class LWDConfig(PolicyConfig):
    """Segment, latent, generated policy, latent diffusion and observation encoder of LWD."""

    label = "LWD"

    segment_steps: int = option(32, help="K: control steps one latent (one diffusion query) drives")
    latent_dim: int = option(16, help="size of the latent a segment is encoded to")
    policy_hidden: tuple[int, ...] = option((64, 64), help="hidden widths of the generated policy (an MLP)")
    policy_keys: tuple[str, ...] = option(
        (), help="low-dimensional keys the generated policy reads (empty: every --lowdim-keys key)")
    phase_input: bool = option(True, help="the generated policy also reads its step within the segment (k / K)")
    # the paper's small policies read proprioception only, so one latent has to carry where the
    # object is; with this on, the current frame's features (a frozen encoder) tell the policy
    camera_inputs: bool = option(False, help="the generated policy also reads the current frame's observation "
                                             "features; the observation encoder (--init-encoder) is then frozen and "
                                             "its features computed once per dataset frame")
    policy_activation: str = option("mish", choices=ACTIVATIONS, help="activation of the generated policy")
    max_policy_params: int = option(50_000, help="bound on the generated policy's parameters (the hypernetwork's "
                                                 "output grows with it)")
    # absolute targets by default: targets relative to the current joints make the generated
    # policy integrate its own errors over a segment (its closed loop drifts: models/README.md)
    relative_to: str = option("", help="learn the arm's action targets relative to this low-dim key's current "
                                       "value (e.g. joint_pos; '': absolute targets)")
    # the demonstrations' actions are almost a function of the current joints (a_t ~ q_t + v): a
    # policy fitted to them alone follows its own errors and drifts off in closed loop. Noise on
    # its input during training, with the recorded actions as targets, teaches it to steer back
    state_noise: float = option(0.1, help="std of Gaussian noise on the generated policy's (normalized) inputs "
                                          "during training: corrective feedback in closed loop")
    hyper_hidden: int = option(256, help="width of the hypernetwork's hidden layers")
    hyper_layers: int = option(2, help="hidden layers of the hypernetwork")
    encoder_hidden: int = option(256, help="width of the trajectory encoder")
    # the reconstruction error of a trained generated policy is ~1e-4 (normalized units): a larger
    # beta makes the KL term win and the latent collapse to the prior (every segment the same policy)
    kl_weight: float = option(1e-5, help="beta: weight of KL(q(z | segment) || N(0, I)) (summed over the latent)")
    # latent diffusion
    num_train_timesteps: int = option(100, help="DDPM steps of the latent diffusion")
    latent_steps: int = option(10, help="DDIM steps of one diffusion query at run time (its NFE)")
    latent_clip: float = option(4.0, help="x0 estimates of the latent are clipped to +-this while sampling")
    # the expert's latent is nearly a function of the observation: predicting it ("sample")
    # rather than the noise keeps the small denoiser's error small at low noise levels
    latent_prediction: str = option("epsilon", choices=("epsilon", "sample", "v_prediction"),
                                    help="what the latent denoiser predicts")
    denoiser_hidden: int = option(512, help="width of the latent denoiser (an MLP)")
    denoiser_layers: int = option(3, help="hidden layers of the latent denoiser")
    diffusion_weight: float = option(1.0, help="weight of the latent denoising loss")
    # observation encoder of the diffusion's condition (the Diffusion Policy's)
    backbone: str = option("small_cnn", choices=("small_cnn", "resnet18"), help="camera backbone")
    pool: str = option("spatial_softmax", choices=("spatial_softmax", "avg"), help="camera feature pooling")
    feature_dim: int = option(64, help="features per camera")
    num_keypoints: int = option(32, help="spatial-softmax keypoints per camera")
    crop_ratio: float = option(0.9, help="random crop (training) / center crop (run time) side, as a fraction")
    init_encoder: str | None = option(None, stored=False,
                                      help="a Diffusion Policy model whose observation encoder the latent "
                                           "diffusion starts from (the same cameras, keys and encoder settings)")
    # training (the `fastdp train` flags of the same names fill these)
    batch_size: int = 64
    lr: float = 1e-4
    warmup_steps: int = 500

    def __post_init__(self):
        if self.segment_steps < 1 or self.latent_dim < 1 or self.latent_steps < 1:
            raise ConfigError(f"LWD needs segment_steps, latent_dim and latent_steps >= 1, got {self.segment_steps}, "
                              f"{self.latent_dim}, {self.latent_steps}")
        if not 1 <= self.latent_steps <= self.num_train_timesteps:
            raise ConfigError(f"latent_steps must be in [1, {self.num_train_timesteps}], got {self.latent_steps}")
        if self.kl_weight < 0 or self.latent_clip <= 0 or self.state_noise < 0:
            raise ConfigError(f"need kl_weight >= 0, latent_clip > 0 and state_noise >= 0, got {self.kl_weight}, "
                              f"{self.latent_clip}, {self.state_noise}")
        if any(h < 1 for h in self.policy_hidden) or self.max_policy_params < 1:
            raise ConfigError(f"invalid generated policy: hidden widths {list(self.policy_hidden)}, bound "
                              f"{self.max_policy_params}")


def policy_layer_sizes(config: LWDConfig, state_dim: int, action_dim: int, feature_dim: int = 0) -> tuple[int, ...]:
    """[in, hidden..., out] of the generated policy; a ConfigError when it exceeds the bound."""
    sizes = (state_dim + int(config.phase_input) + (feature_dim if config.camera_inputs else 0),
             *config.policy_hidden, action_dim)
    count = mlp_param_count(sizes)
    if count > config.max_policy_params:
        raise ConfigError(f"the generated policy {list(sizes)} has {count} parameters, more than the bound "
                          f"max_policy_params={config.max_policy_params}; the hypernetwork would output that many "
                          f"weights per latent: use smaller --policy-hidden or raise --max-policy-params")
    return sizes


class LatentDenoiser(nn.Module):
    """The latent denoiser (its prediction_type's quantity from z_t, t, cond): an MLP over the noisy
    latent, a timestep embedding and the condition."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden: int, layers: int, time_dim: int = 64):
        super().__init__()
        self.time_emb = nn.Sequential(SinusoidalPosEmb(time_dim), nn.Linear(time_dim, time_dim), nn.Mish())
        self.net = MLP(latent_dim + time_dim + cond_dim, [hidden] * layers, latent_dim)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).float().expand(z.shape[0]) if t.numel() == 1 else t.reshape(-1).float()
        return self.net(torch.cat([z, self.time_emb(t), cond], dim=-1))


class LWDModel(nn.Module):
    """Observation encoder + latent denoiser + trajectory encoder + hypernetwork, with the loss."""

    def __init__(self, spec: PolicySpec, config: LWDConfig, normalizer: dict):
        super().__init__()
        self.spec, self.config = spec, config
        scale, offset = affine_from_normalizer(normalizer, list(spec.lowdim_dims) + [spec.action_key])
        self.preprocess = ObsPreprocessor(spec, scale, offset)
        self.obs_encoder = make_obs_encoder(spec, config)
        self.cond_dim = self.obs_encoder.output_dim * spec.n_obs_steps
        self.policy_keys = tuple(config.policy_keys) or tuple(spec.lowdim_dims)
        self.state_dim = sum(spec.lowdim_dims[k] for k in self.policy_keys)
        #: features of one frame (what camera_inputs adds to the generated policy's input)
        self.frame_dim = self.obs_encoder.output_dim
        self.layer_sizes = policy_layer_sizes(config, self.state_dim, spec.action_dim, self.frame_dim)
        self.relative_dims = min(spec.lowdim_dims[config.relative_to], spec.action_dim) if config.relative_to else 0
        self.register_buffer("action_scale", torch.as_tensor(scale[spec.action_key], dtype=torch.float32))
        self.register_buffer("action_offset", torch.as_tensor(offset[spec.action_key], dtype=torch.float32))
        k = config.segment_steps
        state_in = self.state_dim + int(config.phase_input)  # the segment's states, without camera features
        self.trajectory_encoder = MLP(k * (state_in + spec.action_dim),
                                      [config.encoder_hidden] * 2, 2 * config.latent_dim)
        self.hypernet = HyperNetwork(config.latent_dim, self.layer_sizes, hidden=config.hyper_hidden,
                                     num_hidden_layers=config.hyper_layers, target_activation=config.policy_activation)
        self.denoiser = LatentDenoiser(config.latent_dim, self.cond_dim, config.denoiser_hidden, config.denoiser_layers)
        self.train_sampler = DDPMSampler(config.num_train_timesteps, "squaredcos_cap_v2", config.latent_prediction,
                                         clip_sample=True, clip_sample_range=config.latent_clip)

    # --- pieces shared by training and acting ---------------------------------------------

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observation (B, n_obs, ...) -> the latent diffusion's condition (B, cond_dim)."""
        return self.obs_encoder(self.preprocess(obs)).flatten(start_dim=1)

    def policy_state(self, lowdim: dict[str, torch.Tensor], phase: torch.Tensor) -> torch.Tensor:
        """The generated policy's input: normalized policy keys (..., d) and the phase in [-1, 1]."""
        affine = self.preprocess.affine()
        parts = [lowdim[k].float() * affine[k][0] + affine[k][1] for k in self.policy_keys]
        if self.config.phase_input:
            parts.append(phase.unsqueeze(-1) * 2.0 - 1.0)
        return torch.cat(parts, dim=-1)

    def policy_input(self, state: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """The generated policy's input: `state` (policy_state) with the frame features before the phase."""
        if not self.config.camera_inputs:
            return state
        if self.config.phase_input:
            return torch.cat([state[..., :-1], features.to(state.dtype), state[..., -1:]], dim=-1)
        return torch.cat([state, features.to(state.dtype)], dim=-1)

    def normalize_action(self, action: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        if self.relative_dims:
            n = self.relative_dims
            action = torch.cat([action[..., :n] - reference[..., :n], action[..., n:]], dim=-1)
        return action * self.action_scale + self.action_offset

    def unnormalize_action(self, naction: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        action = (naction - self.action_offset) / self.action_scale
        if self.relative_dims:
            n = self.relative_dims
            action = torch.cat([action[..., :n] + reference[..., :n], action[..., n:]], dim=-1)
        return action

    def make_sampler(self, steps: int | None = None) -> DDIMSampler:
        cfg = self.config
        return DDIMSampler(cfg.num_train_timesteps, steps or cfg.latent_steps, 0.0, "squaredcos_cap_v2",
                           cfg.latent_prediction,
                           clip_sample=True, clip_sample_range=cfg.latent_clip)

    # --- training -------------------------------------------------------------------------

    def forward(self, batch: dict) -> torch.Tensor:
        return self.losses(batch)["loss"]

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: "obs" {key: (B, n_obs, ...)} at the segment's start; "segment" {low-dim key: (B, K, d)}
        and "action" (B, K, Da) over the segment."""
        cfg = self.config
        segment, action = batch["segment"], batch["action"].float()
        b, k = action.shape[:2]
        phase = torch.arange(k, device=action.device, dtype=torch.float32).expand(b, k) / k
        state = self.policy_state(segment, phase)  # (B, K, in)
        reference = segment[cfg.relative_to].float() if cfg.relative_to else None
        target = self.normalize_action(action, reference)  # (B, K, Da)
        stats = self.trajectory_encoder(torch.cat([state, target], dim=-1).flatten(start_dim=1))
        mu, logvar = stats.chunk(2, dim=-1)
        logvar = logvar.clamp(-10.0, 4.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        noisy = self.policy_input(state, batch.get("features"))
        if self.training and cfg.state_noise > 0:
            noise = torch.randn_like(noisy) * cfg.state_noise
            if cfg.phase_input:  # the step within the segment is known exactly
                noise[..., -1] = 0.0
            noisy = noisy + noise
        pred = functional_mlp(noisy, self.hypernet(z), self.layer_sizes, cfg.policy_activation)
        recon = nn.functional.mse_loss(pred, target)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()
        # the latent diffusion learns the segments' latents (their means), gradients stopped
        z0 = mu.detach()
        noise = torch.randn_like(z0)
        t = self.train_sampler.sample_timesteps(b, device=z0.device)
        # with a frozen encoder the condition was computed once per frame (SegmentDataset features)
        cond = batch["cond"].float() if "cond" in batch else self.encode(batch["obs"])
        pred_latent = self.denoiser(self.train_sampler.add_noise(z0, noise, t), t, cond)
        diffusion = nn.functional.mse_loss(pred_latent, self.train_sampler.training_target(z0, noise, t))
        loss = recon + cfg.kl_weight * kl + cfg.diffusion_weight * diffusion
        return {"loss": loss, "recon": recon, "kl": kl, "diffusion": diffusion}


class LatentQueryGraph(nn.Module):
    """One diffusion query: raw observation + latent noise -> the generated policy's weights (B, P)."""

    def __init__(self, model: LWDModel, sampler: DDIMSampler, noise_scale: float = 1.0):
        super().__init__()
        self.model = model
        self.loop = FixedStepSampler(model.denoiser, sampler)
        self.nfe = self.loop.nfe
        # part of the graph, so a compiled engine samples at the same temperature as eager
        self.noise_scale = float(noise_scale)

    def forward(self, obs: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        z = self.loop(self.model.encode(obs), noise * self.noise_scale)
        return self.model.hypernet(z)


def numpy_mlp(x: np.ndarray, params: np.ndarray, sizes: tuple[int, ...], activation: str) -> np.ndarray:
    """The generated policy in numpy (the same flat layout as nn.hypernet.functional_mlp)."""
    h, offset = x.astype(np.float32), 0
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = params[offset:offset + d_in * d_out].reshape(d_out, d_in)
        offset += d_in * d_out
        b = params[offset:offset + d_out]
        offset += d_out
        h = h @ w.T + b
        if i < len(sizes) - 2:
            if activation == "mish":
                h = h * np.tanh(np.logaddexp(0.0, h))
            elif activation == "relu":
                h = np.maximum(h, 0.0)
            else:
                h = np.tanh(h)
    return h


@register_policy("lwd", config=LWDConfig, train=lambda request: train_lwd(request),
                 summary="Latent Weight Diffusion: one diffusion query per segment writes a small closed-loop policy")
class LWDPolicy(Policy):
    """LWD behind the common interface: act() queries the latent diffusion every K calls and runs
    the generated policy on every call."""

    def __init__(self, spec: PolicySpec, config: LWDConfig, model: LWDModel, steps: int | None = None,
                 seed: int = 0, device: str = "cpu", query_every: int | None = None, noise_scale: float = 1.0):
        super().__init__(spec)
        self.config = config
        if query_every is not None and not 1 <= int(query_every) <= config.segment_steps:
            raise ConfigError(f"query_every must be in [1, {config.segment_steps}] (the segment the model was "
                              f"trained on), got {query_every}")
        #: steps between diffusion queries: the trained segment length, or fewer (a shorter horizon)
        self.query_every = int(query_every or config.segment_steps)
        if not 0.0 <= float(noise_scale) <= 1.0:
            raise ConfigError(f"noise_scale must be in [0, 1] (1: the trained distribution, 0: one deterministic "
                              f"latent per observation), got {noise_scale}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.graph = LatentQueryGraph(self.model, self.model.make_sampler(steps), noise_scale).to(self.device).eval()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._params: np.ndarray | None = None
        self._step = 0
        self.n_queries = 0
        affine = self.model.preprocess.affine()
        self._affine = {k: (a.cpu().numpy(), b.cpu().numpy()) for k, (a, b) in affine.items()}
        self._action_affine = (self.model.action_scale.cpu().numpy(), self.model.action_offset.cpu().numpy())

    @property
    def nfe(self) -> int:
        """Network evaluations of one diffusion query (DDIM steps; the hypernetwork runs once more)."""
        return self.graph.nfe

    @property
    def queries(self) -> int:
        return self.n_queries

    @property
    def generated_policy_parameters(self) -> int:
        return mlp_param_count(self.model.layer_sizes)

    def cost_report(self) -> dict:
        costs = {"steps_per_query": self.query_every, "generated_policy_parameters": self.generated_policy_parameters}
        if self.config.camera_inputs:  # the observation encoder runs on every step too
            costs["per_step_encoder_parameters"] = sum(p.numel() for p in self.model.obs_encoder.parameters())
        return costs

    def reset(self) -> None:
        self._params, self._step = None, 0

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, steps: int | None = None, seed: int = 0,
                       device: str = "cpu", query_every: int | None = None, noise_scale: float = 1.0,
                       **options) -> "LWDPolicy":
        """steps: DDIM steps of a query; query_every: control steps between queries (<= segment_steps);
        noise_scale: the latent sampler's initial noise is scaled by it (a sampling temperature)."""
        if options:
            raise ConfigError(f"unknown LWD run-time options {sorted(options)} (it takes steps, query_every, "
                              f"noise_scale, seed, device)")
        files = load_model_dir(path)
        try:
            spec = PolicySpec.from_dict(files.config["spec"])
            config = LWDConfig.from_dict(files.config["policy"])
            normalizer = files.config["normalizer"]
        except KeyError as e:
            raise ModelFileError(f"{files.path / 'config.json'} lacks {e}: not an LWD model") from None
        except ConfigError as e:
            raise ModelFileError(f"{files.path / 'config.json'}: {e}") from None
        model = LWDModel(spec, config, normalizer)
        load_state_into(model, files.state_dict, files.path)
        return cls(spec, config, model, steps=steps, seed=seed, device=device, query_every=query_every,
                   noise_scale=noise_scale)

    @torch.inference_mode()
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.encode(obs_batch(obs, self.device))[0].cpu().numpy()

    def _noise(self) -> torch.Tensor:
        return torch.randn((1, self.config.latent_dim), generator=self.generator, device=self.device)

    @torch.inference_mode()
    def _query(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.graph(obs_batch(obs, self.device), self._noise())[0].float().cpu().numpy()

    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.act_through(obs, self._query)

    def act_through(self, obs: dict[str, np.ndarray], run_graph) -> np.ndarray:
        """A diffusion query (`run_graph`: eager, or a compiled engine) at a segment's first step,
        then the generated policy on the current low-dimensional observation."""
        if self._params is None or self._step >= self.query_every:
            self._params = np.asarray(run_graph(obs), dtype=np.float32).reshape(-1)
            self._step = 0
            self.n_queries += 1
        features = self._frame_features(obs) if self.config.camera_inputs else None
        action = self.generated_action(obs, self._params, self._step, features)
        self._step += 1
        return np.repeat(action[None], self.spec.horizon, axis=0)

    @torch.inference_mode()
    def _frame_features(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The frozen encoder's features of the current frame (eager: a small CNN per step)."""
        current = obs_batch({k: v[-1:] for k, v in obs.items()}, self.device)  # one frame, not n_obs
        return self.model.encode(current)[0].float().cpu().numpy()

    def generated_action(self, obs: dict[str, np.ndarray], params: np.ndarray, step: int,
                         features: np.ndarray | None = None) -> np.ndarray:
        """The generated policy's action (robot units) for the last frame of `obs` at segment step `step`
        (`features`: the current frame's, with camera_inputs)."""
        parts = [obs[key][-1].astype(np.float32) * self._affine[key][0] + self._affine[key][1]
                 for key in self.model.policy_keys]
        if self.config.camera_inputs:
            parts.append(np.asarray(features, np.float32))
        if self.config.phase_input:
            parts.append(np.array([2.0 * step / self.config.segment_steps - 1.0], np.float32))
        naction = numpy_mlp(np.concatenate(parts), params, self.model.layer_sizes, self.config.policy_activation)
        scale, offset = self._action_affine
        action = (naction - offset) / scale
        n = self.model.relative_dims
        if n:
            action[:n] += obs[self.config.relative_to][-1][:n]
        return action.astype(np.float32)

    def export_graph(self):
        """One diffusion query: observation + latent noise -> the generated policy's flat weights."""
        sampler = self.graph.loop.sampler
        signature = {"sampler": type(sampler).__name__, "sampler_settings": sampler.extra_repr(), "nfe": self.nfe,
                     "noise_scale": self.graph.noise_scale,
                     "output": "generated_policy_weights", "layer_sizes": list(self.model.layer_sizes)}
        graph = flat_export_graph(self.graph, self.spec, {"noise": (1, self.config.latent_dim)}, signature,
                                  device=self.device, lowdim_affine=self.model.preprocess.affine())
        graph.output_name = "generated_policy_weights"
        return graph

    def export_generated_policy_onnx(self, path: str | os.PathLike) -> Path:
        """The generated policy as ONNX: inputs `state` (N, in) (normalized, see LWDModel.policy_state)
        and `weights` (P,) (a query's output), output the normalized action (N, action_dim)."""
        sizes, activation = self.model.layer_sizes, self.config.policy_activation

        class GeneratedPolicy(nn.Module):
            def forward(self, state, weights):
                return functional_mlp(state, weights, sizes, activation)

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        example = (torch.zeros(1, sizes[0]), torch.zeros(mlp_param_count(sizes)))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch's notices about its exporters, not the user's concern
            torch.onnx.export(GeneratedPolicy(), example, str(path), input_names=["state", "weights"],
                              output_names=["action"], dynamic_axes={"state": {0: "n"}, "action": {0: "n"}},
                              opset_version=17, dynamo=False)
        return path


# --- training ------------------------------------------------------------------------------


class SegmentDataset(torch.utils.data.Dataset):
    """Segments of K steps: the observation at the segment's start (n_obs_steps frames), the
    generated policy's low-dimensional inputs and the actions over the K steps (edge-padded at
    an episode's end, where the demonstration holds its last action)."""

    def __init__(self, buffer, spec: PolicySpec, segment_steps: int, policy_keys: tuple[str, ...], episodes,
                 features: np.ndarray | None = None):
        from fastdp_ros.data import WindowDataset

        n_obs = spec.n_obs_steps
        self.policy_keys = tuple(dict.fromkeys(policy_keys))
        # with per-frame features (a frozen encoder), no image is read
        obs_keys = list(spec.obs_keys) if features is None else list(self.policy_keys)
        self.windows = WindowDataset(buffer, obs_keys, spec.action_key, n_obs, n_obs - 1 + segment_steps,
                                     segment_steps, episodes=episodes)
        self.features = features
        self.k, self.n_obs = segment_steps, n_obs

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows
        item = w[i]
        segment = {key: w.sampler.sample(w._arrays[key], i, self.n_obs - 1, self.k).astype(np.float32)
                   for key in self.policy_keys}
        out = {"segment": segment, "action": item["action"][self.n_obs - 1:].astype(np.float32)}
        if self.features is None:
            out["obs"] = item["obs"]
        else:
            out["features"] = w.sampler.sample(self.features, i, self.n_obs - 1, self.k)
            out["cond"] = w.sampler.sample(self.features, i, 0, self.n_obs).reshape(-1)
        return out


def fit_lwd_normalizer(buffer, spec: PolicySpec, relative_to: str):
    """Low-dim inputs and actions to [-1, 1]; with `relative_to`, the statistics of the arm's
    targets relative to that key's value at the same step (what the generated policy outputs)."""
    from fastdp_ros.data import Normalizer

    modes = {k: "limits" for k in spec.lowdim_dims}
    modes[spec.action_key] = "limits"
    modes.update({k: "image" for k in spec.image_keys})
    data = {k: buffer[k] for k in modes if k in buffer}
    if relative_to:
        action = np.asarray(buffer[spec.action_key][:], np.float32).copy()
        ref = np.asarray(buffer[relative_to][:], np.float32)
        n = min(ref.shape[1], action.shape[1])
        action[:, :n] -= ref[:, :n]
        data[spec.action_key] = action
    return Normalizer.fit(data, modes)


def check_layout(config: LWDConfig, lowdim_keys: tuple[str, ...], episode_lengths: np.ndarray, dataset: str) -> None:
    """The errors a user can cause, before any work: no low-dimensional inputs for the generated
    policy, policy keys or relative_to outside the layout, segments longer than every episode."""
    if not lowdim_keys:
        raise ConfigError("LWD's generated policy reads low-dimensional observations (joints, gripper), and the "
                          "layout has none: give --lowdim-keys (e.g. joint_pos,gripper)")
    outside = [k for k in config.policy_keys if k not in lowdim_keys]
    if outside:
        raise ConfigError(f"--policy-keys {outside} are not among --lowdim-keys {list(lowdim_keys)}")
    if config.relative_to and config.relative_to not in lowdim_keys:
        raise ConfigError(f"--relative-to {config.relative_to!r} is not among --lowdim-keys {list(lowdim_keys)} "
                          f"(use --relative-to '' for absolute targets)")
    longest = int(episode_lengths.max()) if len(episode_lengths) else 0
    if config.segment_steps > longest:
        raise DatasetError(f"--segment-steps {config.segment_steps} is longer than every episode of {dataset} "
                           f"(the longest has {longest} steps): use at most {longest}")


def train_lwd(request: BuildRequest) -> dict:
    """`fastdp train --policy lwd`: the VAE (trajectory encoder + hypernetwork) and the latent
    diffusion in one run of the shared training loop, then the model directory."""
    from fastdp_ros.data import ReplayBuffer, dataset_fingerprint, split_episodes
    from fastdp_ros.policies.training import jsonable, train

    config: LWDConfig = request.config
    settings = request.settings
    buffer = ReplayBuffer.open(request.dataset)
    episodes = demonstration_episodes(buffer)
    if request.max_episodes is not None:
        episodes = episodes[:request.max_episodes]
    if len(episodes) == 0:
        raise DatasetError(f"dataset {request.dataset} has no usable episodes")
    ends = np.asarray(buffer.episode_ends[:])
    lengths = np.diff(np.concatenate([[0], ends]))[episodes]
    check_layout(config, tuple(request.lowdim_keys), lengths, request.dataset)
    n_obs = request.n_obs_steps
    # act() returns the current action (and holds it one more step should the next one be late)
    spec = make_spec_from_dataset(buffer, request.image_keys, request.lowdim_keys, n_obs + 1, n_obs, 1)
    spec = dataclasses.replace(spec, extra={**spec.extra, "segment_steps": config.segment_steps})
    normalizer = fit_lwd_normalizer(buffer, spec, config.relative_to)
    model = LWDModel(spec, config, normalizer.to_dict())  # checks the generated policy's size bound
    provenance = {"dataset": os.path.abspath(request.dataset), "dataset_fingerprint": dataset_fingerprint(buffer)}
    if config.init_encoder:
        provenance["init_encoder"] = load_encoder_from(model, config.init_encoder)
    features = None
    if config.camera_inputs:
        if not config.init_encoder:
            raise ConfigError("--camera-inputs freezes the observation encoder: give the Diffusion Policy it comes "
                              "from with --init-encoder")
        model.obs_encoder.requires_grad_(False)
        features = frame_features(model, buffer, spec)
    tr, va = split_episodes(len(episodes), val_ratio=0.05 if len(episodes) > 1 else 0.0, seed=settings.seed)
    policy_keys = model.policy_keys + ((config.relative_to,) if config.relative_to else ())
    train_set = SegmentDataset(buffer, spec, config.segment_steps, policy_keys, episodes[tr], features)
    val_set = SegmentDataset(buffer, spec, config.segment_steps, policy_keys, episodes[va], features) \
        if len(va) else None
    n_params = sum(p.numel() for p in model.parameters())
    log.info("LWD: %.2fM parameters in training; the generated policy %s has %d; %d segments of %d steps from %d "
             "episodes", n_params / 1e6, list(model.layer_sizes), mlp_param_count(model.layer_sizes), len(train_set),
             config.segment_steps, len(tr))
    provenance.update(train_episodes=int(len(tr)), val_episodes=int(len(va)))

    def save(m: nn.Module, step: int) -> None:
        cfg = {"spec": spec.to_dict(), "policy": config.to_dict(), "normalizer": normalizer.to_dict(),
               "provenance": {**provenance, "train_steps": step,
                              "train_settings": jsonable(dataclasses.asdict(settings))}}
        save_model_dir(request.out, LWDPolicy.policy_type, cfg, m.state_dict(), half=request.half)

    result = train(model, lambda net, batch: net(batch), train_set, val_set, settings, request.out, save,
                   resume=request.resume)
    return {"steps": result.steps, "seconds": result.seconds, "first_loss": result.first_loss,
            "final_loss": result.final_loss, "val_loss": result.val_loss,
            "generated_policy_parameters": mlp_param_count(model.layer_sizes)}


@torch.no_grad()
def frame_features(model: LWDModel, buffer, spec: PolicySpec, batch: int = 256) -> np.ndarray:
    """The (frozen) observation encoder's features of every frame of `buffer` (N, frame_dim), as at run time."""
    encoder = model.obs_encoder.eval()
    n = int(np.asarray(buffer.episode_ends[:])[-1])
    out = np.empty((n, model.frame_dim), np.float32)
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        obs = {k: torch.from_numpy(np.asarray(buffer[k][lo:hi]))[:, None] for k in spec.obs_keys}
        out[lo:hi] = encoder(model.preprocess(obs))[:, 0].float().numpy()
    log.info("LWD: features of %d frames from the frozen observation encoder", n)
    return out


def load_encoder_from(model: LWDModel, path: str | os.PathLike) -> dict:
    """Copy a Diffusion Policy's observation-encoder parameters into `model` as a start."""
    from fastdp_ros.policies.modeldir import model_hash

    files = load_model_dir(path)
    prefix = "obs_encoder."
    theirs = {k[len(prefix):]: v for k, v in files.state_dict.items() if k.startswith(prefix)}
    mine = dict(model.obs_encoder.named_parameters())
    bad = sorted(k for k, p in mine.items() if k not in theirs or tuple(theirs[k].shape) != tuple(p.shape))
    if not theirs or bad:
        raise ConfigError(f"--init-encoder {path}: its observation encoder does not fit this one "
                          f"({'no obs_encoder weights' if not theirs else f'{len(bad)} tensors differ, e.g. {bad[:3]}'}); "
                          f"use the same cameras, low-dim keys, backbone, pool, feature_dim and num_keypoints")
    with torch.no_grad():
        for k, p in mine.items():
            p.copy_(theirs[k].to(p.dtype))
    log.info("latent diffusion's observation encoder starts from %s", path)
    return {"model": os.path.abspath(path), "model_hash": model_hash(path)}
