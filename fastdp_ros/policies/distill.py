"""What every distiller shares: the frozen teacher, the dataset checked against its spec,
training windows, and a student model directory whose provenance names the teacher.

Each distiller (onedp, consistency, ractd) keeps its own loss and student in its own module
and calls these before any training starts, so bad input fails in seconds, not hours.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastdp_ros.errors import ConfigError, DatasetError
from fastdp_ros.policies.dp import (
    DiffusionPolicy,
    DiffusionPolicyConfig,
    DiffusionPolicyModel,
    build_model_from_files,
    demonstration_episodes,
    make_spec_from_dataset,
)
from fastdp_ros.policies.modeldir import load_model_dir, model_hash
from fastdp_ros.policies.spec import PolicySpec


@dataclass
class Teacher:
    """A Diffusion Policy teacher loaded for distillation (frozen, eval mode)."""

    path: Path
    spec: PolicySpec
    config: DiffusionPolicyConfig
    model: DiffusionPolicyModel
    normalizer: dict
    hash: str

    def provenance(self) -> dict:
        return {"teacher": str(self.path.resolve()), "teacher_hash": self.hash,
                "teacher_noise_model": self.config.noise_model}

    def trainable_copy(self) -> DiffusionPolicyModel:
        """A copy of the teacher's encoder + network to warm-start a student from."""
        student = copy.deepcopy(self.model)
        for p in student.parameters():
            p.requires_grad_(True)
        return student.train()


def load_teacher(path: str | os.PathLike, noise_model: str, distiller: str) -> Teacher:
    """Load a `dp` model directory and check it is the kind of teacher `distiller` needs."""
    files = load_model_dir(path)
    if files.policy_type != DiffusionPolicy.policy_type:
        raise ConfigError(f"{distiller} distils a Diffusion Policy (policy_type {DiffusionPolicy.policy_type!r}); "
                          f"{path} is a {files.policy_type!r} model")
    spec, config, model = build_model_from_files(files)
    if config.noise_model != noise_model:
        hint = ("train one with `fastdp train --policy dp --noise-model edm`" if noise_model == "edm"
                else "train one with `fastdp train --policy dp` (the default ddpm noise model)")
        raise ConfigError(f"{distiller} needs a {noise_model} teacher; {path} is a {config.noise_model} "
                          f"Diffusion Policy ({hint})")
    if noise_model == "ddpm" and config.prediction_type != "epsilon":
        raise ConfigError(f"{distiller} needs an epsilon-prediction teacher; {path} predicts "
                          f"{config.prediction_type!r}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(Path(path), spec, config, model, files.config["normalizer"], model_hash(path))


def check_dataset_matches(buffer, spec: PolicySpec, what: str = "the teacher") -> None:
    """A DatasetError unless the dataset has the observation keys, shapes, action size and
    recording period `spec` was trained with."""
    try:
        found = make_spec_from_dataset(buffer, spec.image_keys, tuple(spec.lowdim_dims), spec.horizon,
                                       spec.n_obs_steps, spec.n_action_steps, spec.action_key)
    except DatasetError as e:
        raise DatasetError(f"dataset does not match {what}'s observation spec: {e}") from None
    problems = []
    if spec.image_keys and tuple(found.image_shape) != tuple(spec.image_shape):
        problems.append(f"images are {tuple(found.image_shape)}, {what} expects {tuple(spec.image_shape)}")
    for key, dim in spec.lowdim_dims.items():
        if found.lowdim_dims[key] != dim:
            problems.append(f"{key} has {found.lowdim_dims[key]} values, {what} expects {dim}")
    if found.action_dim != spec.action_dim:
        problems.append(f"actions have {found.action_dim} values, {what} expects {spec.action_dim}")
    if not np.isclose(found.dt, spec.dt):
        problems.append(f"recorded every {found.dt} s, {what} was trained at {spec.dt} s")
    if problems:
        raise DatasetError(f"dataset {buffer.path} does not match {what}: " + "; ".join(problems))


def distillation_windows(dataset: str | os.PathLike, spec: PolicySpec, val_ratio: float = 0.05, seed: int = 0):
    """(buffer, train windows, validation windows or None) of a dataset checked against `spec`."""
    from fastdp_ros.data import ReplayBuffer, WindowDataset, split_episodes

    buffer = ReplayBuffer.open(dataset)
    check_dataset_matches(buffer, spec)
    episodes = demonstration_episodes(buffer)
    if len(episodes) == 0:
        raise DatasetError(f"dataset {dataset} has no usable episodes")
    tr, va = split_episodes(len(episodes), val_ratio=val_ratio if len(episodes) > 1 else 0.0, seed=seed)
    keys = list(spec.obs_keys)
    make = lambda eps: WindowDataset(buffer, keys, spec.action_key, spec.n_obs_steps, spec.horizon,  # noqa: E731
                                     spec.n_action_steps, episodes=eps)
    return buffer, make(episodes[tr]), (make(episodes[va]) if len(va) else None)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a network the student learns from but never changes."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class FrozenTrainMode(nn.Module):
    """Base for distillation modules: train() leaves the frozen teacher in eval mode."""

    teacher: nn.Module

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self


def no_grad_tensor(fn, *args) -> torch.Tensor:
    with torch.no_grad():
        return fn(*args)
