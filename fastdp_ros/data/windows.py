"""Training windows over episodes, with diffusion_policy's edge padding.

A window is ``horizon`` consecutive steps of one episode starting at frame ``s``; ``s`` runs
from ``-pad_before`` to ``L - horizon + pad_after`` for an episode of length ``L``, so an
episode gives ``max(0, L - horizon + pad_before + pad_after + 1)`` windows. Steps before the
episode repeat its first frame and steps after it repeat its last frame; a window never reads
a neighbouring episode.

The observation of a window is its first ``n_obs_steps`` steps, whose last one is the
window's *current frame* ``s + n_obs_steps - 1``; the action is the whole ``horizon``. With
the defaults ``pad_before = n_obs_steps - 1`` and ``pad_after = n_action_steps - 1`` every
current frame from 0 to ``L - horizon + n_action_steps + n_obs_steps - 2`` appears once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

from .replay_buffer import ReplayBuffer

logger = logging.getLogger(__name__)


def _check_episode_ends(episode_ends: Any) -> np.ndarray:
    ends = np.asarray(episode_ends)
    if ends.ndim != 1 or (len(ends) and ends.dtype.kind not in "iu"):
        raise DatasetError(
            f"episode_ends must be a 1-D integer array, got {ends.shape} {ends.dtype}"
        )
    ends = ends.astype(np.int64)
    if len(ends) and np.any(np.diff(ends, prepend=0) <= 0):
        raise DatasetError("episode_ends must be strictly increasing and positive")
    return ends


def _check_episodes(episodes: Iterable[int] | None, n_episodes: int) -> np.ndarray:
    if episodes is None:
        return np.arange(n_episodes, dtype=np.int64)
    idx = np.asarray(list(episodes) if not isinstance(episodes, np.ndarray) else episodes)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise DatasetError(f"episodes must be a list of episode indices, got {episodes!r}")
    bad = idx[(idx < 0) | (idx >= n_episodes)]
    if len(bad):
        raise DatasetError(
            f"episode indices {bad.tolist()} out of range: the dataset has {n_episodes} episodes"
        )
    return idx.astype(np.int64)


class SequenceSampler:
    """Index of fixed-length windows over episodes; slices padded windows out of arrays.

    Knows nothing about observations or actions: :class:`WindowDataset` builds on it.
    """

    def __init__(
        self,
        episode_ends: Sequence[int] | np.ndarray,
        sequence_length: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episodes: Iterable[int] | None = None,
    ) -> None:
        if int(sequence_length) < 1:
            raise ConfigError(f"sequence_length must be >= 1, got {sequence_length}")
        if not 0 <= int(pad_before) < sequence_length:
            raise ConfigError(
                f"pad_before must be in [0, {sequence_length - 1}], got {pad_before}"
            )
        if not 0 <= int(pad_after) < sequence_length:
            raise ConfigError(f"pad_after must be in [0, {sequence_length - 1}], got {pad_after}")
        self.sequence_length = int(sequence_length)
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)
        self.episode_ends = _check_episode_ends(episode_ends)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        self.episodes = _check_episodes(episodes, len(self.episode_ends))

        ep_list, start_list = [], []
        short = []
        for ep in self.episodes:
            length = int(self.episode_ends[ep] - self.episode_starts[ep])
            first = -self.pad_before
            last = length - self.sequence_length + self.pad_after
            if last < first:
                short.append(int(ep))
                continue
            starts = np.arange(first, last + 1, dtype=np.int64)
            start_list.append(starts)
            ep_list.append(np.full(len(starts), ep, dtype=np.int64))
        if short:
            logger.warning(
                "%d episode(s) too short for windows of %d steps (pad %d/%d) give no windows: %s",
                len(short), self.sequence_length, self.pad_before, self.pad_after, short[:10],
            )
        #: episode of every window (index into the dataset's episodes)
        self.window_episode = np.concatenate(ep_list) if ep_list else np.zeros(0, np.int64)
        #: first frame of every window, relative to its episode (negative inside pad_before)
        self.window_start = np.concatenate(start_list) if start_list else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.window_episode)

    def _index(self, i: int) -> int:
        n = len(self)
        idx = int(i)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"window index {i} out of range for {n} windows")
        return idx

    def rows(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Global row indices of steps ``offset .. offset+length-1`` of window ``i``, padded
        by repeating the episode's first/last row."""
        idx = self._index(i)
        length = self.sequence_length if length is None else int(length)
        ep = self.window_episode[idx]
        ep_start, ep_end = self.episode_starts[ep], self.episode_ends[ep]
        frames = self.window_start[idx] + offset + np.arange(length, dtype=np.int64)
        return ep_start + np.clip(frames, 0, ep_end - ep_start - 1)

    def sample(self, array: Any, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Steps ``offset .. offset+length-1`` of window ``i`` read from ``array`` (numpy or
        zarr; one contiguous read), edge-padded, as a numpy array."""
        rows = self.rows(i, offset, length)
        lo, hi = int(rows[0]), int(rows[-1])
        block = np.asarray(array[lo:hi + 1])
        return block[rows - lo]


class WindowDataset:
    """Map-style dataset of diffusion-policy training windows (numpy only, no torch).

    ``data`` is a :class:`ReplayBuffer` or a dict with ``"episode_ends"`` and one array per
    key. ``dataset[i]`` is ``{"obs": {key: (n_obs_steps, ...)}, "action": (horizon, ...)}``
    in the stored dtypes, ready for torch's default collate. A ReplayBuffer is read into
    memory unless ``in_memory=False`` (then every window is read from the store).
    ``episodes`` selects the episodes to draw windows from (a train/val split).
    """

    def __init__(
        self,
        data: ReplayBuffer | Mapping[str, Any],
        obs_keys: Sequence[str],
        action_key: str = "action",
        n_obs_steps: int = 2,
        horizon: int = 16,
        n_action_steps: int = 8,
        episodes: Iterable[int] | None = None,
        pad_before: int | None = None,
        pad_after: int | None = None,
        in_memory: bool = True,
    ) -> None:
        if isinstance(obs_keys, str):
            obs_keys = [obs_keys]
        obs_keys = list(obs_keys)
        if not obs_keys:
            raise ConfigError("obs_keys must name at least one observation key")
        n_obs_steps, horizon, n_action_steps = int(n_obs_steps), int(horizon), int(n_action_steps)
        if n_obs_steps < 1:
            raise ConfigError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        if horizon < n_obs_steps:
            raise ConfigError(f"horizon ({horizon}) must be >= n_obs_steps ({n_obs_steps})")
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ConfigError(
                f"n_action_steps must be in [1, horizon - n_obs_steps + 1 = "
                f"{horizon - n_obs_steps + 1}], got {n_action_steps}"
            )
        pad_before = n_obs_steps - 1 if pad_before is None else int(pad_before)
        pad_after = n_action_steps - 1 if pad_after is None else int(pad_after)

        needed = list(dict.fromkeys(obs_keys + [action_key]))
        if isinstance(data, ReplayBuffer):
            missing = [k for k in needed if k not in data.keys]
            if missing:
                raise DatasetError(
                    f"dataset {data.path} lacks key(s) {missing}; it has {data.keys}"
                )
            episode_ends = data.episode_ends
            arrays = data.load_to_memory(needed) if in_memory else {k: data[k] for k in needed}
        elif isinstance(data, Mapping):
            if "episode_ends" not in data:
                raise DatasetError("a dict given to WindowDataset needs an 'episode_ends' entry")
            missing = [k for k in needed if k not in data]
            if missing:
                raise DatasetError(
                    f"data lacks key(s) {missing}; it has "
                    f"{sorted(k for k in data if k != 'episode_ends')}"
                )
            episode_ends = data["episode_ends"]
            arrays = {k: data[k] for k in needed}
        else:
            raise DatasetError(
                f"WindowDataset needs a ReplayBuffer or a dict of arrays, got {type(data).__name__}"
            )
        ends = _check_episode_ends(episode_ends)
        n_steps = int(ends[-1]) if len(ends) else 0
        for key, arr in arrays.items():
            if not hasattr(arr, "shape"):
                arr = arrays[key] = np.asarray(arr)
            rows = arr.shape[0] if arr.shape else 0
            if rows != n_steps:
                raise DatasetError(
                    f"array {key!r} has {rows} rows but episode_ends says {n_steps} steps"
                )

        self.obs_keys = obs_keys
        self.action_key = action_key
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.n_action_steps = n_action_steps
        self.pad_before = pad_before
        self.pad_after = pad_after
        self.sampler = SequenceSampler(ends, horizon, pad_before, pad_after, episodes)
        self._arrays = arrays

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.sampler
        obs = {k: s.sample(self._arrays[k], i, 0, self.n_obs_steps) for k in self.obs_keys}
        return {"obs": obs, "action": s.sample(self._arrays[self.action_key], i)}

    @property
    def episodes(self) -> np.ndarray:
        """The episodes windows are drawn from."""
        return self.sampler.episodes.copy()

    def episode_index_of(self, i: int) -> int:
        """Episode (index into the dataset) of window ``i``."""
        return int(self.sampler.window_episode[self.sampler._index(i)])

    def frame_of(self, i: int) -> tuple[int, int]:
        """``(episode, frame)`` of window ``i``'s current (last observed) step, with the
        frame relative to the episode and clamped into it."""
        idx = self.sampler._index(i)
        ep = int(self.sampler.window_episode[idx])
        length = int(self.sampler.episode_ends[ep] - self.sampler.episode_starts[ep])
        frame = int(self.sampler.window_start[idx]) + self.n_obs_steps - 1
        return ep, min(max(frame, 0), length - 1)

    def current_rows(self) -> np.ndarray:
        """Global dataset row of every window's current step (for retrieval indexes)."""
        s = self.sampler
        eps = s.window_episode
        lengths = s.episode_ends[eps] - s.episode_starts[eps]
        frames = np.clip(s.window_start + self.n_obs_steps - 1, 0, lengths - 1)
        return s.episode_starts[eps] + frames
