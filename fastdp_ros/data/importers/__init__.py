"""Importers: other people's demonstrations -> the zarr layout of docs/dataset.md.

  rosbag2.py    rosbag2 recordings (sqlite3 or mcap, read with rosbags: no ROS needed)
  lerobot.py    LeRobot v3 datasets on disk (parquet + mp4)
  robomimic.py  robomimic HDF5 files

Every importer writes through `staged_dataset`: the episodes go into a hidden folder next to
the output, which is renamed into place only once everything was written, so an error in the
middle (a truncated bag, a missing topic) leaves no half-written dataset that looks valid.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastdp_ros.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

#: the pip extra that brings the importers' readers (rosbags, h5py, pyarrow, av)
DATA_EXTRA = "pip install 'fastdp_ros[data]'"


def require_module(name: str, what: str):
    """Import `name` or raise a one-line ConfigError telling how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"{what} needs the Python package {name.split('.')[0]!r}: {DATA_EXTRA}") from None


def _check_output(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise DatasetError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    from fastdp_ros.data.replay_buffer import _is_zarr_store

    if not (_is_zarr_store(out) or (out.is_dir() and not any(out.iterdir()))):
        raise DatasetError(f"refusing to overwrite {out}: it exists but is not a zarr dataset")


@contextmanager
def staged_dataset(out: str | os.PathLike, attrs: Mapping[str, Any], overwrite: bool = False) -> Iterator[Any]:
    """A new ReplayBuffer written in a hidden sibling folder of `out` and moved to `out` when the
    `with` block ends without an error; on an error the folder is removed and `out` untouched."""
    from fastdp_ros.data import ReplayBuffer

    out = Path(out)
    _check_output(out, overwrite)
    stage = out.parent / f".{out.name}.importing-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    buffer = ReplayBuffer.create(stage, attrs=attrs)
    try:
        yield buffer
        if buffer.n_episodes == 0:
            raise DatasetError("no episode was imported")
        buffer.validate()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("wrote %d episodes (%d steps) to %s", buffer.n_episodes, buffer.n_steps, out)


def parse_mapping(items, what: str = "--map") -> dict[str, str]:
    """['SRC=DST', ...] -> {SRC: DST}; a malformed item is a ConfigError."""
    mapping = {}
    for item in items or ():
        src, sep, dst = str(item).partition("=")
        if not sep or not src.strip() or not dst.strip() or "/" in dst:
            raise ConfigError(f"{what} takes NAME=NAME (the second without '/'), got {item!r}")
        mapping[src.strip()] = dst.strip()
    return mapping


def resize_rgb(frame, size: tuple[int, int]):
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8 with Pillow's area-averaging filter."""
    import numpy as np
    from PIL import Image

    h, w = size
    if frame.shape[:2] == (h, w):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BOX), dtype=np.uint8)


def parse_image_size(text: str | int) -> tuple[int, int]:
    """'96' -> (96, 96); '120x160' -> (120, 160) (height x width)."""
    parts = str(text).lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"--image-size takes N or HxW (positive pixels), got {text!r}")
    return size  # type: ignore[return-value]
