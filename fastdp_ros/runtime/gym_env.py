"""Any gymnasium environment as an evaluation target (`fastdp eval M --env package.module:factory`).

The factory is a callable that returns a gymnasium.Env (a class works too); `--env-kwargs` is a
JSON object of its keyword arguments. `ObservationAdapter` maps what the env returns onto the
policy's observation keys, one frame at a time:

  dict observations   each policy key is read from the entry of the same name, or from the one
                      --obs-map KEY=ENTRY names; a key the observation lacks is looked up in the
                      step's `info` (as the simulation reports object_state); other entries are
                      ignored
  array observations  the whole array is the policy's only low-dimensional key, or its only
                      camera when the policy has no low-dimensional key
  images              uint8 (H, W, 3); channel-first (3, H, W) is transposed, floats in [0, 1]
                      are scaled to 0-255, and another size is resized to the policy's
  low-dim values      flattened to float32; the length must be the policy's

Success is info["success"] or info["is_success"] (gymnasium-robotics' name); an episode ends
when the env terminates or truncates it, after --max-steps, or at success with
--stop-at-success. Actions go to env.step as the float32 vectors the policy produces.
"""

from __future__ import annotations

import importlib
import json
import logging

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies.spec import ObservationError, PolicySpec

log = logging.getLogger(__name__)


def load_factory(target: str):
    """'package.module:factory' -> the callable (attributes may be dotted: module:Class.create)."""
    module_name, sep, attr = str(target).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--env takes package.module:factory, got {target!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r} for --env {target}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module_name} has no {attr!r} (--env {target})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--env {target} is not callable")
    return obj


def make_env(target: str, kwargs: str | dict | None = None):
    """Call the factory `target` with `kwargs` (a dict or a JSON object) and check it made an env."""
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except ValueError as e:
            raise ConfigError(f"--env-kwargs is not valid JSON: {e}") from None
    kwargs = kwargs or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--env-kwargs must be a JSON object, got {type(kwargs).__name__}")
    factory = load_factory(target)
    try:
        env = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"--env {target} rejected its keyword arguments {sorted(kwargs)}: {e}") from None
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise ConfigError(f"--env {target} returned a {type(env).__name__}, not a gymnasium environment "
                          "(it needs reset() and step())")
    return env


def _image(value, shape: tuple[int, ...], key: str) -> np.ndarray:
    from fastdp_ros.data.importers import resize_rgb

    a = np.asarray(value)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.transpose(a, (1, 2, 0))
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ObservationError(f"observation {key!r} should be an (H, W, 3) image, the env gave shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ObservationError(f"observation {key!r} holds non-finite pixels")
        a = np.clip(np.rint(a * 255.0 if a.max(initial=0.0) <= 1.0 else a), 0, 255)
    a = a.astype(np.uint8)
    if a.shape != tuple(shape):
        a = resize_rgb(a, tuple(shape[:2]))
    return a


class ObservationAdapter:
    """The env's (obs, info) -> {policy key: one frame}; see the module docstring."""

    def __init__(self, spec: PolicySpec, obs_map: dict[str, str] | None = None):
        self.spec = spec
        self.obs_map = dict(obs_map or {})
        unknown = sorted(set(self.obs_map) - set(spec.obs_keys))
        if unknown:
            raise ConfigError(f"--obs-map names {unknown}, which the policy does not read; it reads {list(spec.obs_keys)}")

    def _array_key(self) -> str:
        lowdim = list(self.spec.lowdim_dims)
        if len(lowdim) == 1:
            return lowdim[0]
        if not lowdim and len(self.spec.image_keys) == 1:
            return self.spec.image_keys[0]
        raise ObservationError(f"the env returns one array, but the policy reads {list(self.spec.obs_keys)}: "
                               "wrap the env to return a dict observation with those entries")

    def __call__(self, obs, info: dict | None = None) -> dict[str, np.ndarray]:
        info = info or {}
        if not isinstance(obs, dict):
            key = self._array_key()
            obs = {self.obs_map.get(key, key): obs}
        frame = {}
        for key in self.spec.obs_keys:
            entry = self.obs_map.get(key, key)
            if entry in obs:
                value = obs[entry]
            elif entry in info:
                value = info[entry]
            else:
                raise ObservationError(f"the env's observation has no {entry!r} for the policy's key {key!r} (it has "
                                       f"{sorted(obs)}; info has {sorted(info)}): map it with --obs-map {key}=ENTRY")
            if key in self.spec.image_keys:
                frame[key] = _image(value, self.spec.image_shape, entry)
            else:
                v = np.asarray(value, np.float32).reshape(-1)
                if v.size != self.spec.lowdim_dims[key]:
                    raise ObservationError(f"observation {entry!r} has {v.size} values, the policy's {key!r} has "
                                           f"{self.spec.lowdim_dims[key]}")
                frame[key] = v
        return frame


def success_of(info: dict) -> bool:
    """The env's success flag: info["success"], or gymnasium-robotics' info["is_success"]."""
    value = info.get("success", info.get("is_success", False))
    return bool(np.asarray(value).any())
