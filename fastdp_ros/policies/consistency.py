"""Consistency Policy (Prasad et al. 2024): CTM-style consistency distillation of an EDM
Diffusion Policy into a student that needs 1 (or a few chained) network evaluations.

Student (consistency trajectory model, Kim et al. 2023): from x_t at noise level t it jumps
to any lower level s along the teacher's probability-flow ODE,
    G(x_t, t, s) = (s / t) x_t + (1 - s / t) g(x_t, t, s),
where g is the teacher's EDM-preconditioned network with s appended to its conditioning. It
starts as a copy of the teacher: the columns that read s start at zero, so before training
g(x_t, t, s) is exactly the teacher's denoiser D(x_t, t).

Training, per batch (sigma grid: 80 Karras levels, sigma 0.002-80, rho 7):
  t = level n, u = level n + 1, s = a random level at or below u (or 0);
  x_t = x0 + t eps;  x_u = one Heun step of the frozen teacher from t to u;
  CTM loss:  | G~(G(x_t, t, s), s, 0) - G~(G~(x_u, u, s), s, 0) |^2   (G~: the student with
             its weights held fixed, i.e. stop-gradient; both sides compared as clean actions)
  DSM loss:  EDM denoising loss of g(x, sigma, sigma), which keeps g a good denoiser.
Inference: x = sigma_max z, then for each level of the chain x0 = G(x, t_i, 0) and, between
levels, x = x0 + t_{i+1} z_i (1 step, or 3 chained steps).

The RACTD module (ractd.py) reuses this student and loss and adds a reward term.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fastdp_ros.diffusion import edm_denoise, edm_training_sigmas, heun_step, preconditioned_loss_weight
from fastdp_ros.diffusion.schedules import karras_sigmas
from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.nn import ConditionalUnet1D
from fastdp_ros.nn.unet1d import SinusoidalPosEmb
from fastdp_ros.policies.base import BuildRequest, Policy, obs_batch, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.distill import FrozenTrainMode, Teacher, distillation_windows, freeze, load_teacher
from fastdp_ros.policies.dp import DiffusionPolicyConfig, DiffusionPolicyModel
from fastdp_ros.policies.modeldir import load_model_dir, load_state_into, save_model_dir
from fastdp_ros.policies.spec import PolicySpec

log = logging.getLogger(__name__)


@dataclass
class ConsistencyConfig(PolicyConfig):
    """Consistency distillation settings (the network's shape is the teacher's); the flags of
    `fastdp distill --policy consistency`."""

    label: ClassVar[str] = "consistency"

    bins: int = option(80, help="Karras levels of the teacher's ODE")
    s_embed_dim: int = option(32, help="width of the target level's embedding")
    dsm_weight: float = option(1.0, help="weight of the denoising auxiliary loss")
    inference_steps: int = option(1, help="chained steps stored as the default (1 or 3)")
    lr: float = option(1e-4, help="student learning rate")

    def __post_init__(self):
        if self.bins < 2:
            raise ConfigError(f"bins must be >= 2, got {self.bins}")
        if self.inference_steps < 1:
            raise ConfigError(f"inference_steps must be >= 1, got {self.inference_steps}")
        if self.s_embed_dim < 2 or self.s_embed_dim % 2:
            raise ConfigError(f"s_embed_dim must be an even number >= 2, got {self.s_embed_dim}")

    @classmethod
    def from_dict(cls, d: dict):
        # students written before RACTD had a config of its own stored reward_weight 0.0 (the
        # plain Consistency Policy's); a non-zero weight is a RACTD config, refused as unknown
        names = {f.name for f in dataclasses.fields(cls)}
        if isinstance(d, dict) and "reward_weight" not in names and d.get("reward_weight") == 0:
            d = {k: v for k, v in d.items() if k != "reward_weight"}
        return super().from_dict(d)


def widen_global_cond(unet: ConditionalUnet1D, config: DiffusionPolicyConfig, extra: int) -> ConditionalUnet1D:
    """A copy of `unet` whose conditioning takes `extra` more inputs at the end; their weights
    start at zero, so the copy computes exactly what `unet` does until they are trained."""
    wide = ConditionalUnet1D(
        input_dim=unet.input_dim, global_cond_dim=unet.global_cond_dim + extra,
        diffusion_step_embed_dim=config.diffusion_step_embed_dim, down_dims=config.down_dims,
        kernel_size=config.kernel_size, n_groups=config.n_groups,
    )
    source = unet.state_dict()
    with torch.no_grad():
        for name, param in wide.state_dict().items():
            old = source[name]
            if param.shape == old.shape:
                param.copy_(old)
            else:  # a FiLM layer's Linear weight: (out, cond_dim) -> (out, cond_dim + extra)
                param.zero_()
                param[:, : old.shape[1]] = old
    return wide


class TrajectoryStudent(nn.Module):
    """G(x_t, t, s) and g(x_t, t, s) over the teacher's encoder and (widened) network."""

    def __init__(self, model: DiffusionPolicyModel, s_embed_dim: int, sigma_min: float, widen: bool = True):
        super().__init__()
        if widen:
            model.unet = widen_global_cond(model.unet, model.config, s_embed_dim)
        self.model = model
        self.s_embed = SinusoidalPosEmb(s_embed_dim)
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(model.config.sigma_data)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """g(x_t, t, s): a clean-action estimate; t, s are (B,) levels."""
        # the level s is embedded like EDM's c_noise (ln(s) / 4); s = 0 reads as sigma_min / 2
        s_feat = self.s_embed(0.25 * torch.log(s.clamp(min=0.5 * self.sigma_min)))
        return edm_denoise(self.model.unet, x, t, torch.cat([cond, s_feat.to(cond.dtype)], dim=-1),
                           self.sigma_data, self.model.preconditioning)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """G(x_t, t, s): x_t carried from level t to level s (s <= t)."""
        ratio = (s / t).view(-1, 1, 1)
        return ratio * x + (1.0 - ratio) * self.denoise(x, t, s, cond)


def _levels(x: torch.Tensor, value: float) -> torch.Tensor:
    return x.new_full((x.shape[0],), float(value))


class StudentJump(nn.Module):
    """forward(x, t, cond) -> G(x, t, 0): the student's jump from level t straight to a clean
    chunk (the denoise_fn convention of the samplers)."""

    def __init__(self, student: TrajectoryStudent):
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        return self.student.denoise(x, _levels(x, t), _levels(x, 0.0), cond)  # G(x, t, 0) = g(x, t, 0)


class ConsistencyChainSampler(nn.Module):
    """Chained consistency sampling as a sampler: from level i, jump to a clean chunk x0 =
    G(x, t_i, 0), re-noise it to level i + 1 with step noise, and so on; the last x0 (clipped to
    the normalized range) is the sample. One network evaluation per level. noise_to_index and
    sample_from let RAGDP start part-way down the chain from a retrieved chunk (the VE variant)."""

    def __init__(self, levels: tuple[float, ...]):
        super().__init__()
        self.levels = tuple(float(t) for t in levels)
        self.num_steps = len(self.levels)
        self.stochastic = self.num_steps > 1  # re-noising between levels draws noise

    def extra_repr(self) -> str:
        return f"levels={[round(t, 4) for t in self.levels]}"

    def _check_start(self, start_index: int) -> int:
        if not 0 <= start_index < self.num_steps:
            raise ConfigError(f"start index {start_index} outside the chain's {self.num_steps} levels")
        return int(start_index)

    def nfe(self, start_index: int = 0) -> int:
        return self.num_steps - self._check_start(start_index)

    def noise_to_index(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        return x0 + self.levels[self._check_start(index)] * noise

    def sample(self, jump, noise: torch.Tensor, cond: torch.Tensor | None = None,
               step_noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample_from(jump, self.levels[0] * noise, 0, cond, step_noise)

    def sample_from(self, jump, x: torch.Tensor, start_index: int, cond: torch.Tensor | None = None,
                    step_noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """jump(x, t, cond) -> x0 (StudentJump); step_noise[i] re-noises to level i + 1."""
        x0 = x
        for i in range(self._check_start(start_index), self.num_steps):
            x0 = jump(x, self.levels[i], cond)
            if i + 1 < self.num_steps:
                z = (step_noise[i] if step_noise is not None
                     else torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype))
                x = x0 + self.levels[i + 1] * z
        return x0.clamp(-1.0, 1.0)


class ConsistencyActGraph(nn.Module):
    """The whole act() step: raw observation + noise (+ re-noising for chained steps) -> actions."""

    def __init__(self, student: TrajectoryStudent, chain: tuple[float, ...]):
        super().__init__()
        self.student = student
        self.jump = StudentJump(student)
        self.sampler = ConsistencyChainSampler(chain)
        self.chain = self.sampler.levels
        self.nfe = self.sampler.nfe()

    def forward(self, obs: dict[str, torch.Tensor], noise: torch.Tensor,
                step_noise: torch.Tensor | None = None) -> torch.Tensor:
        model = self.student.model
        x0 = self.sampler.sample(self.jump, noise, model.encode(obs), step_noise)
        return model.unnormalize_action(x0, model.action_reference(obs))


class StudentRetrievalModel(nn.Module):
    """A consistency (or RACTD) student as the model RAGDP accelerates: the student's encoder and
    action normalization, and its chain of levels as the sampler (VE: x = a + t eps)."""

    SAMPLER = "consistency"

    def __init__(self, student: TrajectoryStudent):
        super().__init__()
        self.student = student
        self.jump = StudentJump(student)
        self.cond_dim = student.model.cond_dim

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.student.model.encode(obs)

    def action_reference(self, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return self.student.model.action_reference(obs)

    def normalize_action(self, action: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        return self.student.model.normalize_action(action, reference)

    def unnormalize_action(self, naction: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        return self.student.model.unnormalize_action(naction, reference)

    def make_sampler(self, name: str | None = None, steps: int | None = None) -> ConsistencyChainSampler:
        if name not in (None, self.SAMPLER):
            raise ConfigError(f"a consistency student samples with its own chain ({self.SAMPLER!r}), not {name!r}")
        if steps is None or steps < 1:
            raise ConfigError(f"the consistency chain needs a number of levels >= 1, got {steps}")
        return ConsistencyChainSampler(inference_chain(self.student.model.config, steps))


def inference_chain(network: DiffusionPolicyConfig, steps: int) -> tuple[float, ...]:
    """Noise levels of chained inference: sigma_max, then Karras levels spread below it."""
    return tuple(karras_sigmas(steps + 1, network.sigma_min, network.sigma_max, network.rho)[:steps].tolist())


class ConsistencyDistillation(FrozenTrainMode):
    """Teacher (frozen EDM Diffusion Policy) + trajectory student: forward(batch) is the loss."""

    def __init__(self, teacher: Teacher, config: ConsistencyConfig):
        super().__init__()
        self.config = config
        self.teacher = freeze(teacher.model)
        net = teacher.config
        self.student = TrajectoryStudent(teacher.trainable_copy(), config.s_embed_dim, net.sigma_min)
        grid = karras_sigmas(config.bins, net.sigma_min, net.sigma_max, net.rho).to(torch.float32)
        self.register_buffer("grid", grid, persistent=False)  # bins levels, descending, then 0

    def sample_levels(self, b: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, u, s) per sample: t a level, u the next one down, s a level at or below u."""
        n_levels = self.config.bins
        n = torch.randint(0, n_levels - 1, (b,), device=device)
        u_index = n + 1
        # s index uniform in [u_index, n_levels] (index n_levels is the final 0)
        s_index = u_index + (torch.rand(b, device=device) * (n_levels + 1 - u_index).float()).long()
        return self.grid[n], self.grid[u_index], self.grid[s_index.clamp(max=n_levels)]

    def student_frozen(self, *args) -> torch.Tensor:
        """G with the student's current weights held fixed (stop-gradient), inputs differentiable."""
        params = {k: v.detach() for k, v in self.student.named_parameters()}
        buffers = dict(self.student.named_buffers())
        return functional_call(self.student, {**params, **buffers}, args)

    def to_clean(self, x: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """G~(x, s, 0): a point at level s mapped to a clean action (identity where s = 0)."""
        at_zero = s <= 0
        safe = torch.where(at_zero, torch.full_like(s, self.student.sigma_min), s)
        mapped = self.student_frozen(x, safe, torch.zeros_like(s), cond)
        return torch.where(at_zero.view(-1, 1, 1), x, mapped)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        obs = batch["obs"]
        model = self.student.model
        x0 = model.normalize_action(batch["action"].float(), model.action_reference(obs))
        b = x0.shape[0]
        cond = model.encode(obs)
        with torch.no_grad():
            cond_teacher = self.teacher.encode(obs)
        t, u, s = self.sample_levels(b, x0.device)
        x_t = x0 + t.view(-1, 1, 1) * torch.randn_like(x0)
        with torch.no_grad():
            teacher = lambda x, sigma: self.teacher.edm_denoiser(x, sigma, cond_teacher)  # noqa: E731
            x_u = heun_step(teacher, x_t, t, u)
            target = self.to_clean(self.student_frozen(x_u, u, s, cond.detach()), s, cond.detach())
        estimate = self.to_clean(self.student(x_t, t, s, cond), s, cond.detach())
        ctm = ((estimate - target) ** 2).mean()
        sigma = edm_training_sigmas(b, device=x0.device)
        noisy = x0 + sigma.view(-1, 1, 1) * torch.randn_like(x0)
        weight = preconditioned_loss_weight(self.student.model.preconditioning, sigma,
                                            self.student.sigma_data).view(-1, 1, 1)
        dsm = (weight * (self.student.denoise(noisy, sigma, sigma, cond) - x0) ** 2).mean()
        return {"ctm": ctm, "dsm": dsm, "cond": cond, "x_t": x_t, "t": t}

    def forward(self, batch: dict) -> torch.Tensor:
        parts = self.losses(batch)
        return parts["ctm"] + self.config.dsm_weight * parts["dsm"]


def consistency_config_dict(teacher: Teacher, config: ConsistencyConfig, dataset: str, step: int,
                            settings, extra_provenance: dict | None = None) -> dict:
    from fastdp_ros.policies.training import jsonable

    return {"spec": teacher.spec.to_dict(), "policy": config.to_dict(), "network": teacher.config.to_dict(),
            "normalizer": teacher.normalizer,
            "provenance": {**teacher.provenance(), "dataset": os.path.abspath(dataset), "distill_steps": step,
                           "train_settings": jsonable(dataclasses.asdict(settings)), **(extra_provenance or {})}}


def distill_consistency(teacher_path: str, dataset: str, out: str, config: ConsistencyConfig, settings,
                        resume: bool = False, half: bool = False):
    """Distil an EDM teacher into a consistency student and write the model directory `out`."""
    teacher = load_teacher(teacher_path, "edm", "Consistency distillation")
    _, train_set, val_set = distillation_windows(dataset, teacher.spec, seed=settings.seed)
    module = ConsistencyDistillation(teacher, config)
    return run_student_training(module, teacher, train_set, val_set, dataset, out, settings, resume, half)


def run_student_training(module: ConsistencyDistillation, teacher: Teacher, train_set, val_set, dataset: str,
                         out: str, settings, resume: bool, half: bool, policy_type: str | None = None,
                         extra_provenance: dict | None = None):
    """Train a consistency-style student (CP or RACTD; policy_type None: consistency) with the
    shared loop and save it."""
    from fastdp_ros.policies.training import train

    policy_type = policy_type or ConsistencyPolicy.policy_type
    config = module.config
    settings = dataclasses.replace(settings, lr=config.lr)
    log.info("%s distillation from %s: %d training windows", policy_type, teacher.path, len(train_set))

    def save(m: nn.Module, step: int) -> None:
        save_model_dir(out, policy_type, consistency_config_dict(teacher, config, dataset, step, settings,
                                                                 extra_provenance),
                       m.student.model.state_dict(), half=half)

    params = [p for p in module.student.parameters() if p.requires_grad]
    return train(module, lambda net, batch: net(batch), train_set, val_set, settings, out, save, resume=resume,
                 params=params)


def load_student(path, config_class: type[ConsistencyConfig] = ConsistencyConfig
                 ) -> tuple[PolicySpec, ConsistencyConfig, TrajectoryStudent, dict]:
    """Rebuild a consistency (or, with RACTD's config class, RACTD) student from its model directory."""
    return student_from_files(load_model_dir(path), config_class)


def student_from_files(files, config_class: type[ConsistencyConfig] = ConsistencyConfig
                       ) -> tuple[PolicySpec, ConsistencyConfig, TrajectoryStudent, dict]:
    """Rebuild a consistency (or RACTD) student from parsed model files (RAGDP keeps them too)."""
    cfg = files.config
    try:
        spec = PolicySpec.from_dict(cfg["spec"])
        config = config_class.from_dict(cfg["policy"])
        network = DiffusionPolicyConfig.from_dict(cfg["network"])
        normalizer = cfg["normalizer"]
    except KeyError as e:
        raise ModelFileError(f"{files.path / 'config.json'} lacks {e}: not a consistency model") from None
    except ConfigError as e:
        raise ModelFileError(f"{files.path / 'config.json'}: {e}") from None
    student = TrajectoryStudent(DiffusionPolicyModel(spec, network, normalizer), config.s_embed_dim,
                                network.sigma_min)
    load_state_into(student.model, files.state_dict, files.path)
    return spec, config, student, cfg


def student_retrieval_base(files, config_class: type[ConsistencyConfig] = ConsistencyConfig):
    """A consistency (or RACTD) student as the model RAGDP accelerates (VE): retrieval with its
    encoder, refinement by its chain of jumps over ragdp.STUDENT_CHAIN_LEVELS levels."""
    from fastdp_ros.policies.ragdp import STUDENT_CHAIN_LEVELS, RetrievalBase

    spec, _, student, _ = student_from_files(files, config_class)
    model = StudentRetrievalModel(student)
    entries = {k: files.config[k] for k in ("spec", "policy", "network", "normalizer")}
    return RetrievalBase(spec, model, model.jump, "ve", (model.SAMPLER, STUDENT_CHAIN_LEVELS), model.cond_dim,
                         entries)


def distill_from_request(request: BuildRequest) -> dict:
    """`fastdp distill --policy consistency`: the request's teacher, dataset and settings into distill_consistency."""
    result = distill_consistency(request.teacher, request.dataset, request.out, request.config, request.settings,
                                 resume=request.resume, half=request.half)
    return result.summary()


@register_policy("consistency", config=ConsistencyConfig, distill=distill_from_request,
                 retrieval_base=student_retrieval_base,
                 summary="Consistency Policy: CTM-style student, 1 or a few chained steps (EDM teacher)")
class ConsistencyPolicy(Policy):
    """A consistency student behind the common interface: `steps` network evaluations (1 or 3)."""

    #: the config.json "policy" entry of this kind of student
    config_class: type[ConsistencyConfig] = ConsistencyConfig

    def __init__(self, spec: PolicySpec, config: ConsistencyConfig, student: TrajectoryStudent,
                 steps: int | None = None, seed: int = 0, device: str = "cpu"):
        super().__init__(spec)
        self.config = config
        self.device = torch.device(device)
        chain = inference_chain(student.model.config, steps or config.inference_steps)
        self.graph = ConsistencyActGraph(student, chain).to(self.device).eval()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @property
    def nfe(self) -> int:
        return self.graph.nfe

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, steps: int | None = None, seed: int = 0,
                       device: str = "cpu", sampler: str | None = None):
        if sampler is not None:
            raise ConfigError(f"{path} is a consistency model: choose --steps (1, 3, ...), not a sampler")
        if steps is not None and steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        spec, config, student, _ = load_student(path, cls.config_class)
        return cls(spec, config, student, steps=steps, seed=seed, device=device)

    def noise_shapes(self) -> dict[str, tuple[int, ...]]:
        shape = (1, self.spec.horizon, self.spec.action_dim)
        shapes = {"noise": shape}
        if self.nfe > 1:
            shapes["step_noise"] = (self.nfe - 1, *shape)
        return shapes

    @torch.inference_mode()
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.graph.student.model.encode(obs_batch(obs, self.device))[0].cpu().numpy()

    @torch.inference_mode()
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        noise = [torch.randn(s, generator=self.generator, device=self.device) for s in self.noise_shapes().values()]
        return self.graph(obs_batch(obs, self.device), *noise)[0].cpu().numpy()

    def export_graph(self):
        """The whole act() step; inputs: the observation, `noise`, and `step_noise` when chained."""
        from fastdp_ros.policies.base import flat_export_graph

        signature = {"student": self.policy_type, "chain": list(self.graph.chain), "nfe": self.nfe}
        return flat_export_graph(self.graph, self.spec, self.noise_shapes(), signature, device=self.device,
                                 lowdim_affine=self.graph.student.model.preprocess.affine())
