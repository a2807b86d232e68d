"""Scripted experts for the simulated tasks: waypoints, smooth Cartesian motion, differential IK.

Each expert keeps its own joint command ``q_cmd`` (real Panda coordinates) and moves it a
little every control step: a Cartesian reference of the TCP is driven toward the current
waypoint with a speed cap and an acceleration cap, and damped least squares on the TCP
Jacobian (``mujoco.mj_jacSite``) turns the reference into joint targets (plus a drift toward
the rest posture in the Jacobian's null space); the joint command's velocity and acceleration
are capped at half the Panda's limits and its position kept inside the limits, and the hand's
width command moves at most at the hand's speed. Commands therefore never jump.

The push expert is deliberately multimodal: per episode it draws a side (left or right of the
push line) and comes down beside the cube on that side before sliding behind it. The
pick-and-place expert draws one of the two grasp orientations of the cube (finger axis along
one face pair or the other). The pick_place_around expert draws the side (left or right) on
which it carries the cube round the post; carrying straight, the average of the two, hits it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.robots import PANDA
from fastdp_ros.sim.scene import mat_to_quat
from fastdp_ros.sim.tasks import SAFE_Z, TASKS, FrankaEnv, make_env, yaw_of_quat

log = logging.getLogger(__name__)

_DOWN = np.diag([1.0, -1.0, -1.0])  # TCP orientation at yaw 0: gripper pointing down


def down_rotation(yaw: float) -> np.ndarray:
    """TCP rotation for a gripper pointing straight down, rotated ``yaw`` about world z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ _DOWN


def rotvec(rot: np.ndarray) -> np.ndarray:
    """Axis * angle of a rotation matrix."""
    cos = max(-1.0, min(1.0, (np.trace(rot) - 1.0) / 2.0))
    angle = math.acos(cos)
    v = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if angle < 1e-9:
        return 0.5 * v
    if math.pi - angle < 1e-6:  # 180 degrees: axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(rot) + 1.0) / 2.0, 0.0))
        k = int(np.argmax(axis))
        for j in range(3):
            if j != k:
                axis[j] = math.copysign(axis[j], rot[k, j] + rot[j, k])
        return angle * axis / np.linalg.norm(axis)
    return angle * v / (2.0 * math.sin(angle))


def exp_rot(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (Rodrigues)."""
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return np.eye(3)
    k = w / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * kx @ kx


def tcp_yaw(rot: np.ndarray) -> float:
    """Yaw of a (roughly downward) TCP rotation: the angle of its x axis in the table plane."""
    return math.atan2(rot[1, 0], rot[0, 0])


def wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def nearest_equivalent(yaw: float, period: float, reference: float) -> float:
    """The angle ``yaw + k*period`` closest to ``reference``."""
    return reference + wrap((yaw - reference) * (2.0 * math.pi / period)) * period / (2.0 * math.pi)


class ScriptedExpert:
    """Base: Cartesian waypoint following through damped-least-squares IK.

    Subclasses implement :meth:`plan`, returning ``(position, yaw, width, speed)`` for the
    TCP; ``act(env)`` returns ``(action (8,), action_cartesian (8,))``.
    """

    v_max = 0.30          # m/s, TCP speed cap
    a_max = 1.5           # m/s^2, TCP acceleration cap
    w_max = 1.5           # rad/s, TCP rotation speed cap
    alpha_max = 5.0       # rad/s^2, TCP rotation acceleration cap
    gain = 4.0            # 1/s, proportional approach to the waypoint
    joint_speed_fraction = 0.5  # of the Panda's joint velocity limits
    joint_accel_fraction = 0.5  # of the Panda's joint acceleration limits
    damping = 0.03        # DLS damping (m)
    nullspace_gain = 1.0  # 1/s, pull toward the rest posture in the null space
    limit_margin = 0.05   # rad kept from the joint limits

    def __init__(self, env: FrankaEnv, rng: np.random.Generator):
        self.env = env
        self.sim = env.sim
        self.rng = rng
        self.dt = env.dt
        self.q_cmd = self.sim.joint_positions()
        self.w_cmd = self.sim.gripper_width()
        self.p_ref, self.R_ref = self.sim.fk(self.q_cmd)
        self.v_ref = np.zeros(3)
        self.w_ref = np.zeros(3)
        self.qd_cmd = np.zeros(7)  # joint command velocity of the last step
        self.q_rest = PANDA.home_position.copy()
        self.phase = 0
        self.phase_steps = 0
        self.mode = 0

    # ----------------------------------------------------------------- to implement

    def plan(self, env: FrankaEnv) -> tuple[np.ndarray, float, float, float]:
        raise NotImplementedError

    # ----------------------------------------------------------------- machinery

    def next_phase(self, phase: int | None = None) -> None:
        self.phase = self.phase + 1 if phase is None else phase
        self.phase_steps = 0

    def act(self, env: FrankaEnv) -> tuple[np.ndarray, np.ndarray]:
        p_goal, yaw_goal, w_goal, speed = self.plan(env)
        self.phase_steps += 1
        dt = self.dt

        # Cartesian reference: P-approach, speed cap, acceleration cap.
        v_des = self.gain * (np.asarray(p_goal, dtype=np.float64) - self.p_ref)
        n = np.linalg.norm(v_des)
        cap = min(speed, self.v_max)
        if n > cap:
            v_des *= cap / n
        dv = v_des - self.v_ref
        n = np.linalg.norm(dv)
        if n > self.a_max * dt:
            dv *= self.a_max * dt / n
        self.v_ref = self.v_ref + dv
        p_next = self.p_ref + self.v_ref * dt

        yaw_goal = nearest_equivalent(yaw_goal, 2.0 * math.pi, tcp_yaw(self.R_ref))
        e_rot = rotvec(down_rotation(yaw_goal) @ self.R_ref.T)
        w = self.gain * e_rot
        n = np.linalg.norm(w)
        if n > self.w_max:
            w *= self.w_max / n
        dw = w - self.w_ref
        n = np.linalg.norm(dw)
        if n > self.alpha_max * dt:
            dw *= self.alpha_max * dt / n
        self.w_ref = self.w_ref + dw
        R_next = exp_rot(self.w_ref * dt) @ self.R_ref

        q = self._ik(p_next, R_next)
        self.p_ref, self.R_ref = self.sim.fk(q)
        self.q_cmd = q

        w_goal = float(np.clip(w_goal, *self.sim.width_range))
        step = PANDA.gripper_speed * dt
        self.w_cmd += float(np.clip(w_goal - self.w_cmd, -step, step))

        action = np.concatenate([self.q_cmd, [self.w_cmd]])
        quat = self.sim.canonical_quat(mat_to_quat(self.R_ref))
        action_cartesian = np.concatenate([self.p_ref, quat, [self.w_cmd]])
        return action, action_cartesian

    def _ik(self, p_des: np.ndarray, R_des: np.ndarray, iterations: int = 3) -> np.ndarray:
        q = self.q_cmd.copy()
        lam2 = self.damping ** 2
        for _ in range(iterations):
            p, R, J = self.sim.tcp_jacobian(q)
            err = np.concatenate([p_des - p, rotvec(R_des @ R.T)])
            q = q + J.T @ np.linalg.solve(J @ J.T + lam2 * np.eye(6), err)
        # Posture: drift toward the rest posture in the Jacobian's null space (the exact
        # projector, so the TCP does not move).
        _, _, J = self.sim.tcp_jacobian(q)
        projector = np.eye(7) - np.linalg.pinv(J, rcond=1e-4) @ J
        q = q + projector @ (self.nullspace_gain * self.dt * (self.q_rest - q))
        # Joint speed and acceleration caps (uniform scaling keeps the direction), then the
        # position limits.
        dt = self.dt
        qd = (q - self.q_cmd) / dt
        scale = float(np.max(np.abs(qd) / (self.joint_speed_fraction * PANDA.max_velocity)))
        if scale > 1.0:
            qd /= scale
        dqd = qd - self.qd_cmd
        scale = float(np.max(np.abs(dqd) / (self.joint_accel_fraction * PANDA.max_acceleration
                                             * dt)))
        if scale > 1.0:
            qd = self.qd_cmd + dqd / scale
        q = np.clip(self.q_cmd + qd * dt, PANDA.lower + self.limit_margin,
                    PANDA.upper - self.limit_margin)
        self.qd_cmd = (q - self.q_cmd) / dt
        return q

    def tcp_xy_error(self, xy) -> float:
        return float(np.linalg.norm(self.sim.tcp_position()[:2] - np.asarray(xy)[:2]))


class ReachExpert(ScriptedExpert):
    """Straight to the target with the gripper pointing down."""

    def __init__(self, env, rng):
        super().__init__(env, rng)
        self.yaw = 0.0

    def plan(self, env):
        return env.goal, self.yaw, self.sim.width_range[1], self.v_max


class PushExpert(ScriptedExpert):
    """Come down beside the cube (left or right of the push line: ``mode`` 0 / 1), slide
    behind it and push it to the goal with the closed fingers.

    While pushing, the expert steers the cube back onto the line along which the push started
    (through the goal), re-aiming every step in proportion to the cube's lateral error; the
    aim does not swing around as the cube nears the goal. The hand moves in the steered
    direction itself (the finger-cube contact sticks), not toward the cube's centre. If the
    cube slips off the fingers or passes the goal, the hand lifts, moves over the new push
    start and comes down there.
    """

    z_push = 0.022       # TCP height while pushing (fingertips ~1 cm above the table)
    v_push = 0.12        # m/s
    finger_half = 0.018  # half thickness of the closed fingers along the push direction
    steer_gain = 12.0    # rad of push direction change per m of lateral error
    centring = 0.3       # weak pull of the hand onto the cube's centre line
    contact_along = 0.045  # cube centre ahead of the TCP when in contact (m)

    SIDE_HIGH, SIDE_DOWN, BEHIND, PUSH, LIFT, OVER_START, START_DOWN = range(7)

    def __init__(self, env, rng):
        super().__init__(env, rng)
        self.mode = int(rng.integers(2))
        self.side = 1.0 if self.mode == 0 else -1.0
        self.half = self.sim.config.cube_half_size
        self.u0 = None  # push line direction, fixed when a push starts

    @staticmethod
    def _unit(v) -> np.ndarray:
        n = float(np.linalg.norm(v))
        return v / n if n > 1e-6 else np.array([1.0, 0.0])

    def plan(self, env):
        cube = self.sim.cube_pose()[:2]
        goal = env.goal[:2]
        tcp = self.sim.tcp_position()
        z = self.z_push
        if self.phase != self.PUSH:
            self.u0 = None
        if self.u0 is None:
            u = self._unit(goal - cube)
        else:
            # Steer back onto the push line: direction along it, minus the lateral error.
            n0 = np.array([-self.u0[1], self.u0[0]])
            e_lat = float(np.dot(cube - goal, n0))
            correction = float(np.clip(self.steer_gain * e_lat, -0.7, 0.7))
            u = self._unit(self.u0 - correction * n0)
        normal = np.array([-u[1], u[0]])
        # The closed fingers' flat side faces the push direction (the hand is symmetric under
        # a half turn: take the yaw nearest to the current one, within +-2 rad of home).
        current = tcp_yaw(self.sim.tcp_rotation())
        yaw = nearest_equivalent(math.atan2(u[1], u[0]), math.pi, current)
        if abs(yaw) > 2.0:
            yaw -= math.copysign(math.pi, yaw)
        push_yaw = yaw
        if self.u0 is not None:  # keep the pusher's face still while pushing
            push_yaw = nearest_equivalent(math.atan2(self.u0[1], self.u0[0]), math.pi, current)
            if abs(push_yaw) > 2.0:
                push_yaw -= math.copysign(math.pi, push_yaw)
        start = cube - u * (self.half + self.finger_half + 0.03)
        side = cube - u * 0.01 + self.side * normal * (self.half + 0.07)

        if self.phase == self.SIDE_HIGH:  # over the side point, hand closing
            if self.tcp_xy_error(side) < 0.02:
                self.next_phase(self.SIDE_DOWN)
            return np.r_[side, SAFE_Z], yaw, 0.0, self.v_max
        if self.phase == self.SIDE_DOWN:  # down beside the cube
            if tcp[2] < z + 0.01:
                self.next_phase(self.BEHIND)
            return np.r_[side, z], yaw, 0.0, self.v_max
        if self.phase == self.BEHIND:  # slide behind the cube
            if self.tcp_xy_error(start) < 0.012:
                self.next_phase(self.PUSH)
                self.u0 = self._unit(goal - cube)
            return np.r_[start, z], yaw, 0.0, 0.2
        if self.phase == self.PUSH:
            behind = cube - tcp[:2]
            lateral = abs(float(np.dot(behind, normal)))
            along = float(np.dot(behind, u))
            passed = float(np.dot(goal - cube, self.u0)) < -0.01
            if along < 0.0 or lateral > self.half + 0.02 or passed:
                self.next_phase(self.LIFT)  # lost the cube, or pushed it too far
                return np.r_[tcp[:2], SAFE_Z], yaw, 0.0, 0.2
            # The finger-cube contact mostly sticks (friction ~1), so the cube moves with the
            # hand: drive the hand along the steered direction, with a weak centring term.
            target = tcp[:2] + u * 0.05 + self.centring * (along - self.contact_along) * u \
                + self.centring * float(np.dot(behind, normal)) * normal
            dist = float(np.linalg.norm(goal - cube))
            return np.r_[target, z], push_yaw, 0.0, min(self.v_push, 0.04 + dist)
        if self.phase == self.LIFT:
            if tcp[2] > SAFE_Z - 0.02:
                self.next_phase(self.OVER_START)
            return np.r_[tcp[:2], SAFE_Z], yaw, 0.0, 0.2
        if self.phase == self.OVER_START:
            if self.tcp_xy_error(start) < 0.01:
                self.next_phase(self.START_DOWN)
            return np.r_[start, SAFE_Z], yaw, 0.0, self.v_max
        if self.phase == self.START_DOWN:
            if tcp[2] < z + 0.01:
                self.next_phase(self.PUSH)
                self.u0 = self._unit(goal - cube)
            return np.r_[start, z], yaw, 0.0, 0.2
        return np.r_[tcp[:2], z], yaw, 0.0, self.v_max


class PickPlaceExpert(ScriptedExpert):
    """Grasp the cube from above (one of its two grasp orientations: ``mode`` 0 / 1), carry it
    to the target, put it down, open and retreat."""

    z_grasp_offset = -0.005  # TCP below the cube centre when grasping

    ABOVE, DOWN, CLOSE, LIFT, CARRY, LOWER, OPEN, RETREAT = range(8)

    def __init__(self, env, rng):
        super().__init__(env, rng)
        self.mode = int(rng.integers(2))
        self.half = self.sim.config.cube_half_size
        self.hold_offset = np.zeros(3)  # cube centre - TCP while held
        self.open_width = self.sim.width_range[1]
        self.yaw = self._grasp_yaw()

    def _grasp_yaw(self) -> float:
        cube_yaw = yaw_of_quat(self.sim.cube_pose()[3:])
        return nearest_equivalent(cube_yaw + self.mode * math.pi / 2, math.pi, 0.0)

    def plan(self, env):
        cube = self.sim.cube_pose()[:3]
        tcp = self.sim.tcp_position()
        target = env.goal
        open_w = self.open_width
        z_grasp = self.half + self.z_grasp_offset

        if self.phase == self.ABOVE:  # above the cube, open, aligned with a face pair
            self.yaw = self._grasp_yaw()
            yaw_err = abs(wrap(tcp_yaw(self.sim.tcp_rotation()) - self.yaw))
            if self.tcp_xy_error(cube) < 0.008 and yaw_err < 0.05 and tcp[2] < SAFE_Z + 0.02:
                self.next_phase()
            return np.r_[cube[:2], SAFE_Z], self.yaw, open_w, self.v_max
        if self.phase == self.DOWN:  # down around the cube
            goal = np.r_[cube[:2], z_grasp]
            settled = self.phase_steps * self.dt > 1.5 and abs(tcp[2] - z_grasp) < 0.012
            if (abs(tcp[2] - z_grasp) < 0.006 or settled) and self.tcp_xy_error(cube) < 0.008:
                self.next_phase()
            return goal, self.yaw, open_w, 0.2
        if self.phase == self.CLOSE:
            goal = np.r_[cube[:2], z_grasp]
            left, right = self.sim.finger_contacts()
            if self.w_cmd <= 0.0 and left and right and self.phase_steps >= 8:
                self.hold_offset = cube - tcp
                self.next_phase()
            return goal, self.yaw, 0.0, 0.05
        if self.phase == self.LIFT:
            if tcp[2] > SAFE_Z - 0.015:
                self.next_phase()
            return np.r_[tcp[:2], SAFE_Z], self.yaw, 0.0, 0.2
        place_xy = target[:2] - self.hold_offset[:2]
        if self.phase == self.CARRY:
            if self.tcp_xy_error(place_xy) < 0.008:
                self.next_phase()
            return np.r_[place_xy, SAFE_Z], self.yaw, 0.0, self.v_max
        z_place = self.half + 0.004 - self.hold_offset[2]
        if self.phase == self.LOWER:
            if cube[2] < self.half + 0.006 or abs(tcp[2] - z_place) < 0.004:
                self.next_phase()
            return np.r_[place_xy, z_place], self.yaw, 0.0, 0.15
        if self.phase == self.OPEN:
            if self.sim.gripper_width() > 2 * self.half + 0.015:
                self.next_phase()
            return np.r_[place_xy, z_place], self.yaw, open_w, 0.1
        return np.r_[place_xy, SAFE_Z], self.yaw, open_w, 0.2  # retreat


class PickPlaceAroundExpert(PickPlaceExpert):
    """pick_place_around: grasp as :class:`PickPlaceExpert`, then carry the cube around the post
    on the left (``mode`` 0) or the right (``mode`` 1) of the cube -> target line.

    The carry passes two waypoints beside the post, before and after its centre, at
    :attr:`clearance` from it across the line (the post's half width + the cube's half diagonal +
    :attr:`margin`); the hand itself is above the post's top. The grasp orientation is not
    random here: the finger axis goes across the line, so that the hand, long along that axis
    (+-0.10 m), keeps its narrow side to the post while it is down at the cube or the target.
    ``straight=True`` carries along the line itself, the average of the two modes (for tests:
    it runs into the post); ``mode`` is still drawn then, but not used.
    """

    margin = 0.03

    ABOVE, DOWN, CLOSE, LIFT, PASS_IN, PASS_OUT, CARRY, LOWER, OPEN, RETREAT = range(10)

    def __init__(self, env, rng, straight: bool = False):
        cube, goal = env.sim.cube_pose()[:2], env.goal[:2]
        self.line = (goal - cube) / np.linalg.norm(goal - cube)
        super().__init__(env, rng)  # draws the mode; the grasp yaw follows self.line
        self.side = 0.0 if straight else (1.0 if self.mode == 0 else -1.0)
        post_half = self.sim.config.obstacle_half_width
        self.clearance = post_half + math.sqrt(2.0) * self.half + self.margin
        # The waypoints lie this far before / after the post's centre along the line: the cube
        # passes the post's corners with the same margin.
        self.pass_along = post_half + math.sqrt(2.0) * self.half

    def _grasp_yaw(self) -> float:
        # Of the cube's two face pairs, the one whose grasp puts the finger axis across the line
        # (TCP yaw along the line; the hand is symmetric under a half turn).
        cube_yaw = yaw_of_quat(self.sim.cube_pose()[3:])
        line_yaw = math.atan2(self.line[1], self.line[0])
        return nearest_equivalent(nearest_equivalent(cube_yaw, math.pi / 2, line_yaw), math.pi, 0.0)

    def plan(self, env):
        if self.phase not in (self.PASS_IN, self.PASS_OUT):
            return super().plan(env)
        post = self.sim.obstacle_position()[:2]
        normal = np.array([-self.line[1], self.line[0]])  # to the left of the line
        along = -1.0 if self.phase == self.PASS_IN else 1.0
        cube_xy = post + self.side * self.clearance * normal + along * self.pass_along * self.line
        waypoint = cube_xy - self.hold_offset[:2]
        if self.tcp_xy_error(waypoint) < 0.02:
            self.next_phase()
        return np.r_[waypoint, SAFE_Z], self.yaw, 0.0, self.v_max


_EXPERTS = {"reach": ReachExpert, "push": PushExpert, "pick_place": PickPlaceExpert,
            "pick_place_around": PickPlaceAroundExpert}


def make_expert(task_name: str, env: FrankaEnv, rng: np.random.Generator | int | None = None):
    """The scripted expert of ``task_name`` for the episode ``env`` was just reset to.

    Create a new expert after every ``env.reset``. ``rng`` draws the expert's mode.
    """
    try:
        cls = _EXPERTS[task_name]
    except (KeyError, TypeError):
        raise ConfigError(f"no scripted expert for task {task_name!r}; "
                          f"choose one of: {', '.join(_EXPERTS)}") from None
    if env.state is None:
        raise ConfigError("reset the environment before creating its expert")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return cls(env, rng)


def run_expert_episode(env: FrankaEnv, seed: int, expert_seed: int | None = None) -> dict:
    """One expert episode: ``{success, return, length, mode, steps: [...]}``."""
    obs, info = env.reset(seed=seed)
    expert = make_expert(env.task_name, env,
                         np.random.default_rng([seed, 1] if expert_seed is None else expert_seed))
    total, length, success = 0.0, 0, False
    for _ in range(env.max_steps):
        action, _ = expert.act(env)
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        length += 1
        if terminated or truncated:
            success = bool(info["success"])
            break
    return {"success": success, "return": total, "length": length, "mode": expert.mode}


def evaluate_expert(task: str, n_episodes: int, seed0: int = 0, render: bool = False,
                    **env_kwargs) -> dict:
    """Run the scripted expert on seeds ``seed0 .. seed0+n-1``.

    Returns ``{success_rate, successes, mean_return, mean_length, failed_seeds, modes}``
    (lengths in control steps).
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    env = make_env(task, render=render, **env_kwargs)
    try:
        results = [run_expert_episode(env, seed0 + i) for i in range(int(n_episodes))]
    finally:
        env.close()
    n = max(1, len(results))
    successes = sum(r["success"] for r in results)
    return {
        "task": task,
        "episodes": len(results),
        "success_rate": successes / n,
        "successes": successes,
        "mean_return": float(np.mean([r["return"] for r in results])) if results else 0.0,
        "mean_length": float(np.mean([r["length"] for r in results])) if results else 0.0,
        "failed_seeds": [seed0 + i for i, r in enumerate(results) if not r["success"]],
        "modes": [r["mode"] for r in results],
    }
