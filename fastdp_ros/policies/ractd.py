"""RACTD (Duan et al. 2025, arXiv 2506.07822): reward-aware consistency trajectory
distillation. The Consistency Policy student and loss (consistency.py) plus a reward term.

1. A reward model R(O, a) is fitted to the dataset's recorded rewards: R reads the frozen
   teacher's observation features and the action taken at that step (normalized), and
   predicts the reward that followed (standardized, so the reward weight means the same on
   every task). With a discount > 0 it predicts the discounted sum of the rewards that
   followed within the episode instead (a Monte-Carlo Q of the data's behaviour): the next
   step's reward barely depends on one action, what follows from it does. It learns from
   every episode of its datasets, failed ones included.
2. The student is distilled as in Consistency Policy, and its loss adds
       -reward_weight * R(O, first action of the student's clean one-step prediction)
   (the action it would execute first). The reward is evaluated on clean actions, never
   noisy ones; a weight around 0.7 works, much higher makes the distillation unstable.
The student runs exactly like a Consistency Policy (policy type "ractd").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from fastdp_ros.errors import ConfigError, DatasetError
from fastdp_ros.nn import MLP
from fastdp_ros.policies.base import BuildRequest, register_policy
from fastdp_ros.policies.config import option
from fastdp_ros.policies.consistency import (
    ConsistencyConfig,
    ConsistencyDistillation,
    ConsistencyPolicy,
    run_student_training,
    student_retrieval_base,
)
from fastdp_ros.policies.distill import Teacher, check_dataset_matches, distillation_windows, load_teacher

log = logging.getLogger(__name__)

REWARD_KEY = "reward"


@dataclass
class RACTDConfig(ConsistencyConfig):
    """Consistency distillation plus the reward term; the flags of `fastdp distill --policy ractd`.
    config.json keeps reward_weight beside the consistency settings; the reward model's fitting
    options are build-time choices (its statistics are in the provenance)."""

    label: ClassVar[str] = "RACTD"

    reward_weight: float = option(0.7, help="weight of -R(first action); much higher makes the distillation "
                                            "unstable")
    reward_steps: int = option(1000, stored=False, help="reward model fitting steps")
    reward_dataset: tuple[str, ...] | None = option(
        None, stored=False, nargs="+",
        help="fit the reward model on these datasets instead of --dataset (same observations; mixed-quality data, "
             "e.g. `fastdp collect --action-noise` or rollouts of a policy from `fastdp collect --policy M`, "
             "together with the demonstrations)")
    reward_discount: float = option(0.0, stored=False,
                                    help="0 fits the reward model to the next reward; a discount in (0, 1) to the "
                                         "discounted sum of the rewards that follow in the episode")


class RewardModel(nn.Module):
    """R(O, a) from the teacher's observation features and a normalized action."""

    def __init__(self, cond_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.net = MLP(cond_dim + action_dim, hidden, 1)

    def forward(self, cond: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, action], dim=-1)).squeeze(-1)


def discounted_returns(reward: np.ndarray, episode_ends: np.ndarray, discount: float) -> np.ndarray:
    """Per step, sum_k discount^k reward[t + k] over the rest of its episode (discount 0: reward)."""
    out = np.empty(len(reward), np.float64)
    start = 0
    for end in np.asarray(episode_ends, int):
        acc = 0.0
        for t in range(end - 1, start - 1, -1):
            acc = float(reward[t]) + discount * acc
            out[t] = acc
        start = end
    return out.astype(np.float32)


def reward_windows(datasets: Sequence[str], spec, discount: float = 0.0):
    """Windows of every episode of `datasets` (checked against `spec`), whose reward key holds
    the reward model's target: the reward, or with discount > 0 the discounted return."""
    from fastdp_ros.data import ReplayBuffer, WindowDataset

    if not 0.0 <= discount < 1.0:
        raise ConfigError(f"the reward discount must be in [0, 1), got {discount}")
    buffers = {str(path): ReplayBuffer.open(path) for path in datasets}
    for path, buffer in buffers.items():
        if REWARD_KEY not in buffer:
            raise DatasetError(f"RACTD needs the dataset's rewards; {path} has no '{REWARD_KEY}' array "
                               f"(record one with `fastdp collect`)")
        check_dataset_matches(buffer, spec)
        if buffer.n_episodes == 0:
            raise DatasetError(f"reward dataset {path} has no episodes")
    # recorded before the simulation's step cost existed: no attribute, no cost
    step_costs = {path: float(buffer.attrs.get("step_cost", 0.0)) for path, buffer in buffers.items()}
    if len(set(step_costs.values())) > 1:
        raise DatasetError(f"the reward datasets were recorded with different step costs {step_costs}: their "
                           f"rewards do not compare; record the older ones again with `fastdp collect`")
    keys = list(dict.fromkeys(list(spec.obs_keys) + [REWARD_KEY]))
    sets = []
    for buffer in buffers.values():
        arrays = buffer.load_to_memory(keys + [spec.action_key])
        arrays[REWARD_KEY] = discounted_returns(arrays[REWARD_KEY], buffer.episode_ends, discount)
        arrays["episode_ends"] = buffer.episode_ends
        sets.append(WindowDataset(arrays, keys, spec.action_key, spec.n_obs_steps, spec.horizon,
                                  spec.n_action_steps))
    return ConcatDataset(sets)


def _reward_batch(teacher: Teacher, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(teacher features, normalized action taken now, reward that followed) of a window batch."""
    first = teacher.spec.n_obs_steps - 1
    with torch.no_grad():
        cond = teacher.model.encode(batch["obs"])
        action = teacher.model.normalize_action(batch["action"][:, first].float(),
                                                teacher.model.action_reference(batch["obs"]))
    reward = batch["obs"][REWARD_KEY][:, -1].float().reshape(-1)
    return cond, action, reward


def fit_reward_model(teacher: Teacher, train_set, steps: int = 1000, batch_size: int = 64, lr: float = 1e-3,
                     seed: int = 0) -> tuple[RewardModel, dict]:
    """Fit R to the dataset's rewards (standardized); returns the model and its fit statistics."""
    torch.manual_seed(seed)
    rewards = np.concatenate([np.asarray(train_set[i]["obs"][REWARD_KEY][-1:]).reshape(-1)
                              for i in range(0, len(train_set), max(1, len(train_set) // 500))])
    mean, std = float(rewards.mean()), float(rewards.std()) or 1.0
    model = RewardModel(teacher.model.cond_dim, teacher.spec.action_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) >= batch_size)
    losses, step = [], 0
    while step < steps:
        for batch in loader:
            cond, action, reward = _reward_batch(teacher, batch)
            loss = nn.functional.mse_loss(model(cond, action), (reward - mean) / std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step >= steps:
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    stats = {"reward_mean": mean, "reward_std": std, "reward_fit_steps": steps,
             "reward_fit_loss": float(np.mean(losses[-50:])) if losses else float("nan")}
    log.info("reward model: standardized MSE %.3f after %d steps", stats["reward_fit_loss"], steps)
    return model, stats


class RACTDDistillation(ConsistencyDistillation):
    """Consistency distillation whose loss also maximizes the reward of the first action."""

    def __init__(self, teacher: Teacher, config: RACTDConfig, reward_model: nn.Module):
        super().__init__(teacher, config)
        self.reward_model = reward_model.eval()
        for p in self.reward_model.parameters():
            p.requires_grad_(False)
        self.first = teacher.spec.n_obs_steps - 1

    def train(self, mode: bool = True):
        super().train(mode)
        self.reward_model.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        parts = self.losses(batch)
        x_t, t, cond = parts["x_t"], parts["t"], parts["cond"]
        clean = self.student.denoise(x_t, t, torch.zeros_like(t), cond)  # G(x_t, t, 0)
        with torch.no_grad():
            features = self.teacher.encode(batch["obs"])
        # the reward of the action the policy can command: the act graph clips chunks to the
        # normalized range, and a reward model extrapolates beyond it, where the student would
        # otherwise chase rewards no robot command can reach (its outputs grew to +-13)
        reward = self.reward_model(features, clean[:, self.first].clamp(-1.0, 1.0)).mean()
        return parts["ctm"] + self.config.dsm_weight * parts["dsm"] - self.config.reward_weight * reward


def distill_ractd(teacher_path: str, dataset: str, out: str, config: RACTDConfig, settings,
                  reward_steps: int | None = None, resume: bool = False, half: bool = False,
                  reward_model: nn.Module | None = None, reward_datasets: str | Sequence[str] | None = None,
                  reward_discount: float | None = None):
    """Fit the reward model (unless given), then distil the reward-aware student into `out`.

    reward_datasets fit the reward model on other data than the student's demonstrations (the
    same observation spec): mixed-quality data, where several actions were taken in similar
    states (`fastdp collect --action-noise`, or rollouts of a policy with `--policy`), teaches
    it how the reward depends on the action, which one expert's demonstrations cannot.
    reward_steps, reward_datasets and reward_discount default to the config's.
    """
    if not isinstance(config, RACTDConfig):
        raise ConfigError(f"RACTD distils with a RACTDConfig (it has the reward options), got {type(config).__name__}")
    reward_steps = config.reward_steps if reward_steps is None else reward_steps
    reward_datasets = config.reward_dataset if reward_datasets is None else reward_datasets
    reward_discount = config.reward_discount if reward_discount is None else reward_discount
    teacher = load_teacher(teacher_path, "edm", "RACTD")
    if isinstance(reward_datasets, (str, os.PathLike)):
        reward_datasets = [reward_datasets]
    own = not reward_datasets
    sources = [str(d) for d in (reward_datasets or [dataset])]
    # the reward data first: a dataset without rewards fails before the images are loaded
    reward_set = reward_windows(sources, teacher.spec, reward_discount)
    _, train_set, val_set = distillation_windows(dataset, teacher.spec, seed=settings.seed)
    if config.reward_weight <= 0:
        log.warning("RACTD with reward_weight %.2f is plain consistency distillation", config.reward_weight)
    stats: dict = {"reward_model": "given"}
    if reward_model is None:
        reward_model, stats = fit_reward_model(teacher, reward_set, reward_steps, settings.batch_size,
                                               seed=settings.seed)
        stats["reward_discount"] = float(reward_discount)
        if not own:
            stats["reward_datasets"] = [os.path.abspath(d) for d in sources]
    module = RACTDDistillation(teacher, config, reward_model)
    return run_student_training(module, teacher, train_set, val_set, dataset, out, settings, resume, half,
                                policy_type=RACTDPolicy.policy_type, extra_provenance=stats)


def distill_from_request(request: BuildRequest) -> dict:
    """`fastdp distill --policy ractd`: every reward dataset checked first, then distill_ractd."""
    from fastdp_ros.data.check import require_dataset

    for path in request.config.reward_dataset or ():
        require_dataset(path)
    result = distill_ractd(request.teacher, request.dataset, request.out, request.config, request.settings,
                           resume=request.resume, half=request.half)
    return result.summary()


def retrieval_base(files):
    """A RACTD student as the model RAGDP accelerates: as a consistency student's."""
    return student_retrieval_base(files, RACTDConfig)


@register_policy("ractd", config=RACTDConfig, distill=distill_from_request, retrieval_base=retrieval_base,
                 summary="RACTD: the consistency student with a reward term (EDM teacher, dataset with rewards)")
class RACTDPolicy(ConsistencyPolicy):
    """A RACTD student: runs like a Consistency Policy (1 or a few chained evaluations)."""

    config_class = RACTDConfig
