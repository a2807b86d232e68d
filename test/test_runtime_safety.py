"""SafetyFilter: for any targets (NaN, inf, huge) the commands respect position, velocity and
acceleration limits; smooth targets are tracked exactly; faults brake to a standstill."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdp_ros.errors import ConfigError
from fastdp_ros.robots import FR3, PANDA
from fastdp_ros.runtime.safety import (
    CARTESIAN_LIMITS,
    CartesianSafetyFilter,
    RateLimiter,
    SafetyFilter,
    WorkspaceBox,
    _norm,
    braking_speed,
)

ROBOTS = {"fr3": FR3, "panda": PANDA}

# Any float a buggy policy could produce, NaN and infinities included, plus values near the limits.
any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-4.0, max_value=4.0),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf]),
)
target = st.one_of(st.none(), st.lists(any_float, min_size=8, max_size=8), st.lists(any_float, min_size=0, max_size=9))


def check_sequence(robot, period, q0, w0, targets):
    f = SafetyFilter(robot, period)
    first = f.reset(q0, w0)
    lo, hi = robot.lower, robot.upper
    vmax, amax = robot.max_velocity, robot.max_acceleration
    q_prev, v_prev, w_prev = first.q, np.zeros(7), first.gripper
    eps = 1e-9
    for x in targets:
        c = f.step(x)
        assert np.all(np.isfinite(c.q)) and math.isfinite(c.gripper)
        assert np.all(c.q >= lo - eps) and np.all(c.q <= hi + eps), c.q
        v = (c.q - q_prev) / period
        assert np.all(np.abs(v) <= vmax * (1 + 1e-9) + 1e-9), (v, vmax)
        acc = (v - v_prev) / period
        assert np.all(np.abs(acc) <= amax * (1 + 1e-6) + 1e-6), (acc, amax)
        assert robot.gripper_width_range[0] - eps <= c.gripper <= robot.gripper_width_range[1] + eps
        assert abs(c.gripper - w_prev) <= robot.gripper_speed * period + eps
        arr = None if x is None else np.asarray(x, dtype=float)
        if arr is not None and (arr.shape != (8,) or not np.all(np.isfinite(arr))):
            assert c.held and c.fault
        q_prev, v_prev, w_prev = c.q, v, c.gripper


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(robot=st.sampled_from(sorted(ROBOTS)), rate=st.sampled_from([10.0, 30.0, 60.0, 100.0, 1000.0]),
       start=st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7), w0=any_float,
       targets=st.lists(target, max_size=60))
def test_filter_output_respects_limits_for_any_input(robot, rate, start, w0, targets):
    robot = ROBOTS[robot]
    q0 = robot.lower + np.asarray(start) * (robot.upper - robot.lower)
    if not math.isfinite(w0):
        with pytest.raises(ConfigError):
            SafetyFilter(robot, 1 / rate).reset(q0, w0)
        return
    check_sequence(robot, 1.0 / rate, q0, w0, targets)


@pytest.mark.parametrize("robot", sorted(ROBOTS))
@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_driving_into_a_limit_at_full_speed_brakes_in_time(robot, side):
    """The worst case for 'clip + rate limit': full speed towards a position limit, every joint."""
    robot = ROBOTS[robot]
    far = np.where(side > 0, robot.upper, robot.lower) + side * 10.0
    for joint in range(7):
        check_sequence(robot, 1 / 60, robot.home_position, 0.04, _towards(robot, far, joint))


def _towards(robot, far, joint):
    targets = []
    for _ in range(300):
        x = robot.home_position.copy()
        x[joint] = far[joint]
        targets.append(np.r_[x, 0.04])
    return targets


def test_smooth_targets_are_tracked_exactly_and_steps_without_overshoot():
    h = 1 / 60
    f = SafetyFilter(PANDA, h)
    f.reset(PANDA.home_position, 0.04)
    errors = []
    for k in range(600):
        x = PANDA.home_position + 0.3 * np.sin(2 * np.pi * 0.5 * k * h)
        errors.append(np.abs(f.step(np.r_[x, 0.04]).q - x).max())
    assert max(errors[120:]) < 1e-9  # after the start-up transient the feed-forward follows exactly
    f.reset(PANDA.home_position, 0.04)
    goal = PANDA.home_position + 0.8
    qs = np.array([f.step(np.r_[goal, 0.08]).q for _ in range(300)])
    assert np.all(qs - goal <= 1e-12)  # approaches without overshoot
    np.testing.assert_allclose(qs[-1], goal, atol=1e-12)


def test_non_finite_target_brakes_to_a_standstill_and_reports_a_fault():
    h = 1 / 60
    f = SafetyFilter(FR3, h)
    f.reset(FR3.home_position, 0.04)
    moving = FR3.home_position.copy()
    for _ in range(30):  # get the arm moving
        moving[0] += 0.02
        f.step(np.r_[moving, 0.04])
    assert np.abs(f.joints.velocity).max() > 0.5
    out = [f.step(np.r_[moving[:6], np.nan, 0.04]) for _ in range(60)]
    assert all(c.held and "non-finite" in c.fault for c in out)
    assert np.all(f.joints.velocity == 0.0)
    np.testing.assert_array_equal(out[-1].q, out[-2].q)
    assert f.counts["faults"] == 60


def test_workspace_box_holds_targets_outside():
    box = WorkspaceBox(lower=(0.2, -0.5, 0.05), upper=(0.9, 0.5, 0.9))
    tcp = {"z": 0.3}
    f = SafetyFilter(PANDA, 1 / 60, workspace=box, fk=lambda q: np.array([0.5, 0.0, tcp["z"]]))
    f.reset(PANDA.home_position, 0.04)
    assert not f.step(np.r_[PANDA.home_position, 0.04]).held
    tcp["z"] = 0.0  # the target would put the TCP into the table
    c = f.step(np.r_[PANDA.home_position + 0.1, 0.04])
    assert c.held and c.fault is None and "workspace" in c.reason
    assert f.counts["outside_workspace"] == 1
    with pytest.raises(ConfigError, match="forward-kinematics"):
        SafetyFilter(PANDA, 1 / 60, workspace=box)


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="period"):
        SafetyFilter(PANDA, 0.0)
    with pytest.raises(ConfigError, match="velocity_scale"):
        SafetyFilter(PANDA, 1 / 60, velocity_scale=1.5)
    with pytest.raises(ConfigError, match="reset"):
        SafetyFilter(PANDA, 1 / 60).step(np.zeros(8))
    with pytest.raises(ConfigError, match="non-finite"):
        SafetyFilter(PANDA, 1 / 60).reset(np.full(7, np.nan), 0.04)
    with pytest.raises(ConfigError, match="workspace"):
        WorkspaceBox(lower=(0, 0, 1), upper=(1, 1, 0))


def test_braking_speed_stops_within_distance():
    for d in (0.0, 1e-12, 1e-3, 0.1, 2.0):
        for a in (7.5, 20.0):
            for h in (1e-3, 1 / 60, 0.1):
                v = braking_speed(d, a, h)
                assert v * h + v * v / (2 * a) <= d * (1 + 1e-12) + 1e-15


@settings(max_examples=100, deadline=None)
@given(robot=st.sampled_from(sorted(ROBOTS)),
       targets=st.lists(st.tuples(st.lists(any_float, min_size=3, max_size=3),
                                  st.lists(any_float, min_size=4, max_size=4)), max_size=40))
def test_cartesian_filter_stays_in_box_and_within_rates(robot, targets):
    limits = CARTESIAN_LIMITS[robot]
    box = WorkspaceBox(lower=(0.2, -0.5, 0.05), upper=(0.9, 0.5, 0.9))
    h = 1 / 60
    f = CartesianSafetyFilter(ROBOTS[robot], h, box)
    f.reset([0.5, 0.0, 0.4], [0.0, 1.0, 0.0, 0.0])
    p_prev, q_prev, v_prev = np.array([0.5, 0.0, 0.4]), np.array([0.0, 1.0, 0.0, 0.0]), np.zeros(3)
    for p, q in targets:
        out = f.step(p, q)
        assert np.all(out.position >= np.asarray(box.lower) - 1e-12)
        assert np.all(out.position <= np.asarray(box.upper) + 1e-12)
        v = (out.position - p_prev) / h
        assert np.linalg.norm(v) <= limits["translation_velocity"] * (1 + 1e-9)
        assert np.linalg.norm(v - v_prev) / h <= limits["translation_acceleration"] * (1 + 1e-6) + 1e-6
        assert abs(np.linalg.norm(out.quat) - 1) < 1e-9
        angle = 2 * math.acos(min(1.0, abs(float(np.dot(out.quat, q_prev)))))
        assert angle / h <= limits["rotation_velocity"] * (1 + 1e-6) + 1e-6
        bad = not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))) or _norm(q) < 1e-9
        assert out.held == bool(bad)
        p_prev, q_prev, v_prev = out.position, out.quat, v


def test_rate_limiter_state_stays_put_when_holding():
    r = RateLimiter([-1.0], [1.0], [1.0], [10.0], 0.01)
    r.reset([0.5])
    for _ in range(10):
        assert r.step(None)[0] == 0.5
