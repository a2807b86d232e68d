"""Timestamped sensor streams in, the policy's observation history out.

Cameras, joint state and other sensors arrive at their own rates with their own (header)
stamps. The policy was trained on windows of `n_obs_steps` frames spaced by the dataset's
recording period `dt`, all keys recorded at the same instant. `ObservationBuffer` rebuilds
exactly that: the observation time is the newest instant every stream has reached (the
oldest of the streams' latest stamps), and history frame i of every key is that stream's
sample nearest to t_obs - (n_obs_steps - 1 - i) * dt. Before a stream has enough history
its oldest sample is repeated, as the training windows pad at an episode start.

The buffer is thread-safe (a hot swap warms the new policy up on a real observation from
another thread).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies.spec import ObservationError, PolicySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """One observation key: the shape of one sample, image or not, how old it may get."""

    key: str
    shape: tuple[int, ...]
    image: bool
    max_age_s: float  # the limit; with age_periods, its floor
    age_periods: float = 0.0  # > 0: the limit is at least this many of the stream's measured periods


class _Stream:
    __slots__ = ("spec", "stamps", "values", "received", "rejected", "recent")

    def __init__(self, spec: StreamSpec, window: int):
        self.spec = spec
        self.recent: deque[float] = deque(maxlen=window + 1)  # newest stamps, for the measured period
        self.stamps: list[float] = []
        self.values: list[np.ndarray] = []
        self.received = 0
        self.rejected = 0

    def nearest(self, t: float) -> np.ndarray:
        """The sample nearest to t (the older one on a tie); the oldest before the first."""
        i = bisect.bisect_left(self.stamps, t)
        if i == 0:
            return self.values[0]
        if i == len(self.stamps):
            return self.values[-1]
        before, after = self.stamps[i - 1], self.stamps[i]
        return self.values[i] if after - t < t - before else self.values[i - 1]


class ObservationBuffer:
    """Per-key sample streams with staleness, and the policy's n_obs_steps history from them.

    `streams` maps each key to a StreamSpec; `for_spec` builds them from a PolicySpec.
    Samples older than `retention_s` behind a stream's newest are forgotten.
    """

    def __init__(self, streams: dict[str, StreamSpec], retention_s: float):
        if not streams:
            raise ConfigError("an observation buffer needs at least one stream")
        if not (retention_s > 0 and math.isfinite(retention_s)):
            raise ConfigError(f"retention_s must be a positive number of seconds, got {retention_s}")
        self.retention_s = float(retention_s)
        self._streams = {k: _Stream(s, self.PERIOD_WINDOW) for k, s in streams.items()}
        self._lock = threading.Lock()
        self._since = -math.inf  # staleness of never-seen streams counts from here (start / reset)

    #: stamp intervals the measured period of a stream is the median of
    PERIOD_WINDOW = 32

    @classmethod
    def for_spec(cls, spec: PolicySpec, max_age_s: float | dict[str, float] | None = None,
                 retention_s: float | None = None, also: tuple[PolicySpec, ...] = (),
                 age_periods: float = 0.0) -> "ObservationBuffer":
        """Streams for every observation key of `spec` (and of the specs in `also`, e.g. an OOD
        monitor's encoder, which must agree on the shapes of shared keys).

        A stream is stale when its newest sample is older than `max_age_s` (one number, or per
        key). By default that is two recording periods of `spec`: the history needs a frame every
        `dt`, and a stream that has missed two of them can no longer feed it. The buffer keeps
        `retention_s` of samples, by default twice the longest history span or max age (and at
        least one second). With `age_periods` > 0 the max age is a floor, and a stream's limit
        follows its own rate: `age_periods` times its measured period (the median interval of
        its recent header stamps), so a slow sensor is not flagged for being slow.
        """
        specs = (spec, *also)
        default_age = 2.0 * spec.dt
        streams: dict[str, StreamSpec] = {}
        for s in specs:
            for key in s.obs_keys:
                shape = tuple(s.obs_shape(key))
                if key in streams:
                    if streams[key].shape != shape:
                        raise ConfigError(f"observation {key!r} has shape {streams[key].shape} for one model "
                                          f"and {shape} for another")
                    continue
                if isinstance(max_age_s, dict):
                    age = float(max_age_s.get(key, default_age))
                else:
                    age = default_age if max_age_s is None else float(max_age_s)
                if not (age > 0):
                    raise ConfigError(f"max age of stream {key!r} must be > 0 s, got {age}")
                streams[key] = StreamSpec(key, shape, key in s.image_keys, age, float(age_periods))
        span = max((s.n_obs_steps - 1) * s.dt for s in specs)
        if retention_s is None:
            retention_s = max(1.0, 2.0 * span, 2.0 * max(st.max_age_s for st in streams.values()))
        return cls(streams, retention_s)

    # ------------------------------------------------------------------ input

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._streams)

    def stream(self, key: str) -> StreamSpec:
        return self._streams[key].spec

    def push(self, key: str, stamp: float, value) -> bool:
        """Add one sample. Unknown keys are ignored (returns False): a node may publish more than
        the policy reads. A sample that does not fit the stream (shape, dtype, NaN/inf, a
        non-finite stamp) raises ObservationError and is not stored."""
        stream = self._streams.get(key)
        if stream is None:
            return False
        try:
            stamp = float(stamp)
        except (TypeError, ValueError):
            stamp = math.nan
        if not math.isfinite(stamp):
            stream.rejected += 1
            raise ObservationError(f"sample of {key!r} has a non-finite stamp {stamp}")
        try:
            x = np.asarray(value)
        except (TypeError, ValueError) as e:  # ragged lists and the like
            stream.rejected += 1
            raise ObservationError(f"sample of {key!r} is not an array ({e})") from None
        spec = stream.spec
        if x.shape != spec.shape:
            stream.rejected += 1
            raise ObservationError(f"sample of {key!r} has shape {x.shape}, expected {spec.shape}")
        if spec.image:
            if x.dtype != np.uint8:
                stream.rejected += 1
                raise ObservationError(f"image {key!r} has dtype {x.dtype}, expected uint8 RGB")
        else:
            if not np.issubdtype(x.dtype, np.number):
                stream.rejected += 1
                raise ObservationError(f"sample of {key!r} is not numeric (dtype {x.dtype})")
            with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, refused just below
                x = x.astype(np.float32)
            if not np.all(np.isfinite(x)):
                stream.rejected += 1
                raise ObservationError(f"sample of {key!r} at t={stamp:.3f} contains NaN or inf: {x}")
        x = np.array(x, copy=True)  # the caller may reuse its array
        with self._lock:
            stamps, values = stream.stamps, stream.values
            if not stamps or stamp > stamps[-1]:
                stamps.append(stamp)
                values.append(x)
                if not stream.recent or stamp > stream.recent[-1]:
                    stream.recent.append(stamp)
            else:  # out of order (several publishers, best-effort transport): keep time order
                i = bisect.bisect_left(stamps, stamp)
                if i < len(stamps) and stamps[i] == stamp:
                    values[i] = x
                else:
                    stamps.insert(i, stamp)
                    values.insert(i, x)
            stream.received += 1
            cutoff = stamps[-1] - self.retention_s
            if stamps[0] < cutoff:
                drop = bisect.bisect_left(stamps, cutoff)
                del stamps[:drop]
                del values[:drop]
        return True

    def clear(self, since: float = -math.inf) -> None:
        """Forget all samples; streams never seen after this count as stale from `since`."""
        with self._lock:
            for s in self._streams.values():
                s.stamps.clear()
                s.values.clear()
            self._since = float(since)

    # ------------------------------------------------------------------ state

    def latest_stamp(self, key: str) -> float | None:
        with self._lock:
            stamps = self._streams[key].stamps
            return stamps[-1] if stamps else None

    def ages(self, now: float) -> dict[str, float]:
        """Seconds since each stream's newest sample (since `clear` for a stream never seen)."""
        with self._lock:
            return {k: now - (s.stamps[-1] if s.stamps else self._since) for k, s in self._streams.items()}

    def period(self, key: str) -> float | None:
        """The stream's measured period: the median interval of its recent stamps (None before
        two samples)."""
        with self._lock:
            stamps = list(self._streams[key].recent)
        if len(stamps) < 2:
            return None
        return float(np.median(np.diff(stamps)))

    def max_age(self, key: str) -> float:
        """How old the stream's newest sample may be: its max age, or with age_periods the larger
        of that floor and age_periods measured periods."""
        spec = self._streams[key].spec
        if spec.age_periods <= 0:
            return spec.max_age_s
        period = self.period(key)
        limit = spec.max_age_s if period is None else max(spec.max_age_s, spec.age_periods * period)
        with self._lock:
            warming = len(self._streams[key].recent) <= spec.age_periods
        # a stream's first samples arrive while every process of the graph is still starting up
        # (stalls of 0.57 s measured on a loaded 2-core machine): twice the limit until its rate is known
        return 2.0 * limit if warming else limit

    def max_ages(self) -> dict[str, float]:
        return {k: self.max_age(k) for k in self._streams}

    def stale(self, now: float) -> dict[str, float]:
        """The streams older than their max age, with their ages."""
        return {k: age for k, age in self.ages(now).items() if age > self.max_age(k)}

    def counts(self) -> dict[str, dict[str, int]]:
        return {k: {"received": s.received, "rejected": s.rejected} for k, s in self._streams.items()}

    def observation_time(self, keys=None) -> float | None:
        """The newest instant all `keys` have reached, or None while one has no sample yet."""
        with self._lock:
            return self._observation_time(keys or self.keys)

    def _observation_time(self, keys) -> float | None:
        latest = []
        for k in keys:
            stamps = self._streams[k].stamps
            if not stamps:
                return None
            latest.append(stamps[-1])
        return min(latest)

    def observation(self, spec: PolicySpec) -> tuple[dict[str, np.ndarray], float] | None:
        """`(obs, t_obs)`: `spec.n_obs_steps` frames per key of `spec` at its `dt`, oldest first;
        None until every key has a sample. Raises ConfigError for a key this buffer lacks."""
        missing = [k for k in spec.obs_keys if k not in self._streams]
        if missing:
            raise ConfigError(f"the policy needs observation keys {missing} that this runtime does not receive; "
                              f"it receives {list(self._streams)}")
        with self._lock:
            t_obs = self._observation_time(spec.obs_keys)
            if t_obs is None:
                return None
            times = [t_obs - (spec.n_obs_steps - 1 - i) * spec.dt for i in range(spec.n_obs_steps)]
            obs = {k: np.stack([self._streams[k].nearest(t) for t in times]) for k in spec.obs_keys}
        return obs, t_obs
