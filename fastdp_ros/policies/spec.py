"""What a policy consumes and produces, independent of its method.

`PolicySpec` travels in every model's config.json; the runtime, the engines and the nodes
size their buffers from it, and `check_observation` is the one place observations are
validated before they reach a network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from fastdp_ros.errors import ConfigError, FastDPError


class ObservationError(FastDPError, ValueError):
    """An observation that does not match the policy's spec (keys, shapes, dtype, finiteness)."""


@dataclass(frozen=True)
class PolicySpec:
    """Observation keys and shapes, action layout and timing of a policy.

    Images are uint8 (H, W, 3) per frame; low-dimensional keys are float vectors. An
    observation given to `act` holds the last `n_obs_steps` frames of every key, oldest first.
    """

    image_keys: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C), shared by all cameras
    lowdim_dims: dict[str, int]
    action_dim: int
    dt: float  # seconds between consecutive actions of a chunk (the dataset's recording period)
    horizon: int  # actions predicted per chunk
    n_obs_steps: int
    n_action_steps: int  # actions executed per chunk when re-planning at the chunk's pace
    action_key: str = "action"
    robot: str = "panda"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_obs_steps < 1 or self.horizon < 1 or not 1 <= self.n_action_steps <= self.horizon:
            raise ConfigError(
                f"invalid spec: need n_obs_steps >= 1 and 1 <= n_action_steps <= horizon, got "
                f"n_obs_steps={self.n_obs_steps}, n_action_steps={self.n_action_steps}, horizon={self.horizon}"
            )
        if self.dt <= 0:
            raise ConfigError(f"invalid spec: dt must be > 0, got {self.dt}")

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return tuple(self.image_keys) + tuple(self.lowdim_dims)

    def obs_shape(self, key: str) -> tuple[int, ...]:
        """Shape of one frame of `key`."""
        if key in self.image_keys:
            return tuple(self.image_shape)
        return (self.lowdim_dims[key],)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_keys"] = list(self.image_keys)
        d["image_shape"] = list(self.image_shape)
        # (key, dim) pairs: the order is the network's input order and must survive any JSON writer
        d["lowdim_dims"] = [[k, int(v)] for k, v in self.lowdim_dims.items()]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PolicySpec":
        try:
            return cls(
                image_keys=tuple(d["image_keys"]),
                image_shape=tuple(int(v) for v in d["image_shape"]),
                lowdim_dims={str(k): int(v) for k, v in _pairs(d["lowdim_dims"])},
                action_dim=int(d["action_dim"]),
                dt=float(d["dt"]),
                horizon=int(d["horizon"]),
                n_obs_steps=int(d["n_obs_steps"]),
                n_action_steps=int(d["n_action_steps"]),
                action_key=str(d.get("action_key", "action")),
                robot=str(d.get("robot", "panda")),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"malformed policy spec ({type(e).__name__}: {e})") from None


def _pairs(value):
    if isinstance(value, dict):
        raise ValueError("lowdim_dims must be a list of [key, dim] pairs (a JSON object loses its order)")
    return [(k, v) for k, v in value]


def check_observation(spec: PolicySpec, obs: dict) -> dict[str, np.ndarray]:
    """Validate one observation (n_obs_steps frames per key, no batch dim) against `spec`.

    Returns the arrays as numpy (images uint8, low-dim float32). Raises ObservationError with a
    message naming the key and what is wrong: missing key, wrong shape, wrong dtype, non-finite.
    """
    missing = [k for k in spec.obs_keys if k not in obs]
    if missing:
        raise ObservationError(
            f"observation is missing {missing}; the policy needs {list(spec.obs_keys)}"
        )
    out = {}
    for key in spec.obs_keys:
        x = np.asarray(obs[key])
        want = (spec.n_obs_steps, *spec.obs_shape(key))
        if x.shape != want:
            raise ObservationError(f"observation {key!r} has shape {x.shape}, expected {want}")
        if key in spec.image_keys:
            if x.dtype != np.uint8:
                raise ObservationError(f"image {key!r} has dtype {x.dtype}, expected uint8 RGB")
        else:
            x = x.astype(np.float32, copy=False)
            if not np.all(np.isfinite(x)):
                raise ObservationError(f"observation {key!r} contains NaN or inf")
        out[key] = x
    return out
