"""runtime.periodic: the deadline schedule and the thread the policy node's commands run on."""

import threading

import pytest
from hypothesis import given, strategies as st

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.periodic import DeadlineSchedule, PeriodicThread


@given(period=st.floats(0.001, 0.1), lateness=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=50))
def test_deadlines_stay_on_the_grid_and_never_lie_behind(period, lateness):
    schedule = DeadlineSchedule(period, t0=10.0)
    total = 0
    for late in lateness:
        deadline = schedule.next_deadline
        now = deadline + late * period * 10  # the step ended this late
        missed = schedule.advance(now)
        total += missed
        k = round((schedule.next_deadline - 10.0) / period)
        assert schedule.next_deadline == pytest.approx(10.0 + k * period)
        assert missed >= 0
        # the next deadline is at most one period behind the step's end: no burst of catch-up steps
        assert schedule.next_deadline > now - period - 1e-9
    assert schedule.skipped == total


def test_a_late_step_is_followed_by_an_early_one_and_whole_missed_slots_are_skipped():
    schedule = DeadlineSchedule(0.01, t0=0.0)
    assert schedule.advance(0.005) == 0 and schedule.next_deadline == pytest.approx(0.01)
    assert schedule.advance(0.015) == 0 and schedule.next_deadline == pytest.approx(0.02)  # catches up
    # the step ended at 55.5 ms: the 30 and 40 ms slots are skipped, the 50 ms one runs at once
    assert schedule.advance(0.0555) == 2 and schedule.next_deadline == pytest.approx(0.05)
    assert schedule.skipped == 2


def test_bad_rates_are_refused():
    with pytest.raises(ConfigError, match="period"):
        DeadlineSchedule(0.0, 0.0)
    with pytest.raises(ConfigError, match="rate"):
        PeriodicThread(lambda: None, rate=0.0)


def test_the_thread_steps_until_stopped_and_survives_a_failing_step(caplog):
    calls = []
    enough = threading.Event()

    def step():
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise RuntimeError("boom")
        if len(calls) >= 5:
            enough.set()

    loop = PeriodicThread(step, rate=200.0, name="control").start()
    try:
        assert enough.wait(10.0)
        assert loop.running
        with pytest.raises(ConfigError, match="already running"):
            loop.start()
    finally:
        loop.stop()
    assert not loop.running
    n = len(calls)
    assert set(calls) == {"control"}  # on its own thread, never the caller's
    assert "step failed (RuntimeError)" in caplog.text
    assert len(calls) == n  # nothing after stop()
    loop.stop()  # a second stop is harmless
