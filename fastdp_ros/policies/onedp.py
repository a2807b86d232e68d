"""OneDP (Wang et al. 2024, arXiv 2410.21257): a one-step action generator distilled from a
DDPM Diffusion Policy by minimizing the KL divergence along the diffusion chain.

Generator: a copy of the teacher's encoder and noise network, read once at a fixed step
t_init and turned into an action by the epsilon -> x0 relation,
    A = G(z, O) = (z - sqrt(1 - abar_init) eps_G(z, t_init, O)) / sqrt(abar_init),
so before training it *is* the teacher's one-step denoiser from noise z.

Training: noise the generator's action to a random step k of the chain, A_k, and push A
along the score difference (the gradient of KL(p_G || p_teacher) at step k, weight sigma_k^2):
    dA = sigma_k^2 * (grad log p_G,k(A_k) - grad log p_teacher,k(A_k)) * dA_k/dA
       = sigma_k * sqrt(abar_k) * (eps_teacher - eps_G,k)        (grad log p = -eps / sigma)
  OneDP-S: eps_G,k comes from an auxiliary generator-score network (a copy of the teacher)
           trained by denoising the generator's (detached) actions.
  OneDP-D: the generator is deterministic (z = 0); its noised distribution is a Gaussian
           around sqrt(abar_k) A, whose score is known: eps_G,k is the noise itself.
The teacher stays frozen; the generator's encoder keeps training with the generator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fastdp_ros.diffusion import DDPMSampler
from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.policies.base import BuildRequest, Policy, obs_batch, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.distill import FrozenTrainMode, Teacher, distillation_windows, freeze, load_teacher, trainable
from fastdp_ros.policies.dp import DiffusionPolicyConfig, DiffusionPolicyModel
from fastdp_ros.policies.modeldir import load_model_dir, load_state_into, save_model_dir
from fastdp_ros.policies.spec import PolicySpec

log = logging.getLogger(__name__)

VARIANTS = ("s", "d")


@dataclass
class OneDPConfig(PolicyConfig):
    """OneDP's own settings (the network's shape is the teacher's, saved beside them); the flags
    of `fastdp distill --policy onedp`."""

    label: ClassVar[str] = "OneDP"

    variant: str = option("s", choices=VARIANTS,
                          help="s: stochastic generator + score network | d: deterministic (learns far faster from a "
                               "nearly deterministic teacher, such as the shipped push teacher: models/README.md)")
    t_init: int = option(65, help="fixed step the generator reads the network at")
    k_min: int = option(2, help="KL steps k are drawn uniformly from [k_min, k_max]")
    k_max: int = option(95, help="highest KL step k")
    generator_lr: float = option(1e-6, help="generator learning rate (the paper's)")
    score_lr: float = option(2e-5, help="generator-score network learning rate (OneDP-S; the paper's)")
    betas: tuple[float, float] = option((0.0, 0.999), help="Adam betas B1,B2")

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if self.variant not in VARIANTS:
            raise ConfigError(f"OneDP variant must be one of {VARIANTS} (s: stochastic, d: deterministic), "
                              f"got {self.variant!r}")
        if not 0 < self.k_min <= self.k_max:
            raise ConfigError(f"need 0 < k_min <= k_max, got {self.k_min}, {self.k_max}")

    def check_against(self, num_train_timesteps: int) -> None:
        for name in ("t_init", "k_max"):
            if not 0 <= getattr(self, name) < num_train_timesteps:
                raise ConfigError(f"OneDP {name}={getattr(self, name)} is outside the teacher's "
                                  f"{num_train_timesteps} diffusion steps")


class OneStepGenerator(nn.Module):
    """G(z, O): encoder + noise network at t_init + epsilon -> x0, in normalized action units."""

    def __init__(self, model: DiffusionPolicyModel, t_init: int):
        super().__init__()
        self.model = model
        cfg = model.config
        chain = DDPMSampler(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type)
        abar = float(chain.alphas_cumprod[t_init])
        self.t_init = int(t_init)
        self.sqrt_abar = math.sqrt(abar)
        self.sqrt_one_minus_abar = math.sqrt(1.0 - abar)

    def generate(self, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = z.new_full((z.shape[0],), float(self.t_init))
        eps = self.model.unet(z, t, cond)
        return (z - self.sqrt_one_minus_abar * eps) / self.sqrt_abar

    def forward(self, obs: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return self.generate(self.model.encode(obs), z)


class OneDPActGraph(nn.Module):
    """The whole act() step: raw observation + z -> action chunk in robot units (1 NFE).

    The action is clipped to the normalized range like the teacher's sampler clips x0."""

    def __init__(self, generator: OneStepGenerator, horizon: int, action_dim: int):
        super().__init__()
        self.generator = generator
        self.shape = (int(horizon), int(action_dim))
        self.nfe = 1

    def forward(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:  # OneDP-D: z = 0 (a constant in an exported graph)
            batch = next(iter(obs.values())).shape[0]
            noise = torch.zeros((batch, *self.shape), device=self.generator.model.action_scale.device)
        action = self.generator(obs, noise).clamp(-1.0, 1.0)
        model = self.generator.model
        return model.unnormalize_action(action, model.action_reference(obs))


class OneDPDistillation(FrozenTrainMode):
    """Teacher (frozen) + generator (+ generator-score network): forward(batch) is the loss."""

    def __init__(self, teacher: Teacher, config: OneDPConfig):
        super().__init__()
        config.check_against(teacher.config.num_train_timesteps)
        self.config = config
        self.teacher = freeze(teacher.model)
        self.generator = OneStepGenerator(teacher.trainable_copy(), config.t_init)
        self.score = teacher.trainable_copy() if config.variant == "s" else None
        tc = teacher.config
        self.chain = DDPMSampler(tc.num_train_timesteps, tc.beta_schedule, tc.prediction_type)

    def param_groups(self) -> list[dict]:
        groups = [{"params": trainable(self.generator), "lr": self.config.generator_lr}]
        if self.score is not None:
            groups.append({"params": trainable(self.score), "lr": self.config.score_lr})
        return groups

    def noise_input(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like) if self.config.variant == "s" else torch.zeros_like(like)

    def kl_gradient(self, obs: dict[str, torch.Tensor], action: torch.Tensor, k: torch.Tensor, noise: torch.Tensor,
                    analytic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(d KL_k / d action per sample, the score network's denoising loss) at steps k.

        The sigma_k^2-weighted score difference at A_k = sqrt(abar_k) A + sigma_k noise, pulled
        back to A: sigma_k sqrt(abar_k) (eps_teacher - eps_G). eps_G is the generator-score
        network's estimate (OneDP-S) or, for OneDP-D or with `analytic`, the noise itself: the
        exact score of a point mass at A."""
        noisy = self.chain.add_noise(action.detach(), noise, k)
        with torch.no_grad():
            eps_teacher = self.teacher.unet(noisy, k.float(), self.teacher.encode(obs))
        if self.score is not None and not analytic:
            eps_score = self.score.unet(noisy, k.float(), self.score.encode(obs))
            score_loss = nn.functional.mse_loss(eps_score, noise)
            eps_generator = eps_score.detach()
        else:
            score_loss = action.new_zeros(())
            eps_generator = noise
        sqrt_abar = self.chain.sqrt_alphas_cumprod[k].view(-1, 1, 1)
        sigma = self.chain.sqrt_one_minus_alphas_cumprod[k].view(-1, 1, 1)
        return sigma * sqrt_abar * (eps_teacher - eps_generator), score_loss

    def sample_steps(self, batch_size: int, device) -> torch.Tensor:
        return torch.randint(self.config.k_min, self.config.k_max + 1, (batch_size,), device=device)

    def forward(self, batch: dict) -> torch.Tensor:
        obs = batch["obs"]
        shape = batch["action"].shape
        z = self.noise_input(torch.empty(shape, device=batch["action"].device))
        action = self.generator(obs, z)  # normalized
        b = shape[0]
        grad, score_loss = self.kl_gradient(obs, action, self.sample_steps(b, action.device), torch.randn_like(action))
        # A surrogate whose gradient w.r.t. the action is `grad` (summed per sample).
        target = (action - grad).detach()
        generator_loss = 0.5 * ((action - target) ** 2).sum() / b
        return generator_loss + score_loss


def _build_generator(spec: PolicySpec, network: DiffusionPolicyConfig, normalizer: dict,
                     config: OneDPConfig) -> OneStepGenerator:
    return OneStepGenerator(DiffusionPolicyModel(spec, network, normalizer), config.t_init)


def distill_onedp(teacher_path: str, dataset: str, out: str, config: OneDPConfig, settings,
                  resume: bool = False, half: bool = False):
    """Distil a DDPM teacher into a OneDP generator and write the model directory `out`."""
    from fastdp_ros.policies.training import jsonable, train

    teacher = load_teacher(teacher_path, "ddpm", "OneDP")
    _, train_set, val_set = distillation_windows(dataset, teacher.spec, seed=settings.seed)
    module = OneDPDistillation(teacher, config)
    settings = dataclasses.replace(settings, betas=config.betas, ema=True)
    log.info("OneDP-%s from %s: %d training windows", config.variant.upper(), teacher_path, len(train_set))

    def save(m: nn.Module, step: int) -> None:
        cfg = {"spec": teacher.spec.to_dict(), "policy": config.to_dict(), "network": teacher.config.to_dict(),
               "normalizer": teacher.normalizer,
               "provenance": {**teacher.provenance(), "dataset": os.path.abspath(dataset),
                              "distill_steps": step, "train_settings": jsonable(dataclasses.asdict(settings))}}
        save_model_dir(out, OneDPPolicy.policy_type, cfg, m.generator.model.state_dict(), half=half)

    return train(module, lambda net, batch: net(batch), train_set, val_set, settings, out, save, resume=resume,
                 params=module.param_groups())


def distill_from_request(request: BuildRequest) -> dict:
    """`fastdp distill --policy onedp`: the request's teacher, dataset and settings into distill_onedp."""
    result = distill_onedp(request.teacher, request.dataset, request.out, request.config, request.settings,
                           resume=request.resume, half=request.half)
    return result.summary()


@register_policy("onedp", config=OneDPConfig, distill=distill_from_request,
                 summary="OneDP: a one-step generator distilled by KL along the diffusion chain (DDPM teacher)")
class OneDPPolicy(Policy):
    """A OneDP generator behind the common interface: one network evaluation per chunk."""

    def __init__(self, spec: PolicySpec, config: OneDPConfig, generator: OneStepGenerator, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(spec)
        self.config = config
        self.device = torch.device(device)
        self.graph = OneDPActGraph(generator, spec.horizon, spec.action_dim).to(self.device).eval()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @property
    def nfe(self) -> int:
        return 1

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, seed: int = 0, device: str = "cpu",
                       sampler: str | None = None, steps: int | None = None) -> "OneDPPolicy":
        if sampler is not None or steps is not None:
            raise ConfigError(f"{path} is a OneDP model: one network evaluation, no sampler or steps to choose")
        files = load_model_dir(path)
        cfg = files.config
        try:
            spec = PolicySpec.from_dict(cfg["spec"])
            config = OneDPConfig.from_dict(cfg["policy"])
            network = DiffusionPolicyConfig.from_dict(cfg["network"])
            normalizer = cfg["normalizer"]
        except KeyError as e:
            raise ModelFileError(f"{files.path / 'config.json'} lacks {e}: not a OneDP model") from None
        except ConfigError as e:
            raise ModelFileError(f"{files.path / 'config.json'}: {e}") from None
        generator = _build_generator(spec, network, normalizer, config)
        load_state_into(generator.model, files.state_dict, files.path)
        return cls(spec, config, generator, seed=seed, device=device)

    def noise(self) -> torch.Tensor | None:
        """The generator's z: standard normal for OneDP-S, none (z = 0) for OneDP-D."""
        if self.config.variant == "d":
            return None
        return torch.randn((1, self.spec.horizon, self.spec.action_dim), generator=self.generator,
                           device=self.device)

    @torch.inference_mode()
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.graph.generator.model.encode(obs_batch(obs, self.device))[0].cpu().numpy()

    @torch.inference_mode()
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.graph(obs_batch(obs, self.device), self.noise())[0].cpu().numpy()

    def export_graph(self):
        """The whole act() step (preprocessing, encoder, the one network evaluation, clipping,
        unnormalization); its one input besides the observation is the generator's noise z
        (none for OneDP-D, whose z = 0 is a constant of the graph)."""
        from fastdp_ros.policies.base import flat_export_graph

        signature = {"generator": self.policy_type, "variant": self.config.variant, "t_init": self.config.t_init,
                     "nfe": 1}
        noise_shapes = {} if self.config.variant == "d" else {"noise": (1, self.spec.horizon, self.spec.action_dim)}
        return flat_export_graph(self.graph, self.spec, noise_shapes, signature, device=self.device,
                                 lowdim_affine=self.graph.generator.model.preprocess.affine())
