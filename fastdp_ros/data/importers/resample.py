"""Streams recorded at their own rates -> samples on one fixed time grid, with counts of what
was dropped and what was made up.

A continuous stream (joint positions, gripper width) is interpolated linearly between the two
messages around each grid time; a discrete one (camera frames, commands) holds its latest
message at or before the grid time (what a controller had at that moment). Both report:

  messages      messages inside the grid's time span
  dropped       of those, messages no grid sample used (a 1 kHz stream resampled to 10 Hz drops most)
  interpolated  grid samples that fall between two messages (continuous streams)
  gaps          grid samples whose bracketing messages (continuous) or latest message (discrete)
                are more than one grid period away: the stream had a hole there
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: two stamps closer than this (s) are the same instant
STAMP_TOLERANCE = 1e-6


@dataclass
class StreamReport:
    messages: int = 0
    dropped: int = 0
    interpolated: int = 0
    gaps: int = 0

    def add(self, other: "StreamReport") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict:
        return asdict(self)


def time_grid(start: float, end: float, dt: float) -> np.ndarray:
    """start, start + dt, ... up to end (inclusive within STAMP_TOLERANCE)."""
    if end < start:
        return np.zeros(0)
    n = int(np.floor((end - start) / dt + STAMP_TOLERANCE)) + 1
    return start + dt * np.arange(n)


def _in_span(stamps: np.ndarray, grid: np.ndarray) -> int:
    return int(np.count_nonzero((stamps >= grid[0] - STAMP_TOLERANCE) & (stamps <= grid[-1] + STAMP_TOLERANCE)))


def interpolate(stamps: np.ndarray, values: np.ndarray, grid: np.ndarray, dt: float
                ) -> tuple[np.ndarray, StreamReport]:
    """Linear interpolation of (sorted) `stamps` -> `values` rows at `grid` (inside the stamps' span)."""
    stamps = np.asarray(stamps, np.float64)
    values = np.asarray(values, np.float64).reshape(len(stamps), -1)
    if len(stamps) == 1:
        return np.repeat(values, len(grid), axis=0), StreamReport(1, 0, 0, 0)
    hi = np.clip(np.searchsorted(stamps, grid, side="right"), 1, len(stamps) - 1)
    lo = hi - 1
    span = stamps[hi] - stamps[lo]
    w = np.clip(np.divide(grid - stamps[lo], span, out=np.zeros_like(grid), where=span > 0), 0.0, 1.0)
    out = values[lo] * (1.0 - w)[:, None] + values[hi] * w[:, None]
    at_lo = np.abs(grid - stamps[lo]) <= STAMP_TOLERANCE
    at_hi = np.abs(grid - stamps[hi]) <= STAMP_TOLERANCE
    out[at_lo] = values[lo[at_lo]]
    out[at_hi & ~at_lo] = values[hi[at_hi & ~at_lo]]
    between = ~(at_lo | at_hi)
    used = np.unique(np.concatenate([lo[at_lo], hi[at_hi & ~at_lo], lo[between], hi[between]]))
    messages = _in_span(stamps, grid)
    report = StreamReport(messages=messages, dropped=max(0, messages - len(used)),
                          interpolated=int(between.sum()), gaps=int(np.count_nonzero(between & (span > dt))))
    return out, report


def hold(stamps: np.ndarray, grid: np.ndarray, dt: float) -> tuple[np.ndarray, StreamReport]:
    """Index of the latest of (sorted) `stamps` at or before each grid time (all >= stamps[0])."""
    stamps = np.asarray(stamps, np.float64)
    idx = np.searchsorted(stamps, grid + STAMP_TOLERANCE, side="right") - 1
    if np.any(idx < 0):
        raise ValueError("grid starts before the stream's first message")
    age = grid - stamps[idx]
    messages = _in_span(stamps, grid)
    used = len(np.unique(idx[stamps[idx] >= grid[0] - STAMP_TOLERANCE]))  # messages inside the span that were used
    report = StreamReport(messages=messages, dropped=max(0, messages - used), interpolated=0,
                          gaps=int(np.count_nonzero(age > dt + STAMP_TOLERANCE)))
    return idx, report
