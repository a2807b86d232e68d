"""Table-top tasks for the simulated Panda and a gymnasium-style environment.

Tasks
-----
``reach``       move the TCP to a randomized target point (a green sphere).
``push``        push a cube along the table into a goal region (a green disc).
``pick_place``  pick the cube up and place it on a target (a green disc), then let go.
``pick_place_around``  pick_place with a post between the cube and the target: the cube
                has to be carried around it, on the left or on the right.

Every task randomizes its initial state from the seed given to :meth:`FrankaEnv.reset`,
has a success predicate (``terminated`` when it holds), a reward per step of a dense shaped
score in ``[0, 1]`` (less a penalty while touching pick_place_around's post) minus
:data:`STEP_COST`, plus :data:`SUCCESS_BONUS` on the step that succeeds, and a time limit
(``truncated`` when it is reached). The step cost is what makes the return rank policies by
success: an episode ends at success, and with rewards that are never negative a policy that
hovers near the goal until the time limit would collect more than one that finishes
(measured: failed push episodes returned 22-33, successful ones 17-18).

Actions are 8 numbers: 7 joint position targets (rad, real Panda coordinates) and the hand's
opening width target (m). They are rounded to float32 (so that actions stored as float32
replay bit for bit) and clipped to the Panda's limits. Within one control period
the command is ramped linearly from the previous one (``interpolate=True``, every 10 ms), as
a real joint-position interface interpolates a low-rate stream.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.robots import PANDA
from fastdp_ros.sim.scene import CAMERAS, FrankaSim, SceneConfig, image_hw

log = logging.getLogger(__name__)

SUCCESS_BONUS = 5.0
"""Added to the reward on the step where the task first succeeds."""

STEP_COST = 1.0
"""Subtracted from every step's reward: no shaped score outweighs it, so finishing sooner pays."""

TABLE_Z = 0.0
SAFE_Z = 0.12  # TCP height that clears the cube with the fingers


def _tanh_score(distance: float, scale: float = 10.0) -> float:
    """1 at distance 0, ~0.24 at 0.1 m (scale 10), -> 0 far away."""
    return float(1.0 - math.tanh(scale * distance))


def yaw_of_quat(quat) -> float:
    """Yaw (rotation about world z) of an object quaternion wxyz."""
    w, x, y, z = quat
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


@dataclass
class TaskState:
    """What a reset drew: the arm, hand, cube, target and obstacle (centre xyz, if any)."""

    q_arm: np.ndarray
    gripper_width: float
    cube_pose: np.ndarray | None
    target: np.ndarray
    obstacle: np.ndarray | None = None
    #: pick_place_around: the side the cube went round the post (the expert's modes: 0 left of
    #: the cube -> target line, 1 right), -1 until its centre has passed the post's
    route_mode: int = -1


class Task:
    """Base class: sampling of the initial state, success, reward."""

    name = ""
    time_limit = 10.0
    has_cube = False
    target_kind = "disc"
    target_radius = 0.04
    success_tolerance = 0.02

    def scene_config(self, image_size, timestep, mesh_detail="coarse") -> SceneConfig:
        return SceneConfig(cube=self.has_cube, target=self.target_kind,
                           target_radius=self.target_radius, image_size=image_size,
                           timestep=timestep, mesh_detail=mesh_detail)

    @staticmethod
    def sample_arm(rng: np.random.Generator) -> np.ndarray:
        """Home posture with a small random perturbation (real coordinates)."""
        noise = rng.uniform(-1.0, 1.0, size=7) * np.array([0.1, 0.08, 0.1, 0.08, 0.1, 0.08, 0.15])
        return np.clip(PANDA.home_position + noise, PANDA.lower + 0.05, PANDA.upper - 0.05)

    def sample(self, rng: np.random.Generator, sim: FrankaSim) -> TaskState:
        raise NotImplementedError

    def evaluate(self, sim: FrankaSim, state: TaskState) -> tuple[float, bool, dict]:
        """``(shaped score in [0, 1], success, extra info)`` in the current sim state."""
        raise NotImplementedError


def _sample_cube_and_goal(rng, cube_box, goal_box, dist_range, half):
    """A cube pose (random yaw) and a goal point at a random distance and direction."""
    for _ in range(1000):
        xy = rng.uniform(cube_box[0], cube_box[1])
        angle = rng.uniform(-math.pi, math.pi)
        dist = rng.uniform(*dist_range)
        goal = xy + dist * np.array([math.cos(angle), math.sin(angle)])
        if np.all(goal >= goal_box[0]) and np.all(goal <= goal_box[1]):
            break
    else:  # pragma: no cover - the boxes above always admit a goal
        raise RuntimeError("could not sample a goal")
    yaw = rng.uniform(-math.pi / 4, math.pi / 4)
    cube = np.array([xy[0], xy[1], half, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
    return cube, np.array([goal[0], goal[1], TABLE_Z])


class ReachTask(Task):
    name = "reach"
    time_limit = 5.0
    has_cube = False
    target_kind = "sphere"
    target_radius = 0.02
    success_tolerance = 0.02
    target_box = (np.array([0.35, -0.25, 0.05]), np.array([0.65, 0.25, 0.35]))

    def sample(self, rng, sim):
        q = self.sample_arm(rng)
        target = rng.uniform(*self.target_box)
        return TaskState(q_arm=q, gripper_width=PANDA.gripper_width_range[1], cube_pose=None,
                         target=target)

    def evaluate(self, sim, state):
        d = float(np.linalg.norm(sim.tcp_position() - state.target))
        success = d < self.success_tolerance
        return _tanh_score(d), success, {"tcp_target_distance": d}


class CubeTask(Task):
    """A task with a cube and a goal on the table, sampled at a distance from each other."""

    cube_box: tuple[np.ndarray, np.ndarray]
    goal_box: tuple[np.ndarray, np.ndarray]
    distance_range: tuple[float, float]

    def sample(self, rng, sim):
        q = self.sample_arm(rng)
        cube, goal = _sample_cube_and_goal(rng, self.cube_box, self.goal_box,
                                           self.distance_range, sim.config.cube_half_size)
        return TaskState(q_arm=q, gripper_width=PANDA.gripper_width_range[1], cube_pose=cube,
                         target=goal)


class PushTask(CubeTask):
    name = "push"
    time_limit = 12.0
    has_cube = True
    target_kind = "disc"
    target_radius = 0.04
    success_tolerance = 0.025  # cube centre within 2.5 cm of the goal centre
    cube_box = (np.array([0.42, -0.16]), np.array([0.62, 0.16]))
    goal_box = (np.array([0.38, -0.24]), np.array([0.68, 0.24]))
    distance_range = (0.12, 0.22)

    def evaluate(self, sim, state):
        cube = sim.cube_pose()
        half = sim.config.cube_half_size
        d_goal = float(np.linalg.norm(cube[:2] - state.target[:2]))
        d_tcp = float(np.linalg.norm(sim.tcp_position() - cube[:3]))
        on_table = cube[2] < half + 0.01
        success = d_goal < self.success_tolerance and on_table
        reward = 0.3 * _tanh_score(d_tcp) + 0.7 * _tanh_score(d_goal)
        return reward, success, {"cube_goal_distance": d_goal, "tcp_cube_distance": d_tcp}


class PickPlaceTask(CubeTask):
    name = "pick_place"
    time_limit = 15.0
    has_cube = True
    target_kind = "disc"
    target_radius = 0.035
    success_tolerance = 0.025  # cube centre within 2.5 cm of the target, on the table, released
    cube_box = (np.array([0.40, -0.18]), np.array([0.62, 0.18]))
    goal_box = (np.array([0.38, -0.25]), np.array([0.66, 0.25]))
    distance_range = (0.15, 0.30)

    def evaluate(self, sim, state):
        cube = sim.cube_pose()
        half = sim.config.cube_half_size
        left, right = sim.finger_contacts()
        grasped = left and right
        d_xy = float(np.linalg.norm(cube[:2] - state.target[:2]))
        place_point = np.array([state.target[0], state.target[1], half])
        d_place = float(np.linalg.norm(cube[:3] - place_point))
        d_tcp = float(np.linalg.norm(sim.tcp_position() - cube[:3]))
        resting = abs(cube[2] - half) < 0.008
        released = not (left or right) and sim.gripper_width() > 2 * half + 0.01
        success = d_xy < self.success_tolerance and resting and released
        reward = 0.25 * _tanh_score(d_tcp) + 0.15 * float(grasped) + 0.6 * _tanh_score(d_place)
        return reward, success, {"cube_target_distance": d_xy, "tcp_cube_distance": d_tcp,
                                 "grasped": grasped}


class PickPlaceAroundTask(PickPlaceTask):
    """pick_place with a post standing between cube and target, near their midpoint.

    The post (SceneConfig's: 0.04 m square, 0.18 m tall) reaches above the carried cube (0.10 to
    0.15 m at the experts' carry height; the hand, 0.07 m and more above the TCP, passes over
    it) but stays below the forearm, which hangs about 0.19 m above the TCP when the hand is
    down at the table: a taller post would be hit by the forearm while grasping or placing near
    it. So the way is round it, left or right. Cube and target are further apart than in
    pick_place to leave room for the post and the hand between them. Touching the post (cube
    or any part of the robot) costs :attr:`contact_penalty` of shaped score per step, so the
    score lies in [-0.5, 1].
    """

    name = "pick_place_around"
    time_limit = 18.0
    cube_box = (np.array([0.42, -0.16]), np.array([0.60, 0.16]))
    goal_box = (np.array([0.40, -0.24]), np.array([0.64, 0.24]))
    distance_range = (0.24, 0.32)
    obstacle_jitter = 0.01  # m along the cube -> target line, around the midpoint
    contact_penalty = 0.5

    def scene_config(self, image_size, timestep, mesh_detail="coarse") -> SceneConfig:
        return SceneConfig(cube=True, target=self.target_kind, target_radius=self.target_radius,
                           image_size=image_size, timestep=timestep, mesh_detail=mesh_detail,
                           obstacle=True)

    def sample(self, rng, sim):
        state = super().sample(rng, sim)
        cube, target = state.cube_pose[:2], state.target[:2]
        line = (target - cube) / np.linalg.norm(target - cube)
        xy = (cube + target) / 2 + rng.uniform(-1.0, 1.0) * self.obstacle_jitter * line
        state.obstacle = np.array([xy[0], xy[1], sim.config.obstacle_half_height])
        return state

    def evaluate(self, sim, state):
        reward, success, extra = super().evaluate(sim, state)
        contact = any(sim.obstacle_contacts())
        extra["obstacle_contact"] = contact
        if state.route_mode < 0:
            state.route_mode = self.route_mode(sim.cube_pose()[:2], state)
        extra["route_mode"] = state.route_mode
        return reward - self.contact_penalty * float(contact), success, extra

    @staticmethod
    def route_mode(cube_xy: np.ndarray, state: TaskState) -> int:
        """Which way the cube went round the post: once its centre is past the post along the
        start -> target line, 0 if it is left of the line through the post, 1 if right, else -1."""
        start, post = state.cube_pose[:2], state.obstacle[:2]
        line = (state.target[:2] - start) / np.linalg.norm(state.target[:2] - start)
        offset = cube_xy - post
        if float(offset @ line) < 0.0:
            return -1
        return 0 if float(line[0] * offset[1] - line[1] * offset[0]) > 0.0 else 1


_TASK_CLASSES = {cls.name: cls for cls in (ReachTask, PushTask, PickPlaceTask,
                                           PickPlaceAroundTask)}
TASKS: tuple[str, ...] = tuple(_TASK_CLASSES)


def get_task(name: str) -> Task:
    try:
        return _TASK_CLASSES[name]()
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


class FrankaEnv:
    """A gymnasium-style environment around :class:`FrankaSim` and one task.

    ``reset(seed) -> (obs, info)``; ``step(action) -> (obs, reward, terminated, truncated,
    info)``. ``obs`` holds ``img_<camera>`` (uint8 HxWx3, one per requested camera, only when
    rendering), ``joint_pos`` (7, float32, rad, real Panda coords), ``gripper`` (1, float32,
    width in m) and ``tcp_pose`` (7, float32, xyz + quat wxyz).
    """

    def __init__(
        self,
        task: str,
        image_size: int | tuple[int, int] = 96,
        cameras: tuple[str, ...] | list[str] = ("front", "wrist"),
        control_dt: float = 0.1,
        render: bool = True,
        time_limit: float | None = None,
        interpolate: bool = True,
        physics_dt: float = 0.002,
        mesh_detail: str = "coarse",
    ):
        self.task = get_task(task)
        self.task_name = self.task.name
        if isinstance(cameras, str):
            cameras = (cameras,)
        cameras = tuple(cameras)
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or len(set(cameras)) != len(cameras):
            raise ConfigError(
                f"cameras must be distinct names among: {', '.join(CAMERAS)}; got {list(cameras)}"
            )
        self.cameras = cameras
        self.image_size = image_hw(image_size)
        self.render_enabled = bool(render)
        control_dt = float(control_dt)
        if not (physics_dt <= control_dt <= 1.0):
            raise ConfigError(
                f"control_dt must be between the physics timestep ({physics_dt} s) and 1 s, "
                f"got {control_dt}"
            )
        self.dt = control_dt
        self.time_limit = float(self.task.time_limit if time_limit is None else time_limit)
        if self.time_limit <= 0:
            raise ConfigError(f"time_limit must be positive, got {self.time_limit}")
        self.max_steps = max(1, int(round(self.time_limit / self.dt)))
        self.interpolate = bool(interpolate)
        self.sim = FrankaSim(self.task.scene_config(self.image_size, physics_dt, mesh_detail))
        self._ticks = max(1, int(round(self.dt / 0.01))) if self.interpolate else 1
        self.np_random = np.random.default_rng()
        self.state: TaskState | None = None
        self.elapsed_steps = 0
        self._succeeded = False
        if self.render_enabled and self.cameras:
            self.sim.renderer(self.image_size)  # start it now: fail early with RendererError

    # ----------------------------------------------------------------- gym API

    def reset(self, seed: int | None = None, options: dict | None = None):
        """New episode. Same seed -> bit-identical episode for the same actions."""
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        self.state = self.task.sample(self.np_random, self.sim)
        s = self.state
        self.sim.reset(q_arm=s.q_arm, gripper_width=s.gripper_width, cube_pose=s.cube_pose,
                       target_pos=s.target,
                       obstacle_xy=None if s.obstacle is None else s.obstacle[:2])
        self.elapsed_steps = 0
        self._succeeded = False
        _, success, extra = self.task.evaluate(self.sim, s)
        return self.observation(), self._info(success, extra)

    def step(self, action):
        if self.state is None:
            raise ConfigError("call reset() before step()")
        # Rounded to float32 on entry: float32 actions stored in a dataset replay bit for bit.
        action = np.asarray(action, dtype=np.float32).astype(np.float64).reshape(-1)
        if action.shape != (8,):
            raise ConfigError(
                "action must have 8 values (7 joint targets + gripper width), "
                f"got {action.shape[0]}"
            )
        if not np.all(np.isfinite(action)):
            raise ConfigError(f"action contains NaN or infinity: {action}")
        q1 = np.clip(action[:7], PANDA.lower, PANDA.upper)
        w1 = float(np.clip(action[7], *self.sim.width_range))
        if self._ticks == 1:
            self.sim.set_command(q1, w1)
            self.sim.advance(self.dt)
        else:
            q0, w0 = self.sim.command()
            for k in range(1, self._ticks + 1):
                a = k / self._ticks
                self.sim.set_command(q0 + a * (q1 - q0), w0 + a * (w1 - w0))
                self.sim.advance(self.dt / self._ticks)
        self.elapsed_steps += 1
        score, success, extra = self.task.evaluate(self.sim, self.state)
        reward = score - STEP_COST
        if success and not self._succeeded:
            reward += SUCCESS_BONUS
        self._succeeded = self._succeeded or success
        terminated = bool(success)
        truncated = bool(self.elapsed_steps >= self.max_steps and not terminated)
        return self.observation(), float(reward), terminated, truncated, self._info(success, extra)

    def observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.render_enabled:
            for cam in self.cameras:
                obs[f"img_{cam}"] = self.sim.render(cam, self.image_size)
        obs["joint_pos"] = self.sim.joint_positions().astype(np.float32)
        obs["gripper"] = np.array([self.sim.gripper_width()], dtype=np.float32)
        obs["tcp_pose"] = self.sim.tcp_pose().astype(np.float32)
        return obs

    def _info(self, success: bool, extra: dict) -> dict:
        info = {
            "success": bool(success),
            "target_pos": self.state.target.copy(),
            "time": self.sim.time,
            "step": self.elapsed_steps,
        }
        if self.sim.has_cube:
            info["cube_pose"] = self.sim.cube_pose()
        if self.sim.has_obstacle:
            info["obstacle_pos"] = self.sim.obstacle_position()
        info.update(extra)
        return info

    # ----------------------------------------------------------------- extras

    @property
    def goal(self) -> np.ndarray:
        """The task's target point (world frame, m)."""
        if self.state is None:
            raise ConfigError("call reset() first")
        return self.state.target.copy()

    def metadata(self) -> dict:
        """A JSON-able description of the environment (for dataset and model provenance)."""
        return {
            "task": self.task_name,
            "robot": "panda",
            "cameras": list(self.cameras) if self.render_enabled else [],
            "image_size": list(self.image_size),
            "dt": self.dt,
            "physics_timestep": self.sim.timestep,
            "max_steps": self.max_steps,
            "time_limit": self.time_limit,
            "interpolate": self.interpolate,
            "mesh_detail": self.sim.config.mesh_detail,
            "joint_names": PANDA.joint_names(),
            "action": "7 joint position targets (rad, real Panda coords) + gripper width (m)",
            "gripper_width_range": list(self.sim.width_range),
            "tcp": "between the fingertip pads; quat wxyz in the home orientation's hemisphere",
            "success_bonus": SUCCESS_BONUS,
            "step_cost": STEP_COST,
            "success_tolerance": self.task.success_tolerance,
            "model": "gymnasium_robotics kitchen_franka Panda (link6/7 re-oriented to real Panda)",
        }

    def close(self) -> None:
        self.sim.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_env(
    task: str,
    image_size: int | tuple[int, int] = 96,
    cameras: tuple[str, ...] | list[str] = ("front", "wrist"),
    control_dt: float = 0.1,
    render: bool = True,
    time_limit: float | None = None,
    interpolate: bool = True,
    physics_dt: float = 0.002,
    mesh_detail: str = "coarse",
) -> FrankaEnv:
    """Build the environment of ``task`` (one of :data:`TASKS`); unknown names raise
    :class:`~fastdp_ros.errors.ConfigError`, a renderer that cannot start raises
    :class:`~fastdp_ros.errors.RendererError` (when ``render=True``)."""
    return FrankaEnv(task, image_size=image_size, cameras=cameras, control_dt=control_dt,
                     render=render, time_limit=time_limit, interpolate=interpolate,
                     physics_dt=physics_dt, mesh_detail=mesh_detail)


def object_state(info: dict) -> np.ndarray:
    """Privileged task state for low-dimensional policies: target xyz (+ cube pose xyz+wxyz)
    (+ obstacle xy)."""
    parts = [np.asarray(info["target_pos"], np.float32)]
    if "cube_pose" in info:
        parts.append(np.asarray(info["cube_pose"], np.float32))
    if "obstacle_pos" in info:
        parts.append(np.asarray(info["obstacle_pos"][:2], np.float32))
    return np.concatenate(parts)
