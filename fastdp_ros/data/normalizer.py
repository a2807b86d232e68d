"""Per-key affine normalisation fitted on a dataset, serialisable into a model's config.json.

Every mode is an affine map ``y = x * scale + offset`` (per dimension, broadcast over any
leading batch/time axes), so a policy can bake the same map into a torch graph with
:meth:`Normalizer.scale_offset`:

- ``"limits"``: per-dimension min/max -> [-1, 1]; a dimension whose range is below ``eps``
  (constant) gets ``scale = 1, offset = -min`` and maps to 0;
- ``"gaussian"``: per-dimension mean/std -> zero mean, unit std; ``std < eps`` gets
  ``scale = 1, offset = -mean``;
- ``"image"``: uint8 [0, 255] -> [-1, 1], no statistics (``unnormalize`` returns floats in
  [0, 255]);
- ``"identity"``: ``scale = 1, offset = 0``.

``normalize`` returns float64 for float64 input and float32 otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

MODES = ("limits", "gaussian", "image", "identity")
_STAT_NAMES = {"limits": ("min", "max"), "gaussian": ("mean", "std"), "image": (), "identity": ()}
_FORMAT = "fastdp_normalizer"
_VERSION = 1
_FIT_CHUNK_ROWS = 65536


def _running_stats(array: Any) -> dict[str, np.ndarray]:
    """min, max, mean, population std over axis 0, reading ``array`` in chunks of rows (so a
    zarr array is never loaded whole)."""
    n_total = int(np.shape(array)[0]) if not hasattr(array, "shape") else int(array.shape[0])
    count = 0
    mean = m2 = lo = hi = None
    for start in range(0, n_total, _FIT_CHUNK_ROWS):
        block = np.asarray(array[start:start + _FIT_CHUNK_ROWS], dtype=np.float64)
        n = len(block)
        if not np.all(np.isfinite(block)):
            raise ValueError("contains NaN or infinite values")
        b_mean = block.mean(axis=0)
        b_m2 = ((block - b_mean) ** 2).sum(axis=0)
        if count == 0:
            mean, m2 = b_mean, b_m2
            lo, hi = block.min(axis=0), block.max(axis=0)
        else:
            delta = b_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + b_m2 + delta**2 * (count * n / total)
            lo = np.minimum(lo, block.min(axis=0))
            hi = np.maximum(hi, block.max(axis=0))
        count += n
    return {"min": lo, "max": hi, "mean": mean, "std": np.sqrt(m2 / count)}


def _affine(
    mode: str, stats: Mapping[str, np.ndarray], eps: float
) -> tuple[np.ndarray, np.ndarray]:
    if mode == "limits":
        lo, hi = stats["min"], stats["max"]
        span = hi - lo
        const = span < eps
        scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, span))
        offset = np.where(const, -lo, -1.0 - lo * scale)
        return scale, offset
    if mode == "gaussian":
        mean, std = stats["mean"], stats["std"]
        const = std < eps
        scale = np.where(const, 1.0, 1.0 / np.where(const, 1.0, std))
        return scale, -mean * scale
    if mode == "image":
        return np.asarray(2.0 / 255.0), np.asarray(-1.0)
    return np.asarray(1.0), np.asarray(0.0)


class Normalizer:
    """Per-key affine normalisation (see the module docstring for the modes)."""

    def __init__(self, eps: float = 1e-4) -> None:
        self.eps = float(eps)
        self._modes: dict[str, str] = {}
        self._stats: dict[str, dict[str, np.ndarray]] = {}
        self._shapes: dict[str, tuple[int, ...] | None] = {}
        self._affine: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(
        cls, data: Mapping[str, Any], modes: Mapping[str, str], eps: float = 1e-4
    ) -> Normalizer:
        """Fit statistics for every key of ``modes`` on ``data[key]`` (rows along axis 0).

        ``data`` may be a dict of numpy arrays or a ReplayBuffer (zarr arrays are read in
        chunks). "image" and "identity" keys need no data.
        """
        norm = cls(eps=eps)
        for key, mode in modes.items():
            norm._check_mode(key, mode)
            if mode in ("image", "identity"):
                norm._set(key, mode, {}, None)
                continue
            if key not in data:
                raise DatasetError(
                    f"cannot fit the normalizer: no data for key {key!r} (mode {mode!r})"
                )
            array = data[key]
            shape = tuple(getattr(array, "shape", np.shape(array)))
            if len(shape) == 0 or shape[0] == 0:
                raise DatasetError(
                    f"cannot fit the normalizer for {key!r}: need at least one row, got shape "
                    f"{shape}"
                )
            try:
                stats = _running_stats(array)
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"cannot fit the normalizer for {key!r}: data {exc}") from None
            wanted = {name: stats[name] for name in _STAT_NAMES[mode]}
            norm._set(key, mode, wanted, shape[1:])
        return norm

    @staticmethod
    def _check_mode(key: str, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(
                f"unknown normalizer mode {mode!r} for key {key!r}; use one of {MODES}"
            )

    def _set(
        self, key: str, mode: str, stats: dict[str, np.ndarray], shape: tuple[int, ...] | None
    ) -> None:
        stats = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
        self._modes[key] = mode
        self._stats[key] = stats
        self._shapes[key] = None if shape is None else tuple(int(s) for s in shape)
        self._affine[key] = _affine(mode, stats, self.eps)

    # ------------------------------------------------------------------ queries
    @property
    def keys(self) -> list[str]:
        return list(self._modes)

    def __contains__(self, key: object) -> bool:
        return key in self._modes

    def _require(self, key: str) -> None:
        if key not in self._modes:
            raise ConfigError(
                f"the normalizer has no statistics for key {key!r}; it knows {self.keys}"
            )

    def mode(self, key: str) -> str:
        self._require(key)
        return self._modes[key]

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """The fitted statistics of ``key`` (copies): min/max or mean/std, or empty."""
        self._require(key)
        return {k: v.copy() for k, v in self._stats[key].items()}

    def scale_offset(self, key: str, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, offset)`` with ``normalize(key, x) == x * scale + offset``."""
        self._require(key)
        scale, offset = self._affine[key]
        return scale.astype(dtype), offset.astype(dtype)

    # ------------------------------------------------------------------ maps
    def _prepare(self, key: str, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._require(key)
        x = np.asarray(x)
        shape = self._shapes[key]
        if shape and (x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape):
            raise DatasetError(
                f"normalizer key {key!r} expects arrays ending in shape {shape}, got {x.shape}"
            )
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        scale, offset = self._affine[key]
        return x.astype(dtype, copy=False), scale.astype(dtype), offset.astype(dtype)

    def normalize(self, key: str, x: Any) -> np.ndarray:
        x, scale, offset = self._prepare(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: Any) -> np.ndarray:
        x, scale, offset = self._prepare(key, x)
        return (x - offset) / scale

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists and floats) that :meth:`from_dict` reads back."""
        keys = {}
        for key, mode in self._modes.items():
            entry: dict[str, Any] = {"mode": mode}
            shape = self._shapes[key]
            entry["shape"] = None if shape is None else list(shape)
            for name, value in self._stats[key].items():
                entry[name] = value.tolist()
            keys[key] = entry
        return {"format": _FORMAT, "version": _VERSION, "eps": self.eps, "keys": keys}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        if not isinstance(d, Mapping) or not isinstance(d.get("keys"), Mapping):
            raise ConfigError("normalizer statistics must be a dict with a 'keys' entry")
        if d.get("version", _VERSION) != _VERSION:
            raise ConfigError(
                f"normalizer statistics version {d.get('version')!r} is not supported "
                f"(expected {_VERSION})"
            )
        eps = d.get("eps", 1e-4)
        if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ConfigError(f"normalizer eps must be a non-negative number, got {eps!r}")
        norm = cls(eps=eps)
        for key, entry in d["keys"].items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"normalizer entry for {key!r} must be a dict")
            mode = entry.get("mode")
            norm._check_mode(key, mode)
            shape = entry.get("shape")
            if shape is not None:
                if not isinstance(shape, list) or not all(
                    isinstance(s, int) and s >= 0 for s in shape
                ):
                    raise ConfigError(f"normalizer shape for {key!r} must be a list of ints")
                shape = tuple(shape)
            stats = {}
            for name in _STAT_NAMES[mode]:
                if name not in entry:
                    raise ConfigError(f"normalizer entry for {key!r} ({mode}) lacks {name!r}")
                try:
                    value = np.asarray(entry[name], dtype=np.float64)
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"normalizer {name!r} for {key!r} must be numbers"
                    ) from None
                if shape is not None and value.shape != shape:
                    raise ConfigError(
                        f"normalizer {name!r} for {key!r} has shape {value.shape}, expected {shape}"
                    )
                if not np.all(np.isfinite(value)):
                    raise ConfigError(f"normalizer {name!r} for {key!r} is not finite")
                stats[name] = value
            norm._set(key, mode, stats, shape)
        return norm

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Normalizer:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"normalizer statistics are not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"Normalizer({self._modes})"
