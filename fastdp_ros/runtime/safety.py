"""The last stage before a command leaves the runtime: limits, rate limiting, workspace, NaN guard.

Franka trips a reflex on velocity or acceleration discontinuities, so clipping positions is
not enough: every command moves at most one step of a trajectory that respects the joint
position, velocity and acceleration limits, and keeps enough room to brake before a
position limit. Anything non-finite (or a target of the wrong size) is refused: the filter
then brakes to a standstill at the acceleration limit and reports a fault, which the runner
turns into a latched stop.

Rates are per command, not per wall-clock second: the filter assumes one command every
`period` seconds. A late command therefore moves *less* than the limits allow, never more,
which is what a streaming controller (forward_command_controller, joint_trajectory_controller
fed point by point) sees.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.robots import N_ARM_JOINTS, RobotSpec

log = logging.getLogger(__name__)

#: Franka's published Cartesian limits (libfranka control parameters): translation m/s and
#: m/s^2, rotation rad/s and rad/s^2.
CARTESIAN_LIMITS: dict[str, dict[str, float]] = {
    "panda": {"translation_velocity": 1.7, "translation_acceleration": 13.0,
              "rotation_velocity": 2.5, "rotation_acceleration": 25.0},
    "fr3": {"translation_velocity": 3.0, "translation_acceleration": 9.0,
            "rotation_velocity": 2.5, "rotation_acceleration": 17.0},
}


def braking_speed(distance, acceleration, period):
    """Largest speed v with which one more step of `period` and then braking at `acceleration`
    stays within `distance`:  v*period + v^2 / (2*acceleration) <= distance.

    Braking in discrete steps never travels further than the continuous v^2/(2a), so this
    bound also holds for the filter's own stepwise braking. Written as 2d / (T + sqrt(T^2 +
    2d/a)) rather than a*(sqrt(...) - T): no cancellation for small distances.
    """
    d = np.maximum(distance, 0.0)
    return 2.0 * d / (period + np.sqrt(period * period + 2.0 * d / acceleration))


class RateLimiter:
    """Per-axis trajectory limiter: position box, velocity and acceleration bounds.

    `step(target)` returns the next command position: it heads for `target` (a feed-forward of
    the target's own motion plus a braking-aware approach) but never leaves [lower, upper],
    never exceeds `max_velocity` and never changes velocity by more than
    `max_acceleration * period` in one step. It also never moves so fast towards a bound that
    it could not stop before it: that is what keeps the three limits satisfiable together
    (see `braking_speed`). `step(None)` brakes to a standstill.
    """

    def __init__(self, lower, upper, max_velocity, max_acceleration, period: float):
        self.lower = np.asarray(lower, dtype=np.float64).copy()
        self.upper = np.asarray(upper, dtype=np.float64).copy()
        self.max_velocity = np.broadcast_to(np.asarray(max_velocity, np.float64), self.lower.shape).copy()
        self.max_acceleration = np.broadcast_to(np.asarray(max_acceleration, np.float64), self.lower.shape).copy()
        self.period = float(period)
        if not (math.isfinite(self.period) and self.period > 0):
            raise ConfigError(f"command period must be a positive number of seconds, got {period}")
        finite = np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))
        if not (finite and np.all(self.lower <= self.upper)):
            raise ConfigError("position limits must be finite with lower <= upper")
        if not (np.all(self.max_velocity > 0) and np.all(self.max_acceleration > 0)):
            raise ConfigError("velocity and acceleration limits must be positive")
        self.position = np.clip(np.zeros_like(self.lower), self.lower, self.upper)
        self.velocity = np.zeros_like(self.lower)
        self._last_target: np.ndarray | None = None

    def reset(self, position) -> None:
        """Start from rest at `position` (clipped into the limits)."""
        p = np.asarray(position, dtype=np.float64).reshape(self.lower.shape)
        if not np.all(np.isfinite(p)):
            raise ConfigError(f"cannot start the rate limiter from a non-finite position {p}")
        self.position = np.clip(p, self.lower, self.upper)
        self.velocity = np.zeros_like(self.lower)
        self._last_target = None

    def step(self, target) -> np.ndarray:
        h = self.period
        p, v, a = self.position, self.velocity, self.max_acceleration
        if target is None:
            desired = np.zeros_like(v)
            self._last_target = None
        else:
            x = np.clip(np.asarray(target, dtype=np.float64).reshape(p.shape), self.lower, self.upper)
            # Follow the target's own motion (no lag on smooth trajectories) ...
            feed_forward = np.zeros_like(v) if self._last_target is None else np.clip(
                (x - self._last_target) / h, -self.max_velocity, self.max_velocity)
            # ... and close the gap left after that motion no faster than we could brake over it
            # (no overshoot when the target stops).
            error = x - p - feed_forward * h
            desired = feed_forward + np.sign(error) * braking_speed(np.abs(error), a, h)
            self._last_target = x
        high = np.minimum(np.minimum(self.max_velocity, v + a * h), braking_speed(self.upper - p, a, h))
        low = np.maximum(np.maximum(-self.max_velocity, v - a * h), -braking_speed(p - self.lower, a, h))
        v_new = np.minimum(np.maximum(desired, low), high)
        p_new = np.clip(p + v_new * h, self.lower, self.upper)
        self.velocity = (p_new - p) / h
        self.position = p_new
        return p_new.copy()


@dataclass(frozen=True)
class WorkspaceBox:
    """An axis-aligned box (m, robot base frame) the tool centre point must stay in."""

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]

    def __post_init__(self):
        lo, hi = np.asarray(self.lower, float), np.asarray(self.upper, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)) \
                or not np.all(lo < hi):
            raise ConfigError(f"workspace box needs finite lower < upper (3 values each), "
                              f"got {self.lower}, {self.upper}")

    def contains(self, point) -> bool:
        p = np.asarray(point, dtype=np.float64)
        return bool(np.all(np.isfinite(p)) and np.all(p >= self.lower) and np.all(p <= self.upper))


@dataclass(frozen=True)
class SafeCommand:
    """What the filter lets out: 7 joint targets (rad) and a gripper width (m).

    `held`: the filter braked to / stayed at a standstill instead of following a target.
    `fault`: why a target was refused as unsafe (non-finite, wrong size); the runner latches a
    stop on it. `reason`: any other note (outside the workspace, hold requested).
    """

    q: np.ndarray
    gripper: float
    held: bool
    fault: str | None = None
    reason: str | None = None


class SafetyFilter:
    """Joint position, velocity and acceleration limits, gripper range and speed, workspace box.

    `robot` gives the limits (scaled by `velocity_scale` / `acceleration_scale` in (0, 1]);
    `period` is the command period (1 / control rate). With `workspace` and `fk` (joint
    positions -> TCP position) a joint target whose TCP lies outside the box is not followed:
    the arm brakes and holds until targets come back inside.
    """

    def __init__(self, robot: RobotSpec, period: float, workspace: WorkspaceBox | None = None, fk=None,
                 velocity_scale: float = 1.0, acceleration_scale: float = 1.0):
        for name, s in (("velocity_scale", velocity_scale), ("acceleration_scale", acceleration_scale)):
            if not (0.0 < float(s) <= 1.0):
                raise ConfigError(f"{name} must be in (0, 1], got {s}")
        if (workspace is None) != (fk is None) and workspace is not None:
            raise ConfigError("a workspace box on joint commands needs a forward-kinematics function (fk)")
        self.robot = robot
        self.period = float(period)
        self.joints = RateLimiter(robot.lower, robot.upper, robot.max_velocity * velocity_scale,
                                  robot.max_acceleration * acceleration_scale, period)
        self.gripper_range = (float(robot.gripper_width_range[0]), float(robot.gripper_width_range[1]))
        self.gripper_step = float(robot.gripper_speed) * self.period
        self.workspace = workspace
        self.fk = fk
        self.gripper = self.gripper_range[1]
        self.started = False
        self.counts = {"commands": 0, "held": 0, "faults": 0, "limited": 0, "outside_workspace": 0}
        self.last: SafeCommand | None = None

    @property
    def action_dim(self) -> int:
        return N_ARM_JOINTS + 1

    def reset(self, q, gripper: float) -> SafeCommand:
        """Start from the measured joint positions and gripper width, at rest."""
        self.joints.reset(q)
        g = float(gripper)
        if not math.isfinite(g):
            raise ConfigError(f"cannot start the safety filter from a non-finite gripper width {gripper}")
        self.gripper = float(np.clip(g, *self.gripper_range))
        self.started = True
        self.last = SafeCommand(self.joints.position.copy(), self.gripper, held=True, reason="start")
        return self.last

    def hold(self, reason: str | None = None) -> SafeCommand:
        """Brake to (or stay at) a standstill."""
        return self._step(None, reason=reason)

    def step(self, target) -> SafeCommand:
        """One command towards `target` = 7 joint positions + gripper width, or None (hold)."""
        if target is None:
            return self._step(None, reason="no target")
        try:
            x = np.asarray(target, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return self._step(None, fault=f"target is not numeric: {target!r}")
        if x.shape != (self.action_dim,):
            return self._step(None, fault=f"target has {x.size} values, expected {self.action_dim} "
                                          f"(7 joint positions + gripper width)")
        if not np.all(np.isfinite(x)):
            return self._step(None, fault=f"non-finite target {np.array2string(x, precision=3)}")
        if self.workspace is not None:
            tcp = np.asarray(self.fk(np.clip(x[:N_ARM_JOINTS], self.joints.lower, self.joints.upper)))
            if not self.workspace.contains(tcp):
                self.counts["outside_workspace"] += 1
                return self._step(None, reason=f"target TCP {np.round(tcp, 3).tolist()} outside the workspace box")
        return self._step(x)

    def _step(self, x, fault: str | None = None, reason: str | None = None) -> SafeCommand:
        if not self.started:
            raise ConfigError("SafetyFilter.reset(q, gripper) must be called with the measured state first")
        self.counts["commands"] += 1
        if x is None:
            q = self.joints.step(None)
            self.counts["held"] += 1
            if fault:
                self.counts["faults"] += 1
            self.last = SafeCommand(q, self.gripper, held=True, fault=fault, reason=reason)
            return self.last
        q = self.joints.step(x[:N_ARM_JOINTS])
        w_target = float(np.clip(x[N_ARM_JOINTS], *self.gripper_range))
        self.gripper = float(np.clip(self.gripper + np.clip(w_target - self.gripper, -self.gripper_step,
                                                             self.gripper_step), *self.gripper_range))
        if not (np.allclose(q, x[:N_ARM_JOINTS], atol=1e-9) and abs(self.gripper - x[N_ARM_JOINTS]) < 1e-9):
            self.counts["limited"] += 1
        self.last = SafeCommand(q, self.gripper, held=False)
        return self.last


# ---------------------------------------------------------------------------- Cartesian targets


def _quat_mul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _quat_log(q) -> np.ndarray:
    """Rotation vector (axis * angle, |angle| <= pi) of a unit quaternion wxyz."""
    q = q if q[0] >= 0 else -q
    s = float(np.linalg.norm(q[1:]))
    if s < 1e-12:
        return 2.0 * q[1:]
    return (2.0 * math.atan2(s, float(q[0])) / s) * q[1:]


def _quat_exp(r) -> np.ndarray:
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.array([1.0, *(0.5 * r)]) / np.linalg.norm([1.0, *(0.5 * r)])
    return np.array([math.cos(angle / 2), *(math.sin(angle / 2) / angle * r)])


@dataclass(frozen=True)
class SafePose:
    """A filtered Cartesian target: position (m) and orientation quaternion wxyz."""

    position: np.ndarray
    quat: np.ndarray
    held: bool
    fault: str | None = None


class CartesianSafetyFilter:
    """Rate limits and a workspace box for Cartesian pose targets (impedance controllers).

    Translation uses `RateLimiter` per axis with the box as its position limits and Franka's
    translational limits divided by sqrt(3), so the speed and acceleration of the *vector*
    stay within them. Orientation turns at most `rotation_velocity` and changes its angular
    velocity by at most `rotation_acceleration * period` per step, approaching the target no
    faster than it could brake. Non-finite targets or a zero quaternion: brake and report.
    """

    def __init__(self, robot: RobotSpec, period: float, workspace: WorkspaceBox):
        limits = CARTESIAN_LIMITS[robot.name]
        k = 1.0 / math.sqrt(3.0)
        self.period = float(period)
        self.workspace = workspace
        self.translation = RateLimiter(workspace.lower, workspace.upper, limits["translation_velocity"] * k,
                                       limits["translation_acceleration"] * k, period)
        self.max_rotation_velocity = limits["rotation_velocity"]
        self.max_rotation_acceleration = limits["rotation_acceleration"]
        self.quat = np.array([1.0, 0.0, 0.0, 0.0])
        self.angular_velocity = np.zeros(3)
        self.started = False

    def reset(self, position, quat) -> None:
        q = np.asarray(quat, dtype=np.float64)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9:
            raise ConfigError(f"cannot start from orientation {quat}: need a finite non-zero quaternion wxyz")
        self.translation.reset(position)
        self.quat = q / np.linalg.norm(q)
        self.angular_velocity = np.zeros(3)
        self.started = True

    def step(self, position, quat) -> SafePose:
        if not self.started:
            raise ConfigError("CartesianSafetyFilter.reset(position, quat) must be called first")
        fault = None
        try:
            p = np.asarray(position, dtype=np.float64).reshape(3)
            q = np.asarray(quat, dtype=np.float64).reshape(4)
        except (TypeError, ValueError):
            p, q, fault = None, None, "pose target is not 3 + 4 numbers"
        if fault is None and not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            fault = "non-finite pose target"
        if fault is None and _norm(q) < 1e-9:
            fault = "zero quaternion in pose target"
        h = self.period
        if fault is None:
            pos = self.translation.step(p)
            unit = q / np.max(np.abs(q))  # scale first: |q| of huge components would overflow
            error = _quat_log(_quat_mul(_conj(self.quat), unit / np.linalg.norm(unit)))
            angle = float(np.linalg.norm(error))
            desired = np.zeros(3) if angle < 1e-12 else error / angle * braking_speed(
                angle, self.max_rotation_acceleration, h)
        else:
            pos = self.translation.step(None)
            desired = np.zeros(3)
        change = desired - self.angular_velocity
        n = float(np.linalg.norm(change))
        if n > self.max_rotation_acceleration * h:
            change *= self.max_rotation_acceleration * h / n
        w = self.angular_velocity + change
        speed = float(np.linalg.norm(w))
        if speed > self.max_rotation_velocity:
            w *= self.max_rotation_velocity / speed
        self.angular_velocity = w
        self.quat = _quat_mul(self.quat, _quat_exp(w * h))
        self.quat /= np.linalg.norm(self.quat)
        return SafePose(pos, self.quat.copy(), held=fault is not None, fault=fault)


def _norm(x) -> float:
    """Euclidean norm without overflow for huge finite components."""
    m = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return 0.0 if m == 0.0 else m * float(np.linalg.norm(np.asarray(x) / m))


def _conj(q):
    return np.array([q[0], -q[1], -q[2], -q[3]])
