"""Train/validation split by episode."""

from __future__ import annotations

import hashlib
import logging
import numbers

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)


def _episode_key(seed: int, episode: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{episode}".encode(), digest_size=16).digest()


def split_episodes(
    n_episodes: int, val_ratio: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices ``0..n_episodes-1`` into sorted, disjoint ``(train, val)``.

    The order is a hash of ``(seed, episode)``, so the split is the same on every machine
    and numpy version. ``round(n_episodes * val_ratio)`` episodes go to validation, at least
    one when ``n_episodes >= 2`` and ``val_ratio > 0`` and at most ``n_episodes - 1``.
    """
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, numbers.Integral):
        raise ConfigError(f"n_episodes must be an integer, got {n_episodes!r}")
    n = int(n_episodes)
    if n <= 0:
        raise DatasetError(f"cannot split a dataset with {n} episodes; record some episodes first")
    if isinstance(val_ratio, bool) or not isinstance(val_ratio, numbers.Real) or not (
        0.0 <= float(val_ratio) < 1.0
    ):
        raise ConfigError(f"val_ratio must be in [0, 1), got {val_ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if n == 1 or val_ratio == 0:
        n_val = 0
        if val_ratio > 0:
            logger.warning("only one episode: no validation episodes")
    else:
        n_val = min(max(1, round(n * float(val_ratio))), n - 1)
    order = sorted(range(n), key=lambda ep: _episode_key(int(seed), ep))
    val = np.sort(np.asarray(order[:n_val], dtype=np.int64))
    train = np.sort(np.asarray(order[n_val:], dtype=np.int64))
    return train, val
