"""A background thread that runs a function (policy inference, an OOD encoder) on the newest input.

The control loop must never wait for a network. `InferenceWorker.submit` drops the input into
a one-slot mailbox and returns at once; a newer input replaces one still waiting (it is
counted as superseded), so the worker never queues behind itself and always starts on the
freshest observation. Results are collected with `poll()` at the loop's convenience.

Exceptions raised by the function are caught and returned as results with an error message:
a failing policy never takes the loop down. Every result records its compute latency and
whether it missed the deadline.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceResult:
    """The output of one call (None on error) and its timing.

    `stamp` is the input's (observation) time; `started`/`finished` are read from the
    worker's clock, so with the runner's clock `finished - stamp` is the end-to-end delay.
    `generation` tells results of a replaced function (hot swap) from the current one's.
    """

    output: Any
    stamp: float
    started: float
    finished: float
    error: str | None
    generation: int
    deadline_missed: bool

    @property
    def latency_s(self) -> float:
        return self.finished - self.started


class LatencyRecord:
    """Latencies (s): all of them for the final report (bounded), a recent window for live status."""

    def __init__(self, capacity: int = 1_000_000, recent: int = 200):
        self.all: collections.deque = collections.deque(maxlen=capacity)
        self.recent: collections.deque = collections.deque(maxlen=recent)

    def add(self, seconds: float) -> None:
        self.all.append(seconds)
        self.recent.append(seconds)

    @staticmethod
    def percentiles_ms(samples) -> dict:
        if not samples:
            return {}
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "max": float(ms.max()),
                "count": int(ms.size)}


class InferenceWorker:
    """Runs `fn(inputs)` in a daemon thread on the newest submitted input.

    `deadline_s`: a call slower than this is a deadline miss (counted, and flagged on its
    result). `clock` times the calls (inject a fake clock in tests). `on_result`, if given, is
    called from the worker thread after each result is stored (it must be quick and
    thread-safe, e.g. triggering an rclpy guard condition), so the caller can poll at once
    instead of at its next tick.
    """

    def __init__(self, fn: Callable[[Any], Any], name: str = "inference", deadline_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, max_results: int = 64,
                 on_result: Callable[[], None] | None = None):
        self.name = name
        self.on_result = on_result
        self.deadline_s = deadline_s
        self.clock = clock
        self._fn = fn
        self._generation = 0
        self._cond = threading.Condition()
        self._pending: tuple[Any, float, int] | None = None
        self._busy_since: float | None = None
        self._results: collections.deque = collections.deque(maxlen=max_results)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.latency = LatencyRecord()
        self.counts = {"submitted": 0, "superseded": 0, "completed": 0, "errors": 0, "deadline_misses": 0}
        self.consecutive_misses = 0
        self.consecutive_errors = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> "InferenceWorker":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"fastdp-{self.name}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the thread; True if it ended within `timeout` (a call stuck in a network cannot be
        interrupted: the daemon thread is then abandoned and logged)."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s worker still busy after %.1f s; leaving its thread behind", self.name, timeout)
            return False
        return True

    @property
    def generation(self) -> int:
        return self._generation

    def set_fn(self, fn: Callable[[Any], Any]) -> int:
        """Use `fn` from the next call on; a pending input is dropped (it was built for the old
        function). Returns the new generation; results of older generations are stale."""
        with self._cond:
            self._fn = fn
            self._generation += 1
            self._pending = None
            self.consecutive_misses = 0
            self.consecutive_errors = 0
            return self._generation

    def discard(self) -> int:
        """Drop the pending input and mark running/finished work stale (episode reset)."""
        with self._cond:
            self._generation += 1
            self._pending = None
            self._results.clear()
            return self._generation

    def submit(self, inputs: Any, stamp: float) -> bool:
        """Hand over the newest input; returns False if it replaced one still waiting."""
        with self._cond:
            replaced = self._pending is not None
            if replaced:
                self.counts["superseded"] += 1
            self._pending = (inputs, float(stamp), self._generation)
            self.counts["submitted"] += 1
            self._cond.notify_all()
        return not replaced

    def poll(self) -> list[InferenceResult]:
        """Results finished since the last poll, oldest first."""
        with self._cond:
            out = list(self._results)
            self._results.clear()
        return out

    # ------------------------------------------------------------------ state

    def busy_for(self, now: float) -> float:
        """How long the current call has been running (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, now - since)

    @property
    def busy(self) -> bool:
        return self._busy_since is not None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending or running (tests, lock-step runs)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy_since is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
        return True

    def stats(self) -> dict:
        return {**self.counts, "latency_ms": LatencyRecord.percentiles_ms(self.latency.all),
                "deadline_ms": None if self.deadline_s is None else 1e3 * self.deadline_s,
                "last_error": self.last_error}

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                inputs, stamp, generation = self._pending
                self._pending = None
                fn = self._fn
                started = self.clock()
                self._busy_since = started
            output, error = None, None
            try:
                output = fn(inputs)
            except Exception as e:  # noqa: BLE001 - any policy failure is reported, never fatal
                error = f"{type(e).__name__}: {e}"
            finished = self.clock()
            latency = finished - started
            missed = self.deadline_s is not None and latency > self.deadline_s
            with self._cond:
                self._busy_since = None
                current = generation == self._generation
                if current:
                    self._record(latency, missed, error)
                    self._results.append(InferenceResult(output, stamp, started, finished, error, generation, missed))
                self._cond.notify_all()
            if current and self.on_result is not None:
                try:
                    self.on_result()
                except Exception as e:  # noqa: BLE001 - e.g. a node shutting down; the caller still polls
                    log.debug("%s on_result failed: %s", self.name, e)

    def _record(self, latency: float, missed: bool, error: str | None) -> None:
        if error is not None:
            self.counts["errors"] += 1
            self.consecutive_errors += 1
            self.last_error = error
            # the first failure and then every 100th: a failing policy at 60 Hz must not flood the log
            if self.counts["errors"] == 1 or self.counts["errors"] % 100 == 0:
                log.warning("%s call failed (%d so far): %s", self.name, self.counts["errors"], error)
            return
        self.consecutive_errors = 0
        self.counts["completed"] += 1
        self.latency.add(latency)
        if missed:
            self.counts["deadline_misses"] += 1
            self.consecutive_misses += 1
        else:
            self.consecutive_misses = 0
