"""Cheap content fingerprint of a dataset, for model provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .replay_buffer import ReplayBuffer

FINGERPRINT_ROWS = 8


def dataset_fingerprint(buffer: ReplayBuffer | str | Path, n_rows: int = FINGERPRINT_ROWS) -> str:
    """Hex sha256 over the dataset's structure and a few sampled rows.

    Covers episode ends, keys with per-step shapes and dtypes, per-episode metadata, the
    attributes, and ``n_rows`` rows (evenly spaced, first and last included) of every key.
    It reads a handful of chunks, not the dataset, so it cannot see every edit, but any
    change of episodes, keys, shapes, dtypes or attributes changes it. It does not depend
    on chunking, compression or the zarr version.
    """
    if not isinstance(buffer, ReplayBuffer):
        buffer = ReplayBuffer.open(buffer, mode="r")
    keys = buffer.keys
    arrays = {k: buffer[k] for k in keys}
    header = {
        "episode_ends": buffer.episode_ends.tolist(),
        "keys": {
            k: {"shape": list(arrays[k].shape[1:]), "dtype": np.dtype(arrays[k].dtype).str}
            for k in keys
        },
        "episode_meta": {
            name: np.asarray(buffer.episode_meta(name)).tolist() for name in buffer.meta_keys
        },
        "attrs": buffer.attrs,
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    if buffer.n_steps > 0 and n_rows > 0:
        rows = np.unique(np.linspace(0, buffer.n_steps - 1, n_rows).round().astype(np.int64))
        for k in keys:
            for r in rows:
                digest.update(np.ascontiguousarray(arrays[k][int(r)]).tobytes())
    return digest.hexdigest()
