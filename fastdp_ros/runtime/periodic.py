"""A fixed-rate loop on absolute deadlines, and a thread that runs one.

The command stream is paced here rather than by an executor timer: under CPU load a timer
callback waits behind every sensor callback the executor has queued (and rcl drops the periods
it missed, so the mean rate sinks), while a thread that sleeps to its own deadline is woken by
the kernel on time and only needs the GIL back (the switch interval is lowered while it runs).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)


class DeadlineSchedule:
    """Deadlines t0 + k * period. A late step is followed by an early one (the mean rate holds);
    slots missed entirely are skipped, never burst."""

    def __init__(self, period: float, t0: float):
        if not period > 0:
            raise ConfigError(f"the period must be > 0 s, got {period}")
        self.period, self.t0 = float(period), float(t0)
        self.k = 0
        self.skipped = 0

    @property
    def next_deadline(self) -> float:
        return self.t0 + self.k * self.period

    def advance(self, now: float) -> int:
        """Move to the next slot after `now`'s step; returns the slots skipped."""
        self.k += 1
        behind = now - self.next_deadline
        missed = int(behind // self.period) if behind > self.period else 0
        self.k += missed
        self.skipped += missed
        return missed


class PeriodicThread:
    """Calls `step()` at `rate` Hz on a daemon thread until stop(). An exception in a step is
    logged (once per exception type) and the loop goes on: the caller's step must leave the arm
    safe by itself, and a control loop that dies silently would leave it without commands."""

    def __init__(self, step: Callable[[], None], rate: float, name: str = "periodic",
                 clock: Callable[[], float] = time.monotonic):
        if not rate > 0:
            raise ConfigError(f"rate must be > 0 Hz, got {rate}")
        self.step, self.period, self.name, self.clock = step, 1.0 / float(rate), name, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._old_switch: float | None = None
        self._errors: set[str] = set()
        self.steps = 0
        self.max_lateness = 0.0
        self.schedule: DeadlineSchedule | None = None

    def start(self) -> "PeriodicThread":
        if self._thread is not None:
            raise ConfigError(f"{self.name} is already running")
        self._old_switch = sys.getswitchinterval()
        # a waking loop must win the GIL back from busy threads well within its period
        sys.setswitchinterval(min(self._old_switch, self.period / 20))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """End the loop and wait for a step in progress to finish (at most `timeout` s)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: a step still runs after %.1f s", self.name, timeout)
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)
            self._old_switch = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        schedule = self.schedule = DeadlineSchedule(self.period, self.clock())
        while not self._stop.is_set():
            delay = schedule.next_deadline - self.clock()
            if delay > 0 and self._stop.wait(delay):
                break
            now = self.clock()
            self.max_lateness = max(self.max_lateness, now - schedule.next_deadline)
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - see the class docstring
                kind = type(e).__name__
                if kind not in self._errors:
                    self._errors.add(kind)
                    log.exception("%s: step failed (%s); the loop goes on", self.name, kind)
            self.steps += 1
            schedule.advance(self.clock())
