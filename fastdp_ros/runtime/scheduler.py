"""Action chunks on a time axis, sampled at the command rate.

A chunk is stamped with the time of the observation it was computed from. In the training
data, action k is the target recorded with observation k and reached one recording period
later (the simulation ramps to it over `dt`, as a joint-position interface does). So chunk
index j, with the window's "now" at index n_obs_steps - 1, is the target for time

    t_j = t_obs + (j - (n_obs_steps - 1) + lead_steps) * dt,      lead_steps = 1 by default.

Between knots the command is interpolated linearly, which turns a 10 Hz plan into 60 Hz (or
any rate) commands. Knots already in the past when a chunk arrives are dropped (latency
compensation: the arm continues where the plan says it should be *now*). Chunks overlap when
the policy re-plans before the previous chunk ends; they are blended:

- ``crossfade``: the newest chunk takes over from the current command linearly over
  `crossfade_s` after it arrives (0 = switch at once). No jump at arrival by construction.
- ``ensemble``: temporal ensembling (ACT) - a weighted mean of every chunk that covers the
  time, weight exp(-ensemble_decay * (age of its observation in s)); 0 is a plain mean,
  > 0 favours newer plans, < 0 older ones. A chunk's weight ramps in over `crossfade_s`
  after it arrives, so a new opinion never jumps the mean.

When no chunk covers the current time (underrun) `sample` returns None and the safety filter
holds the arm.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

BLEND_MODES = ("crossfade", "ensemble")


class InvalidChunk(ValueError):
    """A chunk the scheduler refuses: wrong shape or non-finite values."""


@dataclass
class TimedChunk:
    times: np.ndarray  # (n,) knot times, increasing
    actions: np.ndarray  # (n, action_dim)
    t_obs: float
    arrived: float

    def covers(self, t: float) -> bool:
        return self.times[0] <= t <= self.times[-1]

    def at(self, t: float) -> np.ndarray:
        i = int(np.searchsorted(self.times, t, side="right"))
        if i <= 0:
            return self.actions[0].copy()
        if i >= len(self.times):
            return self.actions[-1].copy()
        t0, t1 = self.times[i - 1], self.times[i]
        a = (t - t0) / (t1 - t0)
        return (1.0 - a) * self.actions[i - 1] + a * self.actions[i]


def knot_times(t_obs: float, horizon: int, dt: float, n_obs_steps: int, lead_steps: int = 1) -> np.ndarray:
    """When each action of a chunk is due (see the module docstring)."""
    return t_obs + (np.arange(horizon) - (n_obs_steps - 1) + lead_steps) * dt


class ActionScheduler:
    """Time-indexed action chunks: latency compensation, blending, interpolation, underrun."""

    def __init__(self, action_dim: int, blend: str = "crossfade", crossfade_s: float = 0.1,
                 ensemble_decay: float = 0.0, lead_steps: int = 1, max_chunks: int = 16):
        if blend not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        if not (crossfade_s >= 0 and math.isfinite(crossfade_s)):
            raise ConfigError(f"crossfade_s must be >= 0, got {crossfade_s}")
        if not math.isfinite(ensemble_decay):
            raise ConfigError(f"ensemble_decay must be finite, got {ensemble_decay}")
        if max_chunks < 1:
            raise ConfigError(f"max_chunks must be >= 1, got {max_chunks}")
        self.action_dim = int(action_dim)
        self.blend = blend
        self.crossfade_s = float(crossfade_s)
        self.ensemble_decay = float(ensemble_decay)
        self.lead_steps = int(lead_steps)
        self.max_chunks = int(max_chunks)
        self._chunks: list[TimedChunk] = []
        self.newest_t_obs: float | None = None  # the newest observation any accepted chunk came from
        self.used_t_obs: float | None = None  # the newest observation behind the last sample
        self.counts = {"chunks": 0, "rejected": 0, "dropped_actions": 0, "stale_chunks": 0,
                       "samples": 0, "underruns": 0}

    def clear(self) -> None:
        self._chunks.clear()
        self.newest_t_obs = None
        self.used_t_obs = None

    @property
    def n_chunks(self) -> int:
        return len(self._chunks)

    def add_chunk(self, actions, t_obs: float, dt: float, n_obs_steps: int, now: float) -> int:
        """Accept a chunk (horizon, action_dim) computed from the observation at `t_obs`.

        Returns how many of its actions were already in the past at `now` (dropped). Raises
        InvalidChunk for a wrong shape or NaN/inf anywhere in it (nothing of it is used).
        """
        try:
            a = np.asarray(actions, dtype=np.float64)
        except (TypeError, ValueError) as e:
            self.counts["rejected"] += 1
            raise InvalidChunk(f"action chunk is not a numeric array ({e})") from None
        if a.ndim != 2 or a.shape[1] != self.action_dim or a.shape[0] < 1:
            self.counts["rejected"] += 1
            raise InvalidChunk(f"action chunk has shape {a.shape}, expected (horizon, {self.action_dim})")
        if not np.all(np.isfinite(a)):
            self.counts["rejected"] += 1
            bad = np.argwhere(~np.isfinite(a))[0]
            raise InvalidChunk(f"action chunk contains NaN or inf (first at step {bad[0]}, dim {bad[1]})")
        times = knot_times(float(t_obs), a.shape[0], float(dt), int(n_obs_steps), self.lead_steps)
        if self.newest_t_obs is not None and t_obs < self.newest_t_obs:
            # An older observation than one already planned from: never replace newer information.
            self.counts["stale_chunks"] += 1
            return a.shape[0]
        # Keep one knot before `now` so the command at `now` can be interpolated.
        first = max(0, int(np.searchsorted(times, now, side="right")) - 1)
        dropped = first
        self.counts["dropped_actions"] += dropped
        self.counts["chunks"] += 1
        if times[-1] < now:
            return a.shape[0]  # entirely in the past: the loop underruns and the watchdog sees it
        self._chunks.append(TimedChunk(times[first:], a[first:], float(t_obs), float(now)))
        self.newest_t_obs = float(t_obs)
        if len(self._chunks) > self.max_chunks:
            del self._chunks[: len(self._chunks) - self.max_chunks]
        return dropped

    def sample(self, now: float) -> np.ndarray | None:
        """The blended, interpolated action at `now`, or None (underrun: hold)."""
        self._chunks = [c for c in self._chunks if c.times[-1] >= now]
        self.counts["samples"] += 1
        live = [c for c in self._chunks if c.covers(now)]
        if not live:
            self.counts["underruns"] += 1
            self.used_t_obs = None
            return None
        self.used_t_obs = max(c.t_obs for c in live)
        if self.blend == "crossfade":
            return self._crossfade(live, now)
        return self._ensemble(live, now)

    def _ramp(self, chunk: TimedChunk, now: float) -> float:
        if self.crossfade_s <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - chunk.arrived) / self.crossfade_s))

    def _crossfade(self, live: list[TimedChunk], now: float) -> np.ndarray:
        out = None
        for c in live:  # oldest first
            alpha = self._ramp(c, now)
            out = c.at(now) if out is None else (1.0 - alpha) * out + alpha * c.at(now)
        # A fully faded-in chunk makes everything before it irrelevant for as long as it lasts.
        for i in range(len(self._chunks) - 1, 0, -1):
            c = self._chunks[i]
            if self._ramp(c, now) >= 1.0 and c.covers(now):
                self._chunks = [o for o in self._chunks[:i] if o.times[-1] > c.times[-1]] + self._chunks[i:]
                break
        return out

    def _ensemble(self, live: list[TimedChunk], now: float) -> np.ndarray:
        newest = max(c.t_obs for c in live)
        w = np.array([math.exp(-self.ensemble_decay * (newest - c.t_obs)) * self._ramp(c, now) for c in live])
        if not np.any(w > 0):  # only chunks that arrived this instant: take them as they are
            w = np.ones(len(live))
        values = np.stack([c.at(now) for c in live])
        return (w[:, None] * values).sum(0) / w.sum()
