"""The one interface every policy answers, and the registry of policies by name.

A policy loads from a model directory and offers:
  spec            -- PolicySpec (observation keys/shapes, action dim, dt, horizon, ...)
  encode(obs)     -- the embedding retrieval, ALT and the OOD monitor use
  act(obs)        -- an action chunk (horizon, action_dim) in robot units
  nfe             -- network evaluations per chunk (its cost)

and, where its method allows, `export_graph()`: the whole act() step as one deterministic
module with flat tensor inputs, which `fastdp_ros.engines` compiles (ONNX Runtime, TensorRT,
torch.compile). Policies never import the engines; the engines only call export_graph().
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies.modeldir import read_config
from fastdp_ros.policies.spec import PolicySpec, check_observation


class Policy(abc.ABC):
    """Base class: subclasses implement `_encode`, `_act`, `from_model_dir` and `nfe`."""

    #: registry name, set by @register_policy
    policy_type: str = ""

    def __init__(self, spec: PolicySpec):
        self.spec = spec

    @property
    @abc.abstractmethod
    def nfe(self) -> int:
        """Network evaluations per action chunk."""

    @classmethod
    @abc.abstractmethod
    def from_model_dir(cls, path: str | os.PathLike, **options) -> "Policy":
        """Load from a model directory; options are run-time choices (device, sampler, steps)."""

    @abc.abstractmethod
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Embedding of a validated observation."""

    @abc.abstractmethod
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Action chunk (horizon, action_dim) for a validated observation."""

    def encode(self, obs: dict) -> np.ndarray:
        return self._encode(check_observation(self.spec, obs))

    def act(self, obs: dict) -> np.ndarray:
        return self._act(check_observation(self.spec, obs))

    def export_graph(self) -> "ExportGraph":
        """The act() step as one exportable module (see ExportGraph); optional.

        Policies whose act() is one fixed computation (encoder + fixed-step sampler, a one-step
        generator) override this; the default says the policy cannot be exported.
        """
        name = self.policy_type or type(self).__name__
        raise ConfigError(f"policy {name!r} cannot be exported (it provides no export graph); "
                          f"run it with backend 'torch'")


class FlatInputs(nn.Module):
    """Adapts an act module taking (obs dict, *noise) to flat positional tensor inputs.

    Exporters (ONNX, torch.export, CUDA graphs) want a flat list of named tensors; the policies'
    act modules take the observation as a dict. forward(*tensors): the first len(obs_keys) are
    the observation in obs_keys order, the rest are passed through (noise inputs).
    """

    def __init__(self, act_module: nn.Module, obs_keys: tuple[str, ...]):
        super().__init__()
        self.act_module = act_module
        self.obs_keys = tuple(obs_keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        n = len(self.obs_keys)
        return self.act_module(dict(zip(self.obs_keys, tensors[:n])), *tensors[n:])


@dataclass
class ExportGraph:
    """A policy's whole act() step as one deterministic module with flat tensor inputs.

    `module(*inputs)` -> (1, horizon, action_dim) actions in robot units. The inputs are, in
    order, the raw observation of every key in `obs_keys` with a batch dimension of 1
    ((1, n_obs, H, W, 3) uint8 images, (1, n_obs, D) float32 low-dim) followed by the noise
    inputs named in `noise_shapes`, which the caller fills with standard normal noise: every
    random draw is an input, so the graph itself is deterministic and engines can be checked
    against eager execution. `noise_shapes` lists the noise in the order the policy's own
    act() draws it, so the same generator gives the same actions.

    `example_inputs` are reproducible representative inputs (same values on every call) used
    for tracing and parity checks; `signature` records what besides the weights shapes the
    graph (sampler, steps, input shapes): it is part of an engine's cache key.

    `finish`, when set, completes act() outside the graph: it maps the graph's output for one
    observation (batch dimension removed; `output_name` says what it is) to the action chunk.
    A lookup policy uses it: the graph computes the embedding, `finish` searches the table.
    """

    module: nn.Module
    obs_keys: tuple[str, ...]
    noise_shapes: dict[str, tuple[int, ...]]
    example_inputs: tuple[torch.Tensor, ...]
    signature: dict = field(default_factory=dict)
    output_name: str = "action"
    finish: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*self.obs_keys, *self.noise_shapes)


def flat_export_graph(
    act_module: nn.Module,
    spec: PolicySpec,
    noise_shapes: dict[str, tuple[int, ...]],
    signature: dict,
    device: torch.device | str = "cpu",
    lowdim_affine: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
) -> ExportGraph:
    """ExportGraph of an act module forward(obs dict, *noise) with batch-1 example inputs.

    Example images are random uint8; example low-dim values are drawn uniformly inside the
    range the policy was trained on when `lowdim_affine` gives its normalization
    (x * scale + offset in [-1, 1]), else standard normal. A fixed seed makes them
    identical on every call; their digest joins the signature.
    """
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for key in spec.obs_keys:
        shape = (1, spec.n_obs_steps, *spec.obs_shape(key))
        if key in spec.image_keys:
            examples.append(torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
        elif lowdim_affine and key in lowdim_affine:
            scale, offset = (t.detach().cpu().float() for t in lowdim_affine[key])
            u = torch.rand(shape, generator=gen) * 2 - 1
            examples.append((u - offset) / scale)
        else:
            examples.append(torch.randn(shape, generator=gen))
    examples += [torch.randn(shape, generator=gen) for shape in noise_shapes.values()]
    digest = hashlib.sha256()
    for t in examples:
        digest.update(t.numpy().tobytes())
    examples = tuple(t.to(device) for t in examples)
    module = FlatInputs(act_module, spec.obs_keys).eval()
    signature = {
        **signature,
        "inputs": {name: [list(t.shape), str(t.dtype)] for name, t in zip((*spec.obs_keys, *noise_shapes), examples)},
        "example_digest": digest.hexdigest()[:16],
    }
    return ExportGraph(module, tuple(spec.obs_keys), dict(noise_shapes), examples, signature)


_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(name: str):
    """Class decorator: make a Policy loadable by its config.json `policy_type`."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"policy type {name!r} registered twice")
        cls.policy_type = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def policy_class(name: str) -> type[Policy]:
    """The Policy class registered under `name`, or a ConfigError listing the known ones."""
    _import_builtin_policies()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise ConfigError(f"unknown policy type {name!r}; known policy types: {known}") from None


def registered_policies() -> list[str]:
    _import_builtin_policies()
    return sorted(_REGISTRY)


def load_policy(path: str | os.PathLike, **options) -> Policy:
    """Load any model directory by the policy_type in its config.json."""
    config = read_config(path)
    return policy_class(config["policy_type"]).from_model_dir(path, **options)


def _import_builtin_policies() -> None:
    # Imported lazily so `fastdp_ros.policies.base` stays cheap and free of cycles.
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


#: the built-in policy modules; importing one registers its policy (one module per policy)
_BUILTIN_MODULES: list[str] = ["fastdp_ros.policies.dp", "fastdp_ros.policies.onedp", "fastdp_ros.policies.consistency",
                                 "fastdp_ros.policies.ractd", "fastdp_ros.policies.ragdp", "fastdp_ros.policies.alt"]
