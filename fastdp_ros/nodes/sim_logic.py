"""What the simulation node does, without ROS: the MuJoCo task as a robot.

It reuses `runtime.loop.SimPlant`, the piece `fastdp run` drives: physics follows the wall
clock, joint states are sampled at `joint_state_rate` at their physics instants, cameras
render at `camera_rate`. Here the samples are not handed to a runner but collected for the
node to publish (JointState with the arm and finger joints, one Image per camera).

Commands arrive as the real controllers take them:
  JointTrajectory     followed like joint_trajectory_controller: a header stamp of 0 starts
                      now, otherwise at the stamp; interpolated from the current command to
                      the points (linearly) by time_from_start; held at the last point
  Float64MultiArray   forward_command_controller: 7 joint positions, held until the next
  PoseStamped         a Cartesian target: the joint positions that reach it (damped least
                      squares from the measured joints, nodes.kinematics), within the limits
  Float64             the gripper's opening width

After a success or the task's time limit a new episode starts (when `auto_reset`): the arm is
moved to the new start and an episode event is published, so the policy node restarts from the
new state. Until a command lands near that start, arm commands of the old episode are ignored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from fastdp_ros.errors import ConfigError, FastDPError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import kinematics
from fastdp_ros.ros_messages import IMAGE_ENCODINGS
from fastdp_ros.robots import PANDA

log = logging.getLogger(__name__)

#: the simulation's joints, in the order the JointState lists them
SIM_ARM_JOINTS = PANDA.joint_names()
SIM_FINGER_JOINTS = ["panda_finger_joint1", "panda_finger_joint2"]


class SampleOutbox:
    """Stands where SimPlant expects a runner: `buffer.keys` says which samples to produce,
    `observe` collects them for publishing."""

    class _Keys:
        def __init__(self, keys):
            self.keys = tuple(keys)

    def __init__(self, keys):
        self.buffer = self._Keys(keys)
        self.samples: list[tuple[str, float, np.ndarray]] = []

    def observe(self, key: str, stamp: float, value) -> bool:
        self.samples.append((key, float(stamp), value))
        return True

    def take(self) -> list[tuple[str, float, np.ndarray]]:
        out, self.samples = self.samples, []
        return out


class TrajectoryFollower:
    """A joint trajectory as joint_trajectory_controller follows it: from the command at
    arrival to each point by its time_from_start, holding the last."""

    def __init__(self, start: float, times, positions, q_from):
        times = np.asarray(times, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.float64)
        if np.any(np.diff(times) < 0):
            raise ConfigError("JointTrajectory points must have increasing time_from_start")
        if times[0] > 0:  # start from where the command is now
            times = np.r_[0.0, times]
            positions = np.vstack([np.asarray(q_from, dtype=np.float64), positions])
        self.start, self.times, self.positions = float(start), times, positions

    def sample(self, t: float) -> np.ndarray:
        s = t - self.start
        if s <= self.times[0]:
            return self.positions[0].copy()
        if s >= self.times[-1]:
            return self.positions[-1].copy()
        k = int(np.searchsorted(self.times, s, side="right")) - 1
        a = (s - self.times[k]) / (self.times[k + 1] - self.times[k])
        return self.positions[k] + a * (self.positions[k + 1] - self.positions[k])

    @property
    def first_target(self) -> np.ndarray:
        return self.positions[1] if len(self.positions) > 1 and self.times[0] == 0.0 else self.positions[0]


@dataclass
class SimConfig:
    task: str
    cameras: tuple[str, ...]
    image_topics: dict[str, str]  # camera -> topic
    image_size: int
    image_encoding: str
    camera_rate: float
    joint_state_rate: float
    tcp_offset: float
    seed0: int
    episodes: int
    auto_reset: bool
    reset_tolerance: float

    @classmethod
    def from_params(cls, p: dict) -> "SimConfig":
        cameras, topics = list(p["cameras"]), list(p["image_topics"])
        if len(cameras) != len(topics):
            raise ConfigError(f"cameras has {len(cameras)} entries and image_topics {len(topics)}: "
                              f"one topic per camera")
        if p["image_encoding"] not in IMAGE_ENCODINGS:
            raise ConfigError(f"image_encoding must be one of {', '.join(IMAGE_ENCODINGS)}, "
                              f"got {p['image_encoding']!r}")
        for name in ("camera_rate", "joint_state_rate"):
            if not (math.isfinite(float(p[name])) and float(p[name]) > 0):
                raise ConfigError(f"{name} must be > 0 Hz, got {p[name]}")
        if int(p["episodes"]) < 0 or int(p["image_size"]) < 8 or float(p["reset_command_tolerance"]) <= 0:
            raise ConfigError("need episodes >= 0, image_size >= 8 and reset_command_tolerance > 0")
        return cls(task=str(p["task"]), cameras=tuple(cameras), image_topics=dict(zip(cameras, topics)),
                   image_size=int(p["image_size"]), image_encoding=str(p["image_encoding"]),
                   camera_rate=float(p["camera_rate"]), joint_state_rate=float(p["joint_state_rate"]),
                   tcp_offset=float(p["tcp_offset"]), seed0=int(p["seed0"]), episodes=int(p["episodes"]),
                   auto_reset=bool(p["auto_reset"]), reset_tolerance=float(p["reset_command_tolerance"]))


@dataclass(frozen=True)
class JointSample:
    stamp: float
    q: np.ndarray  # 7 arm joints (rad)
    width: float  # gripper opening (m); each finger joint is half of it

    @property
    def names(self) -> list[str]:
        return SIM_ARM_JOINTS + SIM_FINGER_JOINTS

    @property
    def positions(self) -> np.ndarray:
        return np.r_[self.q, self.width / 2.0, self.width / 2.0]


@dataclass(frozen=True)
class EpisodeEvent:
    stamp: float
    episode: int  # number of the episode that starts (1-based)
    seed: int
    label: str


@dataclass
class SimStep:
    joint_states: list[JointSample] = field(default_factory=list)
    images: list[tuple[str, float, np.ndarray]] = field(default_factory=list)  # (camera, stamp, pixels)
    episode: EpisodeEvent | None = None
    outcome: dict | None = None  # the episode that just ended: episode, seed, success, duration_s
    done: bool = False  # the requested number of episodes has run


class SimLogic:
    """The simulated robot: `start(now)`, then `step(now)` on a timer and the command methods
    from the subscriptions. `now` is the time the node stamps messages with."""

    def __init__(self, config: SimConfig, env=None):
        self.config = config
        if env is None:
            from fastdp_ros.sim import make_env

            env = make_env(config.task, image_size=config.image_size, cameras=config.cameras, render=True)
        from fastdp_ros.runtime.loop import SimPlant

        self.env = env
        self.outbox = SampleOutbox(["joint_pos", "gripper", *(f"img_{c}" for c in config.cameras)])
        self.plant = SimPlant(env, self.outbox.buffer.keys, config.camera_rate, config.joint_state_rate)
        self.seed = config.seed0
        self.episode = 0
        self.results: list[dict] = []
        self._follower: TrajectoryFollower | None = None
        self._q_cmd: np.ndarray | None = None
        self._w_cmd: float | None = None
        self._gate: np.ndarray | None = None  # after a reset: the start pose commands must come back to
        self._over = False  # the episode has ended and no new one was started
        self.counts = {"commands": 0, "ignored_commands": 0, "rejected_commands": 0, "unreachable_poses": 0}

    # ------------------------------------------------------------------ episodes

    def start(self, now: float) -> EpisodeEvent:
        return self._new_episode(now, gate=False)

    def _new_episode(self, now: float, gate: bool) -> EpisodeEvent:
        q, w = self.plant.reset(self.seed, now)
        self.episode += 1
        self._q_cmd, self._w_cmd, self._follower = np.asarray(q, np.float64), float(w), None
        self._gate = self._q_cmd.copy() if gate else None
        self._over = False
        label = f"episode {self.episode} seed {self.seed} task {self.config.task}"
        log.info("%s starts", label)
        return EpisodeEvent(now, self.episode, self.seed, label)

    # ------------------------------------------------------------------ commands

    def _accept(self, q_target: np.ndarray) -> bool:
        """After a reset, ignore commands until one lands near the new start."""
        if self._gate is None:
            return True
        if float(np.max(np.abs(q_target - self._gate))) <= self.config.reset_tolerance:
            self._gate = None
            return True
        self.counts["ignored_commands"] += 1
        return False

    def _reject(self, error: FastDPError) -> None:
        self.counts["rejected_commands"] += 1
        if self.counts["rejected_commands"] == 1 or self.counts["rejected_commands"] % 100 == 0:
            log.error("command rejected (%d so far): %s", self.counts["rejected_commands"], error)

    def on_joint_trajectory(self, msg, now: float) -> bool:
        try:
            stamp, times, positions = conv.joint_trajectory_points(msg, SIM_ARM_JOINTS)
            current = self._follower.sample(now) if self._follower is not None else self._q_cmd
            follower = TrajectoryFollower(stamp if stamp > 0 else now, times, positions, current)
        except FastDPError as e:
            self._reject(e)
            return False
        if not self._accept(follower.first_target):
            return False
        self.counts["commands"] += 1
        self._follower = follower
        return True

    def on_forward_command(self, msg, now: float) -> bool:
        try:
            q = conv.float64_array_values(msg, len(SIM_ARM_JOINTS))
        except FastDPError as e:
            self._reject(e)
            return False
        if not self._accept(q):
            return False
        self.counts["commands"] += 1
        self._follower, self._q_cmd = None, q
        return True

    def on_target_pose(self, msg, now: float) -> bool:
        try:
            _, position, quat = conv.pose_stamped_values(msg)
        except FastDPError as e:
            self._reject(e)
            return False
        q_now = self.env.sim.joint_positions()
        q, residual = kinematics.solve_ik(position, quat, q_now, PANDA.lower, PANDA.upper, self.config.tcp_offset)
        if residual > 1e-3:  # 1 mm / 1 mrad: the pose lies outside the arm's reach
            self.counts["unreachable_poses"] += 1
        if not self._accept(q):
            return False
        self.counts["commands"] += 1
        self._follower, self._q_cmd = None, q
        return True

    def on_gripper_command(self, width: float, now: float) -> bool:
        if not math.isfinite(width):
            self._reject(ConfigError(f"non-finite gripper width {width}"))
            return False
        if self._gate is not None:  # the arm has not been taken over again yet
            self.counts["ignored_commands"] += 1
            return False
        self._w_cmd = float(width)
        return True

    # ------------------------------------------------------------------ the step

    def step(self, now: float) -> SimStep:
        """Apply the command, advance physics to `now` (sampling joint states), render due
        frames, and end / restart the episode when it is over."""
        if self._follower is not None:
            self._q_cmd = self._follower.sample(now)
        self.plant.command(self._q_cmd, self._w_cmd)
        self.plant.advance_to(now, self.outbox)
        self.plant.capture(now, self.outbox)
        out = SimStep()
        pending: dict[float, dict] = {}
        for key, stamp, value in self.outbox.take():
            if key.startswith("img_"):
                out.images.append((key[4:], stamp, value))
            else:
                pending.setdefault(stamp, {})[key] = value
        for stamp, values in pending.items():
            out.joint_states.append(JointSample(stamp, np.asarray(values["joint_pos"], np.float64),
                                                float(values["gripper"][0])))
        out.done = bool(self.config.episodes) and len(self.results) >= self.config.episodes
        if self._over:
            return out
        success = self.plant.success()
        if success or self.plant.episode_time() >= self.plant.time_limit:
            self._over = True
            out.outcome = {"episode": self.episode, "seed": self.seed, "success": bool(success),
                           "duration_s": round(float(self.plant.episode_time()), 3)}
            self.results.append(out.outcome)
            log.info("episode %d (seed %d): %s after %.1f s (%d of %d succeeded)", self.episode, self.seed,
                     "success" if success else "failure", self.plant.episode_time(),
                     sum(r["success"] for r in self.results), len(self.results))
            out.done = bool(self.config.episodes) and len(self.results) >= self.config.episodes
            if not out.done and self.config.auto_reset:
                self.seed += 1
                out.episode = self._new_episode(now, gate=True)
        return out

    def image_message_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The camera's RGB frame in the configured encoding's channel layout."""
        return conv.rgb_to_encoding(pixels, self.config.image_encoding)

    def summary(self) -> dict:
        n = len(self.results)
        ok = sum(r["success"] for r in self.results)
        return {"episodes": n, "successes": ok, "success_rate": ok / n if n else None, **self.counts,
                **self.plant.counts}

    def close(self) -> None:
        self.env.close()
