"""The one interface every policy answers, and the registry of policies by name.

A policy loads from a model directory and offers:
  spec            -- PolicySpec (observation keys/shapes, action dim, dt, horizon, ...)
  encode(obs)     -- the embedding retrieval, ALT and the OOD monitor use
  act(obs)        -- an action chunk (horizon, action_dim) in robot units
  nfe             -- network evaluations per chunk (its cost)
"""

from __future__ import annotations

import abc
import os
import numpy as np

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
_BUILTIN_MODULES: list[str] = ["fastdp_ros.policies.dp"]
