"""Episode store on disk: zarr in the diffusion_policy ReplayBuffer layout.

Layout (zarr format 2, a directory store)::

    <path>/
        .zattrs                 dataset attributes (task, robot, cameras, dt, image_size, ...)
        data/<key>              one array per key, episodes concatenated along axis 0
        meta/episode_ends       int64, cumulative end row of every episode
        meta/episode_<name>     one row per episode (seed, success, ...), optional

Episode ``i`` covers rows ``episode_ends[i-1]:episode_ends[i]`` (``0:episode_ends[0]`` for the
first). Appending an episode resizes every array and writes only the new rows (plus the last
partially filled chunk), so building a dataset episode by episode costs time proportional to
the data written, not to the size of the store. ``meta/episode_ends`` is written last: a
crash in the middle of :meth:`ReplayBuffer.add_episode` leaves arrays longer than the episode
ends, which :meth:`ReplayBuffer.validate` reports.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

from . import _zarr_compat as zc

logger = logging.getLogger(__name__)

META_PREFIX = "episode_"
EPISODE_ENDS = "episode_ends"

# Chunking: image-like arrays (per-step rank >= 2) get whole frames, a few per chunk, about
# IMAGE_CHUNK_BYTES at most; low-dimensional arrays get long runs of rows.
IMAGE_CHUNK_BYTES = 1 << 20
IMAGE_MAX_FRAMES_PER_CHUNK = 8
LOWDIM_CHUNK_BYTES = 256 << 10
LOWDIM_MIN_ROWS, LOWDIM_MAX_ROWS = 256, 16384
META_CHUNK_ROWS = 1024

_NUMERIC_KINDS = "biuf"
_MODES = ("r", "r+", "a")


def chunks_for(row_shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Chunk shape for an array whose rows (time steps) have shape ``row_shape``."""
    row_bytes = max(1, math.prod(row_shape) * np.dtype(dtype).itemsize)
    if len(row_shape) >= 2:
        n = min(IMAGE_MAX_FRAMES_PER_CHUNK, max(1, IMAGE_CHUNK_BYTES // row_bytes))
    else:
        n = min(LOWDIM_MAX_ROWS, max(LOWDIM_MIN_ROWS, LOWDIM_CHUNK_BYTES // row_bytes))
    return (int(n),) + tuple(int(s) for s in row_shape)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _to_json_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise DatasetError(f"dataset attrs must be a dict, got {type(attrs).__name__}")
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise DatasetError(f"dataset attribute names must be strings, got {key!r}")
        try:
            out[key] = json.loads(json.dumps(value, default=_json_default, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"dataset attribute {key!r} is not JSON-serialisable ({exc}); "
                "use numbers, strings, booleans, lists and dicts"
            ) from None
    return out


def _reason(exc: BaseException) -> str:
    """The most readable cause of ``exc``: the first OS error in its chain, if any (zarr 2
    reports a failed write as ``KeyError('.zgroup')`` caused by the PermissionError)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in (".zgroup", "zarr.json"))


def _meta_name(name: str) -> str:
    """Full array name under meta/ for a per-episode metadata name ("seed" -> "episode_seed")."""
    if not isinstance(name, str) or not name or "/" in name:
        raise DatasetError(f"invalid episode metadata name {name!r}")
    full = name if name.startswith(META_PREFIX) else META_PREFIX + name
    if full == EPISODE_ENDS:
        raise DatasetError("'episode_ends' is reserved; choose another episode metadata name")
    return full


class ReplayBuffer:
    """A dataset of episodes in a zarr directory store (diffusion_policy ReplayBuffer layout).

    Make one with :meth:`create` or :meth:`open`; the constructor is internal.
    """

    def __init__(self, root: Any, path: Path, writable: bool) -> None:
        self._root = root
        self._path = path
        self._writable = writable
        self._episode_ends = np.zeros(0, dtype=np.int64)
        self._keys: list[str] = []
        self._meta_names: list[str] = []  # full names under meta/, episode_ends excluded
        self._arrays: dict[str, Any] = {}
        self._reload()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls, path: str | Path, attrs: Mapping[str, Any] | None = None, overwrite: bool = False
    ) -> ReplayBuffer:
        """Create an empty dataset at ``path`` with root attributes ``attrs`` (JSON-able).

        An existing ``path`` is an error unless ``overwrite`` is true; even then only an
        existing zarr store or an empty directory is replaced, never other files.
        """
        path = Path(path)
        json_attrs = _to_json_attrs(attrs)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise DatasetError(
                    f"dataset path {path} already exists; pass overwrite=True to replace it "
                    "or choose another path"
                )
            is_empty_dir = path.is_dir() and not any(path.iterdir())
            if not (_is_zarr_store(path) or is_empty_dir):
                raise DatasetError(
                    f"refusing to overwrite {path}: it exists but is not a zarr dataset"
                )
            try:
                shutil.rmtree(path)
            except OSError as exc:
                raise DatasetError(f"cannot remove existing dataset at {path}: {exc}") from None
        try:
            # make the directory ourselves: OS errors (permission, parent is a file, read-only
            # file system) then surface here rather than wrapped deep inside zarr
            path.mkdir(parents=True)
        except OSError as exc:
            raise DatasetError(f"cannot create dataset at {path}: {_reason(exc)}") from None
        try:
            root = zc.open_group(str(path), mode="w")
            root.create_group("data")
            meta = root.create_group("meta")
            zc.create_array(meta, EPISODE_ENDS, (0,), (META_CHUNK_ROWS,), np.dtype(np.int64))
            if json_attrs:
                root.attrs.update(json_attrs)
        except (OSError, ValueError, KeyError) as exc:
            shutil.rmtree(path, ignore_errors=True)  # do not leave a half-made store behind
            raise DatasetError(f"cannot create dataset at {path}: {_reason(exc)}") from None
        logger.info("created dataset %s", path)
        return cls(root, path, writable=True)

    @classmethod
    def open(
        cls, path: str | Path, mode: str = "r", required_keys: Iterable[str] | None = None
    ) -> ReplayBuffer:
        """Open an existing dataset; ``mode`` "r" (read only) or "r+"/"a" (append).

        The store is validated (see :meth:`validate`) before it is returned.
        """
        if mode not in _MODES:
            raise ConfigError(f"unknown dataset open mode {mode!r}; use one of {_MODES}")
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"no dataset at {path}: the path does not exist")
        if not _is_zarr_store(path):
            raise DatasetError(
                f"{path} is not a zarr dataset (no .zgroup or zarr.json found); expected a store "
                "written by ReplayBuffer.create or `fastdp collect`"
            )
        if zc.ZARR_MAJOR < 3 and not (path / ".zgroup").is_file():
            raise DatasetError(
                f"{path} is in zarr format 3, which needs zarr >= 3 (Python >= 3.11); "
                "datasets written by ReplayBuffer use format 2 and open everywhere"
            )
        try:
            root = zc.open_group(str(path), mode="r" if mode == "r" else "r+")
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"cannot open dataset {path}: {_reason(exc)}") from None
        buffer = cls(root, path, writable=mode != "r")
        buffer.validate(required_keys)
        return buffer

    # ------------------------------------------------------------------ structure
    def _reload(self) -> None:
        root = self._root
        groups = zc.group_keys(root)
        if "data" not in groups or "meta" not in groups:
            raise DatasetError(
                f"{self._path} is a zarr store but not a ReplayBuffer dataset: expected groups "
                f"'data' and 'meta', found {groups}"
            )
        meta_arrays = zc.array_keys(root["meta"])
        if EPISODE_ENDS not in meta_arrays:
            raise DatasetError(f"{self._path} has no meta/episode_ends array")
        ends = np.asarray(root["meta"][EPISODE_ENDS][:])
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            raise DatasetError(
                f"{self._path}: meta/episode_ends must be a 1-D integer array, got shape "
                f"{ends.shape} dtype {ends.dtype}"
            )
        self._episode_ends = ends.astype(np.int64)
        self._keys = zc.array_keys(root["data"])
        self._meta_names = [name for name in meta_arrays if name != EPISODE_ENDS]
        self._arrays = {}

    def validate(self, required_keys: Iterable[str] | None = None) -> None:
        """Check the store's consistency; raise one DatasetError listing every problem.

        Checks: episode ends strictly increasing and positive, every ``data/*`` array as long
        as the last episode end, every per-episode ``meta/*`` array one row per episode, and
        every key in ``required_keys`` present.
        """
        self._reload()
        ends = self._episode_ends
        problems = []
        if len(ends):
            steps = np.diff(ends, prepend=0)
            bad = np.flatnonzero(steps <= 0)
            if len(bad):
                i = int(bad[0])
                prev = int(ends[i - 1]) if i > 0 else 0
                problems.append(
                    "meta/episode_ends must be strictly increasing and positive: episode "
                    f"{i} ends at {int(ends[i])} after {prev}"
                )
        n_steps = int(ends[-1]) if len(ends) else 0
        for key in self._keys:
            shape = self._root["data"][key].shape
            if len(shape) == 0:
                problems.append(f"data/{key} is a scalar; every data array needs a time axis")
            elif shape[0] != n_steps:
                problems.append(
                    f"data/{key} has {shape[0]} rows but meta/episode_ends says the dataset has "
                    f"{n_steps} steps"
                )
        for name in self._meta_names:
            shape = self._root["meta"][name].shape
            if len(shape) == 0 or shape[0] != len(ends):
                rows = shape[0] if shape else "no"
                problems.append(
                    f"meta/{name} has {rows} rows but the dataset has {len(ends)} episodes"
                )
        if required_keys is not None:
            required = [required_keys] if isinstance(required_keys, str) else list(required_keys)
            missing = [k for k in required if k not in self._keys]
            if missing:
                problems.append(
                    f"missing required key(s) {missing}; the dataset has {self._keys}"
                )
        if problems:
            raise DatasetError(
                f"dataset {self._path} is inconsistent:\n  - " + "\n  - ".join(problems)
            )

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        return self._path

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def n_episodes(self) -> int:
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._episode_ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._episode_ends, prepend=0)

    @property
    def keys(self) -> list[str]:
        """Names of the ``data/*`` arrays, sorted."""
        return list(self._keys)

    @property
    def meta_keys(self) -> list[str]:
        """Per-episode metadata arrays, named as under ``meta/`` ("episode_seed", ...), sorted;
        ``meta/episode_ends`` is not among them."""
        return list(self._meta_names)

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the dataset attributes."""
        return json.loads(json.dumps(dict(self._root.attrs)))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({str(self._path)!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={self._keys})"
        )

    # ------------------------------------------------------------------ reading
    def _array(self, key: str) -> Any:
        if key not in self._keys:
            raise DatasetError(
                f"dataset {self._path} has no key {key!r}; available keys: {self._keys}"
            )
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._arrays[key] = self._root["data"][key]
        return arr

    def __getitem__(self, key: str) -> Any:
        """The zarr array ``data/<key>`` (slice it to read numpy)."""
        return self._array(key)

    def _episode_index(self, i: int) -> int:
        n = self.n_episodes
        idx = int(i)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes")
        return idx

    def episode_slice(self, i: int) -> slice:
        """Rows of episode ``i`` (negative indices count from the end)."""
        idx = self._episode_index(i)
        start = int(self._episode_ends[idx - 1]) if idx > 0 else 0
        return slice(start, int(self._episode_ends[idx]))

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as a dict of numpy arrays (all keys unless ``keys`` is given)."""
        sl = self.episode_slice(i)
        names = self._keys if keys is None else list(keys)
        return {k: np.asarray(self._array(k)[sl]) for k in names}

    def load_to_memory(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Read whole ``data/*`` arrays into numpy (all keys unless ``keys`` is given)."""
        names = self._keys if keys is None else list(keys)
        return {k: np.asarray(self._array(k)[:]) for k in names}

    def episode_meta(self, name: str) -> np.ndarray:
        """Per-episode metadata ``name`` ("episode_seed", or just "seed"), one row per
        episode."""
        full = _meta_name(name)
        if full not in self._meta_names:
            raise DatasetError(
                f"dataset {self._path} has no episode metadata {name!r}; available: "
                f"{self.meta_keys}"
            )
        return np.asarray(self._root["meta"][full][:])

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self._writable:
            raise DatasetError(
                f"dataset {self._path} was opened read-only; open it with mode='r+' to write"
            )

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or replace dataset attributes."""
        self._require_writable()
        self._root.attrs.update(_to_json_attrs(attrs))

    def _check_episode(
        self, data: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(data, Mapping) or not data:
            raise DatasetError("add_episode needs a non-empty dict mapping keys to arrays")
        arrays: dict[str, np.ndarray] = {}
        for key, value in data.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise DatasetError(f"invalid data key {key!r}: use a non-empty name without '/'")
            arr = np.asarray(value)
            if arr.ndim == 0:
                raise DatasetError(f"episode array {key!r} is a scalar; it needs a time axis")
            if arr.dtype.kind not in _NUMERIC_KINDS:
                raise DatasetError(
                    f"episode array {key!r} has dtype {arr.dtype}; only numeric and boolean "
                    "arrays can be stored"
                )
            arrays[key] = arr
        lengths = {k: len(a) for k, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise DatasetError(
                f"all arrays of an episode must have the same length; got {lengths}"
            )
        n = next(iter(lengths.values()))
        if n == 0:
            raise DatasetError("cannot add an empty episode (length 0)")
        if self._keys:
            missing = sorted(set(self._keys) - set(arrays))
            extra = sorted(set(arrays) - set(self._keys))
            if missing or extra:
                raise DatasetError(
                    f"episode keys must match the dataset's {self._keys}: missing {missing}, "
                    f"unexpected {extra}"
                )
            for key, arr in arrays.items():
                target = self._array(key)
                if tuple(arr.shape[1:]) != tuple(target.shape[1:]):
                    raise DatasetError(
                        f"episode array {key!r} has per-step shape {arr.shape[1:]} but the "
                        f"dataset stores {tuple(target.shape[1:])}"
                    )
                if not np.can_cast(arr.dtype, target.dtype, casting="same_kind"):
                    raise DatasetError(
                        f"episode array {key!r} has dtype {arr.dtype}, which cannot be stored "
                        f"in the dataset's {target.dtype}"
                    )
        return arrays, n

    def _check_meta(self, episode_meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {}
        for name, value in episode_meta.items():
            full = _meta_name(name)
            if full in values:
                raise DatasetError(f"episode metadata {name!r} given twice")
            arr = np.asarray(value)
            if arr.dtype.kind not in _NUMERIC_KINDS:
                raise DatasetError(
                    f"episode metadata {name!r} has dtype {arr.dtype}; only numbers, booleans "
                    "and numeric arrays can be stored (put strings in the dataset attrs)"
                )
            values[full] = arr
        if self.n_episodes > 0 or self._meta_names:
            missing = sorted(set(self._meta_names) - set(values))
            extra = sorted(set(values) - set(self._meta_names))
            if missing or extra:
                raise DatasetError(
                    "episode metadata must match earlier episodes' "
                    f"{self.meta_keys}: missing {missing}, "
                    f"unexpected {extra}"
                )
            for full, arr in values.items():
                target = self._root["meta"][full]
                if tuple(arr.shape) != tuple(target.shape[1:]):
                    raise DatasetError(
                        f"episode metadata {full!r} has shape {arr.shape} "
                        f"but earlier episodes have {tuple(target.shape[1:])}"
                    )
                if not np.can_cast(arr.dtype, target.dtype, casting="same_kind"):
                    raise DatasetError(
                        f"episode metadata {full!r} has dtype {arr.dtype}, "
                        f"which cannot be stored in {target.dtype}"
                    )
        return values

    def add_episode(self, data: Mapping[str, Any], **episode_meta: Any) -> int:
        """Append one episode; return its index.

        ``data`` maps every key (the same keys as earlier episodes) to an array whose first
        axis is time, all of one length T > 0. Keyword arguments are per-episode metadata
        stored under ``meta/episode_<name>`` (``episode_seed=3`` and ``seed=3`` both write
        ``meta/episode_seed``); the first episode fixes their names, shapes and dtypes.
        """
        self._require_writable()
        arrays, n = self._check_episode(data)
        meta_values = self._check_meta(episode_meta)
        start = self.n_steps
        episode = self.n_episodes
        data_group = self._root["data"]
        meta_group = self._root["meta"]
        for key, arr in arrays.items():
            if key not in self._keys:
                row_shape = tuple(arr.shape[1:])
                self._arrays[key] = zc.create_array(
                    data_group, key, (0,) + row_shape, chunks_for(row_shape, arr.dtype), arr.dtype
                )
                self._keys = sorted(self._keys + [key])
            target = self._array(key)
            target.resize((start + n,) + tuple(target.shape[1:]))
            target[start:start + n] = arr
        for full, value in meta_values.items():
            if full not in self._meta_names:
                zc.create_array(
                    meta_group, full, (0,) + value.shape, (META_CHUNK_ROWS,) + value.shape,
                    value.dtype,
                )
                self._meta_names = sorted(self._meta_names + [full])
            target = meta_group[full]
            target.resize((episode + 1,) + tuple(target.shape[1:]))
            target[episode] = value
        ends = meta_group[EPISODE_ENDS]
        ends.resize((episode + 1,))
        ends[episode] = start + n
        self._episode_ends = np.append(self._episode_ends, np.int64(start + n))
        return episode

    def set_episode_meta(self, name: str, values: Any) -> None:
        """Write (or replace) per-episode metadata ``name`` for all episodes at once."""
        self._require_writable()
        full = _meta_name(name)
        arr = np.asarray(values)
        if arr.ndim == 0 or len(arr) != self.n_episodes:
            raise DatasetError(
                f"episode metadata {name!r} needs one row per episode ({self.n_episodes}), got "
                f"shape {arr.shape}"
            )
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise DatasetError(f"episode metadata {name!r} has unsupported dtype {arr.dtype}")
        meta_group = self._root["meta"]
        if full in self._meta_names:
            del meta_group[full]
        target = zc.create_array(
            meta_group, full, arr.shape, (META_CHUNK_ROWS,) + arr.shape[1:], arr.dtype
        )
        target[:] = arr
        self._meta_names = sorted(set(self._meta_names) | {full})
