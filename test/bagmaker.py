"""Small rosbag2 recordings written with rosbags' own writer, and what was written into them.

A Franka FR3 teleoperation: joint states at 1 kHz (joints listed out of order, with the
fingers), two cameras (raw rgb8 at 20 Hz, png CompressedImage at 15 Hz), a JointTrajectory
command at 10 Hz, and optionally an episode marker topic. Joint positions and the gripper are
linear in time, so their value at any instant is known exactly; camera frames are solid colours
that name their frame number.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

ARM = [f"fr3_joint{i}" for i in range(1, 8)]
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
T0 = 100.0
RECEIVE_DELAY = 0.003  # the bag's receive time lags the header stamp: the importer must use the stamps
JOINT_RATE, FRONT_RATE, WRIST_RATE, COMMAND_RATE = 1000.0, 20.0, 15.0, 10.0
FRONT_START, WRIST_START = 0.02, 0.05


def q_of(t):
    """The arm's joint positions at time t (s since T0): linear, different per joint."""
    t = np.asarray(t, np.float64)[..., None]
    return 0.1 * np.arange(1, 8) + 0.05 * np.arange(1, 8) * t


def width_of(t):
    return 0.08 - 0.01 * np.asarray(t, np.float64)


def front_colour(k):
    return np.array([(7 * k) % 256, 40, 200], np.uint8)


def wrist_colour(k):
    return np.array([10, (11 * k) % 256, 90], np.uint8)


@dataclass
class Recording:
    path: object
    front_stamps: list = field(default_factory=list)
    wrist_stamps: list = field(default_factory=list)
    command_stamps: list = field(default_factory=list)
    commands: list = field(default_factory=list)


def _ns(t: float) -> int:
    return int(round((T0 + t) * 1e9))


def write_bag(path, duration=1.5, storage="sqlite3", distro="jazzy", marker_at=(), mixed_sizes=False,
              command_type="trajectory", hole=None) -> Recording:
    """command_type: trajectory | float64 (7 arm values + a gripper width) | pose (PoseStamped);
    hole=(a, b): nothing is recorded between a and b seconds (a dropped connection)."""
    ts = get_typestore(Stores.ROS2_JAZZY if distro == "jazzy" else Stores.ROS2_HUMBLE)
    T = ts.types
    rec = Recording(path)

    def header(t):
        ns = _ns(t)
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="")

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9 if distro == "jazzy" else 8, storage_plugin=plugin) as w:
        joints = w.add_connection("/franka/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        front = w.add_connection("/cameras/front/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        wrist = w.add_connection("/cameras/wrist/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                 typestore=ts)
        if command_type == "trajectory":
            command = w.add_connection("/fr3_arm_controller/joint_trajectory",
                                       "trajectory_msgs/msg/JointTrajectory", typestore=ts)
        elif command_type == "pose":
            command = w.add_connection("/cartesian_target", "geometry_msgs/msg/PoseStamped", typestore=ts)
        else:
            command = w.add_connection("/forward_position_controller/commands", "std_msgs/msg/Float64MultiArray",
                                       typestore=ts)
        marker = w.add_connection("/episode_start", "std_msgs/msg/Empty", typestore=ts) if marker_at else None
        events = []
        order = [3, 0, 6, 1, 5, 2, 4]  # joint_state_broadcaster's order is not the arm's
        for i in range(int(duration * JOINT_RATE) + 1):
            t = i / JOINT_RATE
            q = q_of(t)
            names = [ARM[j] for j in order] + FINGERS
            pos = np.concatenate([q[order], [width_of(t) / 2] * 2])
            msg = T["sensor_msgs/msg/JointState"](header=header(t), name=names, position=pos,
                                                  velocity=np.zeros(0), effort=np.zeros(0))
            events.append((t, joints, msg))
        for k in range(int((duration - FRONT_START) * FRONT_RATE) + 1):
            t = FRONT_START + k / FRONT_RATE
            h, w_ = (30, 40) if not (mixed_sizes and k == 5) else (60, 80)
            pixels = np.broadcast_to(front_colour(k), (h, w_, 3)).copy()
            msg = T["sensor_msgs/msg/Image"](header=header(t), height=h, width=w_, encoding="rgb8", is_bigendian=0,
                                             step=3 * w_, data=pixels.reshape(-1))
            events.append((t, front, msg))
            rec.front_stamps.append(t)
        for k in range(int((duration - WRIST_START) * WRIST_RATE) + 1):
            t = WRIST_START + k / WRIST_RATE
            buf = io.BytesIO()
            Image.fromarray(np.broadcast_to(wrist_colour(k), (24, 32, 3)).copy()).save(buf, format="png")
            msg = T["sensor_msgs/msg/CompressedImage"](header=header(t), format="png",
                                                       data=np.frombuffer(buf.getvalue(), np.uint8))
            events.append((t, wrist, msg))
            rec.wrist_stamps.append(t)
        for k in range(int(duration * COMMAND_RATE) + 1):
            t = k / COMMAND_RATE
            target = q_of(t + 0.25)
            if command_type == "trajectory":
                point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=target[::-1].copy(), velocities=np.zeros(0), accelerations=np.zeros(0),
                    effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=10**8))
                msg = T["trajectory_msgs/msg/JointTrajectory"](header=header(t), joint_names=ARM[::-1], points=[point])
            elif command_type == "pose":
                quat = np.array([np.cos(0.1 * k), 0.0, 0.0, np.sin(0.1 * k)])
                target = np.concatenate([target[:3], quat])
                msg = T["geometry_msgs/msg/PoseStamped"](header=header(t), pose=T["geometry_msgs/msg/Pose"](
                    position=T["geometry_msgs/msg/Point"](x=target[0], y=target[1], z=target[2]),
                    orientation=T["geometry_msgs/msg/Quaternion"](w=quat[0], x=quat[1], y=quat[2], z=quat[3])))
            else:
                target = np.concatenate([target, [0.02 * k]])
                msg = T["std_msgs/msg/Float64MultiArray"](
                    layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=target)
            events.append((t, command, msg))
            rec.command_stamps.append(t)
            rec.commands.append(target)
        for t in marker_at:
            events.append((t, marker, T["std_msgs/msg/Empty"]()))
        if hole is not None:
            events = [e for e in events if not hole[0] < e[0] < hole[1]]
            kept = [i for i, t in enumerate(rec.command_stamps) if not hole[0] < t < hole[1]]
            rec.command_stamps, rec.commands = [rec.command_stamps[i] for i in kept], [rec.commands[i] for i in kept]
            rec.front_stamps = [t for t in rec.front_stamps if not hole[0] < t < hole[1]]
            rec.wrist_stamps = [t for t in rec.wrist_stamps if not hole[0] < t < hole[1]]
        events.sort(key=lambda e: e[0])
        for t, conn, msg in events:
            w.write(conn, _ns(t + RECEIVE_DELAY), ts.serialize_cdr(msg, conn.msgtype))
    return rec


def latest(stamps, t):
    """Index of the latest stamp at or before t."""
    return int(np.searchsorted(np.asarray(stamps) + T0, t + 1e-6, side="right") - 1)
