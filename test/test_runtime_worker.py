"""InferenceWorker: newest input only, never queues behind itself, errors reported, deadlines."""

import threading

import pytest

from fastdp_ros.runtime.worker import InferenceWorker

TIMEOUT = 30.0  # generous: a loaded 2-core machine may be slow to schedule the thread


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def test_newest_input_wins_and_nothing_queues():
    gate, entered = threading.Event(), threading.Event()
    seen = []

    def fn(x):
        seen.append(x)
        if x == 0:
            entered.set()
            assert gate.wait(TIMEOUT)
        return x * 10

    w = InferenceWorker(fn).start()
    try:
        w.submit(0, stamp=0.0)
        assert entered.wait(TIMEOUT)  # the worker is busy with input 0
        assert w.submit(1, stamp=1.0)
        assert not w.submit(2, stamp=2.0)  # replaces 1, still waiting
        assert not w.submit(3, stamp=3.0)
        gate.set()
        assert w.wait_idle(TIMEOUT)
        results = w.poll()
        assert seen == [0, 3]  # 1 and 2 were superseded, never run
        assert [(r.output, r.stamp) for r in results] == [(0, 0.0), (30, 3.0)]
        assert w.counts["superseded"] == 2 and w.counts["completed"] == 2
        assert w.poll() == []
    finally:
        assert w.close(TIMEOUT)


def test_exceptions_are_reported_not_raised():
    def fn(x):
        if x < 0:
            raise RuntimeError("bad input")
        return x

    w = InferenceWorker(fn).start()
    try:
        for x in (-1, -2, 5):
            w.submit(x, stamp=float(x))
            assert w.wait_idle(TIMEOUT)
        results = w.poll()
        assert [r.error for r in results] == ["RuntimeError: bad input"] * 2 + [None]
        assert results[-1].output == 5
        assert w.counts["errors"] == 2 and w.consecutive_errors == 0
        assert "bad input" in w.stats()["last_error"]
    finally:
        w.close(TIMEOUT)


def test_deadline_misses_timed_by_the_injected_clock():
    clock = FakeClock()

    def slow_when_asked(latency):
        clock.t += latency  # the call "takes" this long on the fake clock
        return latency

    w = InferenceWorker(slow_when_asked, deadline_s=0.05, clock=clock).start()
    try:
        for latency in (0.01, 0.08, 0.09, 0.02):
            w.submit(latency, stamp=clock.t)
            assert w.wait_idle(TIMEOUT)
        results = w.poll()
        assert [r.deadline_missed for r in results] == [False, True, True, False]
        assert [round(r.latency_s, 6) for r in results] == [0.01, 0.08, 0.09, 0.02]
        assert w.counts["deadline_misses"] == 2 and w.consecutive_misses == 0
        assert w.stats()["latency_ms"]["max"] == pytest.approx(90.0)
    finally:
        w.close(TIMEOUT)


def test_replacing_the_function_discards_results_of_the_old_one():
    gate, entered = threading.Event(), threading.Event()

    def old(x):
        entered.set()
        assert gate.wait(TIMEOUT)
        return "old"

    w = InferenceWorker(old).start()
    try:
        w.submit(1, stamp=1.0)
        assert entered.wait(TIMEOUT)
        generation = w.set_fn(lambda x: "new")
        gate.set()
        w.submit(2, stamp=2.0)
        assert w.wait_idle(TIMEOUT)
        results = w.poll()
        assert [r.output for r in results] == ["new"] and results[0].generation == generation
    finally:
        w.close(TIMEOUT)


def test_busy_for_reports_a_running_call():
    clock = FakeClock(100.0)
    gate, entered = threading.Event(), threading.Event()

    def fn(x):
        entered.set()
        assert gate.wait(TIMEOUT)

    w = InferenceWorker(fn, clock=clock).start()
    try:
        assert w.busy_for(clock()) == 0.0
        w.submit(0, stamp=100.0)
        assert entered.wait(TIMEOUT)
        clock.t = 102.5
        assert w.busy_for(clock()) == pytest.approx(2.5)
        gate.set()
        assert w.wait_idle(TIMEOUT)
        assert w.busy_for(clock()) == 0.0
    finally:
        w.close(TIMEOUT)


def test_on_result_is_called_after_each_current_result_and_a_failing_one_does_not_stop_the_worker():
    done = threading.Semaphore(0)
    calls = []

    def on_result():
        calls.append(len(calls))
        done.release()
        if len(calls) == 1:
            raise RuntimeError("the node is shutting down")  # must not kill the worker thread

    worker = InferenceWorker(lambda x: x * 2, "t", on_result=on_result).start()
    try:
        worker.submit(1, 0.0)
        assert done.acquire(timeout=TIMEOUT)
        assert [r.output for r in worker.poll()] == [2]  # stored before the caller is woken
        worker.submit(2, 0.0)
        assert done.acquire(timeout=TIMEOUT) and [r.output for r in worker.poll()] == [4]
        assert calls == [0, 1]
    finally:
        worker.close()
