"""Datasets: zarr episode store, training windows, normalizer, split and fingerprint.

numpy and zarr only (no torch): samples are dicts of numpy arrays that torch's default
collate batches.
"""

from .fingerprint import dataset_fingerprint
from .normalizer import Normalizer
from .replay_buffer import ReplayBuffer
from .split import split_episodes
from .windows import SequenceSampler, WindowDataset

__all__ = [
    "Normalizer",
    "ReplayBuffer",
    "SequenceSampler",
    "WindowDataset",
    "dataset_fingerprint",
    "split_episodes",
]
