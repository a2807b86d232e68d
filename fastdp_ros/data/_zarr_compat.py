"""The one place that knows which zarr major version is installed.

zarr 3 needs Python >= 3.11, so Python 3.10 (ROS 2 Humble) gets zarr 2.18. Both write the
same on-disk format here: zarr format 2 (``.zgroup``/``.zarray``/``.zattrs``), which is what
diffusion_policy's ReplayBuffer reads and writes, so a dataset made on one machine opens on
the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

ZARR_MAJOR = int(zarr.__version__.split(".")[0])


def open_group(path: str, mode: str) -> Any:
    """Open (or, with mode "w"/"w-", create) a directory-store group in zarr format 2."""
    if ZARR_MAJOR >= 3:
        if mode in ("w", "w-"):
            return zarr.open_group(path, mode=mode, zarr_format=2)
        return zarr.open_group(path, mode=mode)
    return zarr.open_group(path, mode=mode)


def create_array(group: Any, name: str, shape: tuple, chunks: tuple, dtype: np.dtype) -> Any:
    """Create an empty (zero-filled) array ``name`` in ``group``."""
    if ZARR_MAJOR >= 3:
        return group.create_array(name=name, shape=shape, chunks=chunks, dtype=dtype)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype)


def array_keys(group: Any) -> list[str]:
    return sorted(group.array_keys())


def group_keys(group: Any) -> list[str]:
    return sorted(group.group_keys())
