"""Sensor messages -> stamped observation samples, shared by the policy and OOD-monitor nodes.

A callback hands its message here; what comes out are `(key, stamp, value)` samples in the
policy's units (images uint8 RGB (H, W, 3), `joint_pos` (7,), `gripper` (1,) opening width,
`tcp_pose` (7,) from the joint positions), given to a sink (the PolicyRunner's `observe`, or
the monitor's buffer). A message that cannot be converted is counted and its error kept for
/diagnostics; it is dropped, never half-used. An error is current while the source's newest
message failed or for ERROR_HOLD_S after it (so a 1 Hz diagnostic sees intermittent ones);
after that it is reported as past, with its age, and no longer as an error.

Stamps are the header stamps (the sensor's instant). A zero stamp (a driver that does not
stamp) falls back to the receive time and is counted as such.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fastdp_ros.errors import ConfigError, FastDPError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import kinematics
from fastdp_ros.robots import N_ARM_JOINTS, RobotSpec, get_robot

log = logging.getLogger(__name__)

Sink = Callable[[str, float, np.ndarray], object]

#: seconds a conversion error stays current once good messages follow it
ERROR_HOLD_S = 5.0


def arm_joint_names(robot: RobotSpec, prefix: str = "") -> list[str]:
    return robot.joint_names(prefix or None)


def finger_joint_names(robot: RobotSpec, prefix: str = "") -> list[str]:
    """franka_description's finger joints: <prefix>_finger_joint1 and 2 (each opens half the width)."""
    p = prefix or robot.joint_prefix
    return [f"{p}_finger_joint1", f"{p}_finger_joint2"]


@dataclass
class SensorConfig:
    """What the intake converts: joint names, the cameras by key, the policy's image shape."""

    robot: RobotSpec
    joint_names: list[str]
    finger_names: list[str]
    image_topics: dict[str, str]  # observation key -> topic
    image_shape: tuple[int, int, int] | None
    tcp_offset: float = kinematics.FRANKA_HAND_TCP_OFFSET
    wants_tcp_pose: bool = False
    tcp_reference_quat: np.ndarray = field(default=None)

    def __post_init__(self):
        if len(self.joint_names) != N_ARM_JOINTS:
            raise ConfigError(f"need {N_ARM_JOINTS} arm joint names, got {self.joint_names}")
        if self.tcp_reference_quat is None:
            # the quaternion hemisphere the simulation's datasets record tcp_pose in: the home pose's
            _, rot = kinematics.tcp_transform(self.robot.home_position, self.tcp_offset)
            self.tcp_reference_quat = kinematics.mat_to_quat(rot)

    @classmethod
    def from_params(cls, params: dict, image_keys_needed, image_shape, wants_tcp_pose: bool) -> "SensorConfig":
        """From node parameters (robot_type, joint_prefix, image_keys, image_topics, tcp_offset)."""
        robot = get_robot(params["robot_type"])
        keys, topics = list(params["image_keys"]), list(params["image_topics"])
        if len(keys) != len(topics):
            raise ConfigError(f"image_keys has {len(keys)} entries and image_topics {len(topics)}: give one topic "
                              f"per key ({keys} / {topics})")
        by_key = dict(zip(keys, topics))
        missing = [k for k in image_keys_needed if k not in by_key]
        if missing:
            raise ConfigError(f"the model needs cameras {missing}; image_keys {keys} has no topic for them")
        return cls(robot=robot, joint_names=arm_joint_names(robot, params["joint_prefix"]),
                   finger_names=finger_joint_names(robot, params["joint_prefix"]),
                   image_topics={k: by_key[k] for k in image_keys_needed}, image_shape=image_shape,
                   tcp_offset=float(params["tcp_offset"]),
                   wants_tcp_pose=wants_tcp_pose)


class SensorIntake:
    """Converts sensor messages into samples for `sink`; keeps the newest arm state and counts
    what it could not convert."""

    def __init__(self, config: SensorConfig, sink: Sink):
        self.config = config
        self.sink = sink
        self._lock = threading.Lock()
        self.q: np.ndarray | None = None  # newest measured arm joint positions
        self.q_stamp: float | None = None
        self.gripper: float | None = None  # newest measured opening width
        self.counts: dict[str, dict[str, int]] = {}
        self.last_error: dict[str, str] = {}
        self._error_at: dict[str, float] = {}  # source -> time of its newest error
        self._failing: set[str] = set()  # sources whose newest message failed
        self.unstamped = 0

    def _stamp(self, header, now: float) -> float:
        t = conv.stamp_to_seconds(header.stamp)
        if t <= 0.0:
            self.unstamped += 1
            return float(now)
        return t

    def _count(self, source: str, now: float, ok: bool, error: str | None = None) -> None:
        with self._lock:
            c = self.counts.setdefault(source, {"received": 0, "errors": 0})
            c["received"] += 1
            if ok:
                self._failing.discard(source)
            else:
                c["errors"] += 1
                self._failing.add(source)
                self._error_at[source] = float(now)
                first = source not in self.last_error or self.last_error[source] != error
                self.last_error[source] = error
                if first:  # log a new error once, not at the sensor's rate
                    log.error("%s: %s", source, error)

    def image(self, key: str, msg, now: float, compressed: bool = False) -> bool:
        """One camera frame for observation `key`; False (and the error recorded) if unusable."""
        source = self.config.image_topics.get(key, key)
        try:
            if compressed:
                rgb = conv.compressed_image_to_rgb(msg, self.config.image_shape)
            else:
                rgb = conv.image_to_rgb(msg, self.config.image_shape)
        except FastDPError as e:
            self._count(source, now, False, str(e))
            return False
        self._count(source, now, True)
        self.sink(key, self._stamp(msg.header, now), rgb)
        return True

    def joint_state(self, msg, now: float) -> bool:
        """An arm JointState (with the fingers too when the robot publishes them together)."""
        try:
            q = conv.joint_positions(msg, self.config.joint_names)
            width = conv.gripper_width(msg, self.config.finger_names)
        except FastDPError as e:
            self._count("joint_state", now, False, str(e))
            return False
        self._count("joint_state", now, True)
        stamp = self._stamp(msg.header, now)
        self.q, self.q_stamp = q, stamp
        self.sink("joint_pos", stamp, q.astype(np.float32))
        if self.config.wants_tcp_pose:
            pose = kinematics.tcp_pose(q, self.config.tcp_offset, self.config.tcp_reference_quat)
            self.sink("tcp_pose", stamp, pose.astype(np.float32))
        if width is not None:
            self._gripper(stamp, width)
        return True

    def gripper_state(self, msg, now: float) -> bool:
        """The hand's JointState (franka_gripper publishes the fingers on their own topic)."""
        names = self.config.finger_names
        width = conv.gripper_width(msg, names)
        if width is None:
            self._count("gripper_state", now, False, f"gripper JointState lacks finger joints {names}; it has "
                                                f"{list(msg.name)}")
            return False
        self._count("gripper_state", now, True)
        self._gripper(self._stamp(msg.header, now), width)
        return True

    def _gripper(self, stamp: float, width: float) -> None:
        self.gripper = width
        self.sink("gripper", stamp, np.array([width], np.float32))

    def current_errors(self, now: float) -> dict[str, str]:
        """{source: error} of the sources failing now: newest message failed, or an error within
        ERROR_HOLD_S."""
        with self._lock:
            return {src: self.last_error[src] for src, t in self._error_at.items()
                    if src in self._failing or now - t <= ERROR_HOLD_S}

    def report(self, now: float) -> dict[str, str]:
        """Counts and the newest error per source (with its age), as diagnostic key/values."""
        out = {}
        with self._lock:
            for source, c in sorted(self.counts.items()):
                out[f"{source} received"] = str(c["received"])
                if c["errors"]:
                    out[f"{source} errors"] = str(c["errors"])
                    out[f"{source} last error"] = self.last_error.get(source, "")
                    out[f"{source} last error age_s"] = f"{now - self._error_at[source]:.1f}"
        if self.unstamped:
            out["unstamped messages (receive time used)"] = str(self.unstamped)
        return out
