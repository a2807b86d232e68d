"""rosbag2 recordings -> dataset (`fastdp import rosbag2`), read with rosbags: no ROS needed.

Bags in sqlite3 or mcap storage. Message types come from the bag's own definitions (Jazzy's
rosbag2 stores them) or, for bags without (Humble's), from rosbags' typestore of `ros_distro`.

What is read, per bag:

  cameras        sensor_msgs/Image or CompressedImage topics -> img_<name> (uint8, resized);
                 every frame of one topic must have the same size
  joint states   sensor_msgs/JointState -> joint_pos (7, the arm's joints reordered by name:
                 <prefix>_joint1..7, prefix fr3 / panda or --joint-prefix)
  gripper        the finger joints <prefix>_finger_joint1/2 of a JointState -> gripper (1, width
                 in m = their sum), from --gripper-topic or whichever JointState carries them
  action         from --action-topic: JointTrajectory (first point, arm joints by name),
                 Float64MultiArray (7 arm values, or 8 with the gripper) or PoseStamped (xyz +
                 quaternion wxyz); without one, the next sample's joint positions. The gripper
                 part of the action is the next sample's width unless the command carries it.

Every stream is resampled to a fixed `dt` on the header stamps (the bag's receive time for
messages without a header or with a zero stamp): joint states and gripper interpolated,
cameras and commands holding their latest message (resample.py). Episodes: one per bag, cut
further by every message of --split-topic (each starts an episode) or by holes longer than
--split-gap seconds in the joint states.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

from . import parse_image_size, require_module, resize_rgb, staged_dataset
from .resample import StreamReport, hold, interpolate, time_grid

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
ACTION_TYPES = (JOINT_TRAJECTORY, FLOAT64_ARRAY, POSE_STAMPED)
DEFAULT_JOINT_STATE_TOPICS = ("/franka/joint_states", "/joint_states")
ROS_DISTROS = ("humble", "jazzy")
#: topic name parts that say nothing about which camera it is
_CAMERA_NOISE = {"image_raw", "image_rect", "image_rect_color", "image_color", "image", "compressed", "color", "rgb",
                 "camera", "cameras"}


@dataclass
class Rosbag2Options:
    dt: float = 0.1
    image_size: tuple[int, int] = (96, 96)
    cameras: dict[str, str] | None = None  # topic -> key; None: every image topic
    joint_states: str | None = None
    gripper_topic: str | None = None
    action_topic: str | None = None
    robot: str | None = None
    joint_prefix: str | None = None
    split_topic: str | None = None
    split_gap: float | None = None
    ros_distro: str = "humble"
    task: str | None = None


@dataclass
class _Stream:
    stamps: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, list]:
        order = np.argsort(np.asarray(self.stamps, np.float64), kind="stable")
        return np.asarray(self.stamps, np.float64)[order], [self.values[i] for i in order]


def camera_key(topic: str) -> str:
    """/cameras/wrist/image_raw/compressed -> img_wrist (the last part that names a camera)."""
    parts = [p for p in topic.strip("/").split("/") if p and p.lower() not in _CAMERA_NOISE]
    return "img_" + (parts[-1] if parts else topic.strip("/").replace("/", "_"))


def _stamp(msg, bag_time_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is not None:
        t = float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)
        if t > 0:
            return t
    return 1e-9 * bag_time_ns


def _typestore(distro: str):
    typesys = require_module("rosbags.typesys", "fastdp import rosbag2")
    if distro not in ROS_DISTROS:
        raise ConfigError(f"--ros-distro must be one of {', '.join(ROS_DISTROS)}, got {distro!r}")
    return typesys.get_typestore(getattr(typesys.Stores, f"ROS2_{distro.upper()}"))


class _BagReader:
    """One bag's topics of interest, read into memory (images decoded and resized on the way)."""

    def __init__(self, path: Path, options: Rosbag2Options):
        self.path = path
        self.options = options

    def read(self) -> dict:
        highlevel = require_module("rosbags.highlevel", "fastdp import rosbag2")
        try:
            with highlevel.AnyReader([self.path], default_typestore=_typestore(self.options.ros_distro)) as reader:
                return self._read(reader)
        except (DatasetError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - rosbags raises many types for damaged or foreign files
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetError(f"cannot read bag {self.path}: {reason} (truncated or not a rosbag2 recording?)") \
                from None

    def _read(self, reader) -> dict:
        o = self.options
        types = {c.topic: c.msgtype for c in reader.connections}

        def need(topic: str | None, allowed: tuple[str, ...] | None, what: str) -> None:
            """`topic` (when given) is in the bag and, unless allowed is None, of one of these types."""
            if topic is None:
                return
            if topic not in types:
                raise DatasetError(f"bag {self.path} has no topic {topic} ({what}); its topics: "
                                   f"{', '.join(sorted(types)) or 'none'}")
            if allowed is not None and types[topic] not in allowed:
                raise DatasetError(f"{what} topic {topic} carries {types[topic]}; expected {' or '.join(allowed)}")

        cameras = o.cameras
        if cameras is None:
            cameras = {t: camera_key(t) for t, m in sorted(types.items()) if m in (IMAGE, COMPRESSED_IMAGE)}
        for topic in cameras:
            need(topic, (IMAGE, COMPRESSED_IMAGE), "camera")
        keys = list(cameras.values())
        if len(set(keys)) != len(keys):
            raise ConfigError(f"camera topics {sorted(cameras)} give the keys {keys}; name them with --camera TOPIC=KEY")
        joint_topic = o.joint_states or next((t for t in DEFAULT_JOINT_STATE_TOPICS if t in types), None)
        if joint_topic is None:
            raise DatasetError(f"bag {self.path} has neither of {', '.join(DEFAULT_JOINT_STATE_TOPICS)}; "
                               f"name the joint states with --joint-states (its topics: {', '.join(sorted(types))})")
        need(joint_topic, (JOINT_STATE,), "joint states")
        need(o.gripper_topic, (JOINT_STATE,), "gripper")
        need(o.action_topic, ACTION_TYPES, "action")
        need(o.split_topic, None, "episode split")
        joint_state_topics = {joint_topic, *([o.gripper_topic] if o.gripper_topic else
                                             [t for t, m in types.items() if m == JOINT_STATE])}
        wanted = set(cameras) | joint_state_topics | {t for t in (o.action_topic, o.split_topic) if t}
        streams: dict[str, _Stream] = {t: _Stream() for t in wanted}
        sizes: dict[str, tuple] = {}
        conv = _conversions()
        for connection, bag_time, raw in reader.messages(connections=[c for c in reader.connections
                                                                      if c.topic in wanted]):
            topic = connection.topic
            msg = reader.deserialize(raw, connection.msgtype)
            stream = streams[topic]
            t = _stamp(msg, bag_time)
            if topic in cameras:
                try:
                    rgb = (conv.compressed_image_to_rgb(msg) if connection.msgtype == COMPRESSED_IMAGE
                           else conv.image_to_rgb(msg))
                except conv.ConversionError as e:
                    raise DatasetError(f"camera {topic} at t={t:.3f} s: {e}") from None
                first = sizes.setdefault(topic, (rgb.shape, t))
                if rgb.shape != first[0]:
                    raise DatasetError(
                        f"camera {topic} has images of mixed sizes: {first[0][1]}x{first[0][0]} at t={first[1]:.3f} s, "
                        f"{rgb.shape[1]}x{rgb.shape[0]} at t={t:.3f} s; record one size per camera")
                stream.values.append(resize_rgb(rgb, o.image_size))
            elif connection.msgtype in (JOINT_STATE, *ACTION_TYPES):
                stream.values.append(msg)
            else:
                stream.values.append(None)
            stream.stamps.append(t)
        return {"types": types, "cameras": cameras, "joint_topic": joint_topic, "streams": streams}


def _conversions():
    from fastdp_ros import ros_messages  # messages <-> numpy, no rclpy: works on rosbags' messages

    return ros_messages


def _robot_and_names(bag: dict, options: Rosbag2Options, path: Path):
    """(robot name, arm joint names, finger joint names) from --robot / --joint-prefix or the joint names."""
    from fastdp_ros.robots import ROBOTS, get_robot

    stream = bag["streams"][bag["joint_topic"]]
    if not stream.values:
        raise DatasetError(f"bag {path}: the joint states topic {bag['joint_topic']} has no messages")
    names = list(stream.values[0].name)
    if options.robot is not None:
        robot = get_robot(options.robot)
    else:
        found = [r for r in ROBOTS.values() if all(n in names for n in r.joint_names(options.joint_prefix or r.joint_prefix))]
        if len(found) != 1:
            raise ConfigError(f"cannot tell the robot from the joint names {names} on {bag['joint_topic']}; "
                              "pass --robot fr3|panda (and --joint-prefix if the joints are named otherwise)")
        robot = found[0]
    prefix = options.joint_prefix or robot.joint_prefix
    return robot.name, robot.joint_names(prefix), [f"{prefix}_finger_joint1", f"{prefix}_finger_joint2"]


def _lowdim(stream: _Stream, names: list[str], topic: str) -> tuple[np.ndarray, np.ndarray]:
    conv = _conversions()
    stamps, msgs = stream.arrays()
    try:
        values = np.stack([conv.joint_positions(m, names) for m in msgs])
    except conv.ConversionError as e:
        raise DatasetError(f"{topic}: {e}") from None
    return stamps, values


def _gripper_stream(bag: dict, options: Rosbag2Options, fingers: list[str]):
    conv = _conversions()
    if options.gripper_topic:
        candidates = [options.gripper_topic]
    else:
        candidates = [bag["joint_topic"]] + sorted(t for t, m in bag["types"].items()
                                                   if m == JOINT_STATE and t != bag["joint_topic"])
    for topic in candidates:
        stream = bag["streams"][topic]
        keep = _Stream()
        for t, msg in zip(stream.stamps, stream.values):
            if conv.has_joints(msg, fingers):
                keep.stamps.append(t)
                keep.values.append(msg)
        if keep.stamps:
            stamps, values = _lowdim(keep, fingers, topic)
            return topic, stamps, values.sum(axis=1, keepdims=True)
    if options.gripper_topic:
        raise DatasetError(f"gripper topic {options.gripper_topic} never carries the finger joints {fingers}")
    return None, None, None


def _commands(bag: dict, options: Rosbag2Options, arm: list[str]) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(stamps, commands (n, 7 or 8), what they are, topic) of the action topic."""
    conv = _conversions()
    topic = options.action_topic
    stamps, msgs = bag["streams"][topic].arrays()
    if not msgs:
        raise DatasetError(f"action topic {topic} has no messages")
    msgtype = bag["types"][topic]
    rows = []
    try:
        for m in msgs:
            if msgtype == JOINT_TRAJECTORY:
                rows.append(conv.joint_trajectory_points(m, arm)[2][0])
            elif msgtype == FLOAT64_ARRAY:
                rows.append(conv.float64_array_values(m))
            else:
                _, p, q = conv.pose_stamped_values(m)
                rows.append(np.concatenate([p, q]))
    except conv.ConversionError as e:
        raise DatasetError(f"action topic {topic}: {e}") from None
    lengths = {len(r) for r in rows}
    if len(lengths) != 1 or (msgtype == FLOAT64_ARRAY and lengths.pop() not in (7, 8)):
        raise DatasetError(f"action topic {topic}: Float64MultiArray commands must all hold 7 arm values or 8 "
                           f"(with the gripper width); got lengths {sorted({len(r) for r in rows})}")
    description = {JOINT_TRAJECTORY: "7 joint position targets (rad, first trajectory point)",
                   FLOAT64_ARRAY: "the Float64MultiArray command's values",
                   POSE_STAMPED: "TCP pose target: position xyz (m) + quaternion wxyz"}[msgtype]
    return stamps, np.stack(rows), f"{description} from {topic}", topic


def _segments(bag: dict, options: Rosbag2Options, joint_stamps: np.ndarray) -> list[tuple[float, float]]:
    start, end = float(joint_stamps[0]), float(joint_stamps[-1])
    cuts = []
    if options.split_topic:
        cuts = sorted(bag["streams"][options.split_topic].stamps)
        if not cuts:
            raise DatasetError(f"episode split topic {options.split_topic} has no messages")
        bounds = [c for c in cuts if start <= c <= end] + [end]
        segments = list(zip(bounds[:-1], bounds[1:]))
    else:
        segments = [(start, end)]
    if options.split_gap:
        holes = np.flatnonzero(np.diff(joint_stamps) > options.split_gap)
        pieces = []
        for a, b in segments:
            edges = [a] + [float(joint_stamps[i]) for i in holes if a < joint_stamps[i] < b] + [b]
            starts = [a] + [float(joint_stamps[i + 1]) for i in holes if a < joint_stamps[i] < b]
            pieces += [(s, e) for s, e in zip(starts, edges[1:])]
        segments = pieces
    return segments


def import_rosbag2(bags, out: str | os.PathLike, options: Rosbag2Options, overwrite: bool = False) -> dict:
    """Import rosbag2 recordings `bags` into a new dataset at `out`; returns the import report."""
    if not np.isfinite(options.dt) or options.dt <= 0:
        raise ConfigError(f"--dt must be > 0 seconds, got {options.dt}")
    if options.split_gap is not None and options.split_gap <= 0:
        raise ConfigError(f"--split-gap must be > 0 seconds, got {options.split_gap}")
    options.image_size = parse_image_size("x".join(str(v) for v in options.image_size))
    paths = [Path(b) for b in bags]
    for p in paths:
        if not p.exists():
            raise DatasetError(f"no bag at {p}")
    report: dict = {"source": "rosbag2", "bags": [str(p) for p in paths], "dt": options.dt, "episodes": [],
                    "streams": {}}
    totals: dict[str, StreamReport] = {}
    attrs_of_first = None
    with staged_dataset(out, {}, overwrite) as buffer:
        for path in paths:
            bag = _BagReader(path, options).read()
            robot, arm, fingers = _robot_and_names(bag, options, path)
            joint_stamps, joint_values = _lowdim(bag["streams"][bag["joint_topic"]], arm, bag["joint_topic"])
            grip_topic, grip_stamps, grip_values = _gripper_stream(bag, options, fingers)
            command = _commands(bag, options, arm) if options.action_topic else None
            images = {bag["cameras"][t]: bag["streams"][t].arrays() for t in bag["cameras"]}
            for t, (stamps, _) in zip(bag["cameras"], images.values()):
                if not len(stamps):
                    raise DatasetError(f"bag {path}: camera topic {t} has no messages")
            attrs = {"robot": robot, "joint_names": arm, "cameras": [k[4:] for k in images],
                     "image_size": list(options.image_size), "dt": options.dt,
                     "action": (command[2] if command else "next joint positions (rad)")
                     + (" + next gripper width (m)" if grip_topic is not None and not (command and command[1].shape[1] == 8)
                        else ""),
                     "source": {"format": "rosbag2", "joint_states": bag["joint_topic"], "gripper": grip_topic,
                                "action_topic": options.action_topic, "camera_topics": bag["cameras"]}}
            if options.task:
                attrs["task"] = options.task
            if attrs_of_first is None:
                attrs_of_first = attrs
                buffer.update_attrs(attrs)
            elif {k: attrs[k] for k in ("robot", "joint_names", "cameras")} != \
                    {k: attrs_of_first[k] for k in ("robot", "joint_names", "cameras")}:
                raise DatasetError(f"bag {path} records other cameras or joints than {paths[0]}; import them separately")
            for a, b in _segments(bag, options, joint_stamps):
                starts = [a, joint_stamps[0]] + [s[0] for s, _ in images.values()]
                ends = [b, joint_stamps[-1]] + [s[-1] for s, _ in images.values()]
                if grip_topic is not None:
                    starts.append(grip_stamps[0])
                    ends.append(grip_stamps[-1])
                if command is not None:
                    starts.append(command[0][0])
                grid = time_grid(max(starts), min(ends), options.dt)
                if len(grid) < 2:
                    log.warning("bag %s: the span %.3f-%.3f s holds fewer than two samples of every stream; skipped",
                                path, a, b)
                    continue
                episode, streams = _episode(grid, options.dt, bag, joint_stamps, joint_values, grip_topic,
                                            grip_stamps, grip_values, command, images)
                buffer.add_episode(episode)
                report["episodes"].append({"bag": str(path), "start": float(grid[0]), "steps": len(grid) - 1,
                                           "streams": streams})
                for name, s in streams.items():
                    totals.setdefault(name, StreamReport()).add(StreamReport(**s))
        if buffer.n_episodes == 0:
            raise DatasetError(f"no episode of at least two samples at dt={options.dt} s in {', '.join(map(str, paths))}")
        report["streams"] = {k: v.to_dict() for k, v in totals.items()}
        buffer.update_attrs({"import_report": {k: report[k] for k in ("source", "bags", "streams")}})
    for name, s in report["streams"].items():
        log.info("%s: %d messages, %d dropped, %d interpolated, %d over gaps", name, s["messages"], s["dropped"],
                 s["interpolated"], s["gaps"])
    return report


def _episode(grid, dt, bag, joint_stamps, joint_values, grip_topic, grip_stamps, grip_values, command, images):
    streams = {}
    joints, streams[bag["joint_topic"]] = interpolate(joint_stamps, joint_values, grid, dt)
    data = {"joint_pos": joints[:-1].astype(np.float32), "timestamp": grid[:-1].astype(np.float64)}
    gripper = None
    if grip_topic is not None:
        gripper, rep = interpolate(grip_stamps, grip_values, grid, dt)
        if grip_topic == bag["joint_topic"]:
            rep = streams[grip_topic]
        streams[grip_topic] = rep
        data["gripper"] = gripper[:-1].astype(np.float32)
    for key, (stamps, frames) in images.items():
        idx, streams[next(t for t, k in bag["cameras"].items() if k == key)] = hold(stamps, grid, dt)
        data[key] = np.stack([frames[i] for i in idx[:-1]])
    if command is None:
        action = joints[1:]
    else:
        idx, streams[command[3]] = hold(command[0], grid, dt)
        action = command[1][idx[:-1]]
    if gripper is not None and action.shape[1] == 7:  # the arm's command; the gripper's is its next width
        action = np.concatenate([action, gripper[1:]], axis=1)
    data["action"] = action.astype(np.float32)
    return data, {k: v.to_dict() for k, v in streams.items()}
