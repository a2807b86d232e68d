"""Demonstrations as retrieval rows: one row per frame of every indexed episode.

Row i is (episode, frame) plus the action recorded at that frame; rows are ordered by episode
and by frame within it, so the action chunk of a row is a slice of the `action` column. The
observation of frame f is the window of frames f - n_obs_steps + 1 .. f (the episode's first
frame repeated before its start, as the training windows pad), and its action chunk is
frames f - n_obs_steps + 1 .. f + horizon - n_obs_steps (the last action repeated past the
episode's end): the same layout as a policy's act(), whose chunk index n_obs_steps - 1 is
"now". Unlike the training windows, every frame up to the episode's last is a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from fastdp_ros.errors import DatasetError, ModelFileError

log = logging.getLogger(__name__)

#: embed_batch(obs {key: (B, n_obs_steps, ...)}) -> (B, dim) float array
EmbedBatch = Callable[[dict[str, np.ndarray]], np.ndarray]


def check_dataset(buffer, obs_shapes: Mapping[str, Sequence[int]], image_keys: Sequence[str],
                  action_key: str, action_dim: int) -> None:
    """Raise a DatasetError unless `buffer` has every key with the per-frame shape the model needs."""
    if buffer.n_episodes == 0:
        raise DatasetError(f"dataset {buffer.path} has no episodes")
    needed = list(obs_shapes) + [action_key]
    missing = [k for k in needed if k not in buffer]
    if missing:
        raise DatasetError(f"dataset {buffer.path} lacks {missing}, which the model observes; "
                           f"it has {sorted(buffer.keys)}")
    problems = []
    for key, shape in obs_shapes.items():
        have = tuple(buffer[key].shape[1:])
        if key not in image_keys:
            have = (int(np.prod(have)) if have else 1,)
        if have != tuple(shape):
            problems.append(f"{key!r} has frames of shape {have}, the model expects {tuple(shape)}")
        elif key in image_keys and np.dtype(buffer[key].dtype) != np.uint8:
            problems.append(f"{key!r} is {buffer[key].dtype}, the model expects uint8 images")
    have_action = buffer[action_key].shape[1:]
    have_action = int(np.prod(have_action)) if have_action else 1
    if have_action != int(action_dim):
        problems.append(f"{action_key!r} has {have_action} dimensions, the model acts in {action_dim}")
    if problems:
        raise DatasetError(f"dataset {buffer.path} does not match the model: " + "; ".join(problems))


def observation_windows(arrays: Mapping[str, np.ndarray], frames: np.ndarray, n_obs_steps: int) -> dict:
    """{key: (len(frames), n_obs_steps, ...)} observations of `frames` of one episode."""
    length = len(next(iter(arrays.values())))
    idx = np.clip(frames[:, None] - (n_obs_steps - 1) + np.arange(n_obs_steps), 0, length - 1)
    return {k: v[idx] for k, v in arrays.items()}


def episode_observations(buffer, episode: int, obs_keys: Sequence[str]) -> dict[str, np.ndarray]:
    """One episode's `obs_keys`, low-dimensional ones as (L, dim) vectors, as a policy observes them."""
    data = buffer.get_episode(int(episode), list(obs_keys))
    return {k: v if v.ndim == 4 else v.reshape(len(v), -1) for k, v in data.items()}


def window_batches(data: Mapping[str, np.ndarray], n_obs_steps: int, frames: np.ndarray | None = None,
                   batch_size: int = 256):
    """Observation windows {key: (B, n_obs_steps, ...)} of `frames` (default: every frame) of one
    episode's arrays, `batch_size` frames at a time."""
    if frames is None:
        frames = np.arange(len(next(iter(data.values()))))
    for start in range(0, len(frames), batch_size):
        yield observation_windows(data, frames[start:start + batch_size], n_obs_steps)


def embed_demonstrations(buffer, episodes: Sequence[int], obs_keys: Sequence[str], action_key: str,
                         n_obs_steps: int, embed_batch: EmbedBatch, batch_size: int = 256,
                         show_progress: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embed every frame of `episodes`; returns (embeddings (N, dim), row table).

    The row table has `episode` and `frame` (int32) and `action` (N, action_dim) float32.
    Episodes are read one at a time, so a large dataset never has to fit in memory.
    """
    episodes = [int(e) for e in episodes]
    if not episodes:
        raise DatasetError(f"no episodes of {buffer.path} to index")
    embeddings, episode_col, frame_col, action_col = [], [], [], []
    for ep in tqdm(episodes, desc="embed", unit="episode", disable=not show_progress):
        data = episode_observations(buffer, ep, list(obs_keys) + [action_key])
        actions = data.pop(action_key).astype(np.float32)
        length = len(actions)
        for window in window_batches(data, n_obs_steps, batch_size=batch_size):
            z = np.asarray(embed_batch(window), dtype=np.float32)
            embeddings.append(z.reshape(len(z), -1))
        episode_col.append(np.full(length, ep, np.int32))
        frame_col.append(np.arange(length, dtype=np.int32))
        action_col.append(actions)
    table = {"episode": np.concatenate(episode_col), "frame": np.concatenate(frame_col),
             "action": np.concatenate(action_col)}
    return np.concatenate(embeddings), table


class ActionChunks:
    """The action chunk of every row, read from the row table's `action` column.

    chunk(row of frame f) = actions of frames f - n_obs_steps + 1 .. f + horizon - n_obs_steps
    of the row's episode, clamped into the episode (its first/last action repeated).
    """

    def __init__(self, table: Mapping[str, np.ndarray], n_obs_steps: int, horizon: int):
        try:
            episode, frame, action = table["episode"], table["frame"], table["action"]
        except KeyError as e:
            raise ModelFileError(f"the index's row table lacks the {e} column") from None
        n = len(frame)
        starts = np.flatnonzero(frame == 0)
        if n == 0 or len(starts) == 0 or starts[0] != 0:
            raise ModelFileError("the index's row table does not start an episode at its first row")
        lengths = np.diff(np.append(starts, n))
        first_row = np.repeat(starts, lengths)
        if not (np.array_equal(frame, np.arange(n) - first_row)
                and np.array_equal(episode, np.repeat(episode[starts], lengths))):
            raise ModelFileError("the index's row table is not one row per frame, episode by episode")
        self.first_row = first_row.astype(np.int64)
        self.last_row = (first_row + np.repeat(lengths, lengths) - 1).astype(np.int64)
        self.action = np.ascontiguousarray(action, dtype=np.float32).reshape(n, -1)
        self.offsets = np.arange(horizon, dtype=np.int64) - (n_obs_steps - 1)

    def __call__(self, rows) -> np.ndarray:
        """(len(rows), horizon, action_dim) chunks of the given row ids."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        idx = np.clip(rows[:, None] + self.offsets, self.first_row[rows, None], self.last_row[rows, None])
        return self.action[idx]
