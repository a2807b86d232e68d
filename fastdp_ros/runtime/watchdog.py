"""The latched stop flag and the watchdogs that raise it.

A stop is latched: once raised it holds the arm until an operator calls `reset()`, however
the fault evolves (a camera that comes back does not release the arm by itself). Every
raise is recorded as a StopEvent, for the diagnostics topic and the run's statistics.

Watchdogs (checked once per control tick):
- stale streams: a camera or joint-state stream whose newest sample is older than its max age;
- inference deadline misses: `max_consecutive_misses` calls in a row slower than the deadline;
- inference stall: one call running for longer than `stall_timeout_s`;
- policy errors: `max_consecutive_errors` calls in a row that raised;
- stale commands: the command is built from an observation older than `max_command_age_s`
  (or no plan covers the present at all for that long).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopEvent:
    t: float
    source: str  # stream | inference | policy | command | observation | ood | safety | operator | runtime
    reason: str
    key: str = ""  # what exactly fired (a stream name, "misses", ...): one event per key while active

    def to_dict(self) -> dict:
        return asdict(self)


class StopLatch:
    """A stop flag that stays raised until reset, with the history of what raised it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active: list[StopEvent] = []
        self.events: list[StopEvent] = []
        self.resets = 0

    @property
    def stopped(self) -> bool:
        return bool(self._active)

    @property
    def reason(self) -> str | None:
        """The first reason of the active stop (what started it)."""
        with self._lock:
            return self._active[0].reason if self._active else None

    @property
    def active(self) -> list[StopEvent]:
        with self._lock:
            return list(self._active)

    def raise_stop(self, source: str, reason: str, t: float, key: str = "") -> bool:
        """Raise (or add a reason to) the stop; True if the arm was not stopped before.
        While active, a (source, key) pair is recorded once, however often it fires."""
        with self._lock:
            key = key or reason
            if any(e.source == source and e.key == key for e in self._active):
                return False
            was_stopped = bool(self._active)
            event = StopEvent(float(t), source, reason, key)
            self._active.append(event)
            self.events.append(event)
        if not was_stopped:
            log.error("STOP (%s): %s", source, reason)
        else:
            log.warning("stop also raised by %s: %s", source, reason)
        return not was_stopped

    def reset(self) -> list[StopEvent]:
        """Release the stop; returns the events that were active."""
        with self._lock:
            released, self._active = self._active, []
            if released:
                self.resets += 1
        if released:
            log.warning("stop released (was: %s)", released[0].reason)
        return released


@dataclass
class WatchdogLimits:
    """Thresholds of the watchdogs; `None` switches one off."""

    max_consecutive_misses: int | None = 3
    stall_timeout_s: float | None = None
    max_consecutive_errors: int | None = 3
    max_command_age_s: float | None = None


def check_watchdogs(limits: WatchdogLimits, now: float, stale_streams: dict[str, float], stream_limits: dict,
                    worker, command_age_s: float | None) -> list[tuple[str, str, str]]:
    """(source, key, reason) of every watchdog that fires now."""
    fired = []
    for key, age in sorted(stale_streams.items()):
        what = "never received" if math.isinf(age) else f"last sample {age:.3f} s ago"
        fired.append(("stream", key, f"stream {key!r} is stale: {what} (max age {stream_limits[key]:.3f} s)"))
    if limits.max_consecutive_misses is not None and worker.consecutive_misses >= limits.max_consecutive_misses:
        fired.append(("inference", "deadline", f"{worker.consecutive_misses} consecutive inference deadline misses "
                                   f"(deadline {1e3 * worker.deadline_s:.1f} ms); use a faster policy or "
                                   f"raise the deadline"))
    if limits.stall_timeout_s is not None:
        busy = worker.busy_for(now)
        if busy > limits.stall_timeout_s:
            fired.append(("inference", "stall", f"inference stalled: one call running for more than "
                                       f"{limits.stall_timeout_s:.3f} s"))
    if limits.max_consecutive_errors is not None and worker.consecutive_errors >= limits.max_consecutive_errors:
        fired.append(("policy", "errors",
                      f"{worker.consecutive_errors} consecutive policy errors, last: {worker.last_error}"))
    if limits.max_command_age_s is not None and command_age_s is not None and command_age_s > limits.max_command_age_s:
        fired.append(("command", "age", f"stale command: newest plan is from an observation "
                                 f"{command_age_s:.3f} s old (max {limits.max_command_age_s:.3f} s)"))
    return fired
