"""ROS 2 messages <-> numpy, without importing rclpy.

Every function here works on any object that has the message's attributes: the classes
rclpy generates (what the nodes receive and publish) and rosbags' dataclasses (what the tests
build and push through real CDR bytes). The two differ only in the Python types of a few
fields, and the writers here match whatever type the message object already holds:

  field                    rclpy                     rosbags
  uint8[] (Image.data)     array.array('B')          numpy uint8 array
  float64[]                array.array('d')          numpy float64 array
  byte (Diagnostic level)  bytes of length 1         int

so a message is built by the caller (`Image()` in a node, a dataclass in a test) and filled
here. Readers accept any of these types.

Errors a sender can cause (a wrong encoding, a step that does not fit the width, a joint
missing from a JointState, an image of another size than the policy was trained on) raise
`ConversionError` with a message that says what is wrong and what was expected.
"""

from __future__ import annotations

import array
import dataclasses
import io
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from fastdp_ros.errors import FastDPError


class ConversionError(FastDPError, ValueError):
    """A message that cannot be turned into what the policy needs (or the reverse)."""


# ----------------------------------------------------------------------------- time


def stamp_to_seconds(stamp) -> float:
    """builtin_interfaces/Time (or Duration) -> float seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def seconds_to_sec_nanosec(t: float) -> tuple[int, int]:
    """Float seconds -> (sec, nanosec) with 0 <= nanosec < 1e9 (negative times floor the sec)."""
    if not math.isfinite(t):
        raise ConversionError(f"cannot stamp a message with the non-finite time {t}")
    total_ns = int(round(float(t) * 1e9))
    sec, nanosec = divmod(total_ns, 1_000_000_000)
    return int(sec), int(nanosec)


def fill_stamp(stamp, t: float) -> None:
    """Write float seconds into a Time/Duration message in place."""
    stamp.sec, stamp.nanosec = seconds_to_sec_nanosec(t)


def fill_header(header, t: float, frame_id: str = "") -> None:
    fill_stamp(header.stamp, t)
    header.frame_id = str(frame_id)


# ----------------------------------------------------------------------------- field types


def _bytes_of(data) -> bytes | memoryview:
    """The raw bytes of a uint8[] field, whatever its Python type (no copy where possible)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1).data
    if isinstance(data, array.array):
        return memoryview(data).cast("B")
    return bytes(data)  # a list of ints


def _uint8_field_like(current, raw: bytes):
    """`raw` as the Python type the message's uint8[] field holds."""
    if isinstance(current, np.ndarray):
        return np.frombuffer(raw, dtype=np.uint8).copy()
    if isinstance(current, (bytes, bytearray)):
        return bytes(raw)
    # rclpy: array.array('B') is the setter's fast path (a list or bytes is checked element by element)
    return array.array("B", raw)


def _float64_field_like(current, values) -> Any:
    """`values` as the Python type the message's float64[] field holds."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if isinstance(current, np.ndarray):
        return v.copy()
    if isinstance(current, list):
        return v.tolist()
    return array.array("d", v.tobytes())


def _byte_like(current, value: int):
    """A `byte` field value (rclpy: bytes of length 1; rosbags: int)."""
    return bytes([int(value)]) if isinstance(current, (bytes, bytearray)) else int(value)


def _byte_value(value) -> int:
    if isinstance(value, (bytes, bytearray)):
        return value[0] if value else 0
    return int(value)


def message_fields(msg) -> list[str]:
    """The field names of a message object (rclpy class or rosbags dataclass)."""
    getter = getattr(msg, "get_fields_and_field_types", None)
    if getter is not None:
        return list(getter())
    if dataclasses.is_dataclass(msg):
        return [f.name for f in dataclasses.fields(msg) if not f.name.startswith("__")]
    slots = getattr(type(msg), "__slots__", ())
    if slots:
        return [s.lstrip("_") for s in slots]
    return [k for k in vars(msg) if not k.startswith("_")]


# ----------------------------------------------------------------------------- images

#: encoding -> (channels, channel order as it lies in memory); all 8 bits per channel
IMAGE_ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "rgb"),
    "bgr8": (3, "bgr"),
    "rgba8": (4, "rgba"),
    "bgra8": (4, "bgra"),
    "mono8": (1, "mono"),
    "8UC1": (1, "mono"),
    "8UC3": (3, "bgr"),  # OpenCV's untyped 3-channel images are BGR by convention
}


def image_to_array(msg) -> tuple[np.ndarray, str]:
    """sensor_msgs/Image -> (H, W, C) uint8 array in the message's own channel order, and that
    order ('rgb', 'bgr', 'rgba', 'bgra', 'mono'). Row padding (step > width * channels) is
    removed. Raises ConversionError for an unknown encoding or a step/data size that does not
    fit the width and height."""
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f"image encoding {encoding!r} is not supported; use one of "
                              f"{', '.join(IMAGE_ENCODINGS)} (8 bits per channel)")
    channels, order = IMAGE_ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels
    if h <= 0 or w <= 0:
        raise ConversionError(f"image has no pixels ({w}x{h})")
    if step < row:
        raise ConversionError(f"image step {step} is smaller than width x channels = {w} x {channels} = {row} "
                              f"bytes for {encoding}: the step or the encoding is wrong")
    raw = _bytes_of(msg.data)
    if len(raw) != step * h:
        raise ConversionError(f"image data has {len(raw)} bytes, step x height = {step} x {h} = {step * h}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, step)
    return rows[:, :row].reshape(h, w, channels), order


def to_rgb(pixels: np.ndarray, order: str) -> np.ndarray:
    """(H, W, C) uint8 in `order` -> (H, W, 3) uint8 RGB (mono replicated, alpha dropped)."""
    if order == "rgb":
        return np.ascontiguousarray(pixels)
    if order == "bgr":
        return np.ascontiguousarray(pixels[..., ::-1])
    if order == "rgba":
        return np.ascontiguousarray(pixels[..., :3])
    if order == "bgra":
        return np.ascontiguousarray(pixels[..., 2::-1])
    if order == "mono":
        return np.ascontiguousarray(np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=2))
    raise ConversionError(f"unknown channel order {order!r}")


def check_image_shape(rgb: np.ndarray, expected_shape: Sequence[int] | None, what: str = "image") -> np.ndarray:
    if expected_shape is not None and tuple(rgb.shape) != tuple(expected_shape):
        eh, ew = expected_shape[:2]
        raise ConversionError(f"{what} is {rgb.shape[1]}x{rgb.shape[0]} px, the policy was trained on {ew}x{eh}: "
                              f"resize the stream to {ew}x{eh} before the policy (e.g. image_proc's resize node)")
    return rgb


def image_to_rgb(msg, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, checked against the policy's image shape."""
    pixels, order = image_to_array(msg)
    return check_image_shape(to_rgb(pixels, order), expected_shape)


def fill_image(msg, pixels: np.ndarray, encoding: str = "rgb8") -> None:
    """Write an (H, W, C) or (H, W) uint8 array into a sensor_msgs/Image (no row padding).
    The array's channels must already be in `encoding`'s order."""
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f"image encoding {encoding!r} is not supported; use one of {', '.join(IMAGE_ENCODINGS)}")
    channels, _ = IMAGE_ENCODINGS[encoding]
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != channels:
        raise ConversionError(f"{encoding} needs a uint8 (H, W, {channels}) array, got {a.dtype} {a.shape}")
    h, w, _ = a.shape
    msg.height, msg.width = int(h), int(w)
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(w * channels)
    msg.data = _uint8_field_like(msg.data, np.ascontiguousarray(a).tobytes())


def rgb_to_encoding(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) RGB -> the channel layout of `encoding` (for publishing)."""
    if encoding == "rgb8":
        return rgb
    if encoding in ("bgr8", "8UC3"):
        return np.ascontiguousarray(rgb[..., ::-1])
    if encoding == "rgba8":
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if encoding in ("mono8", "8UC1"):
        # ITU-R BT.601 luma, the weights cv_bridge / OpenCV use for RGB -> grey
        grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    raise ConversionError(f"image encoding {encoding!r} is not supported; use one of {', '.join(IMAGE_ENCODINGS)}")


#: CompressedImage formats decoded here: image_transport writes "<orig>; jpeg compressed <enc>"
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def compressed_image_to_rgb(msg, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB.

    Decoded with Pillow (no OpenCV needed). JPEG holds colours, not channel orders: whatever
    the camera's encoding was, the decoded pixels are RGB.
    """
    fmt = str(msg.format).lower()
    if not any(f in fmt for f in COMPRESSED_FORMATS):
        raise ConversionError(f"compressed image format {msg.format!r} is not supported; "
                              f"use jpeg or png (compressedDepth is for depth images)")
    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover - Pillow is an install requirement
        raise ConversionError("decoding CompressedImage needs Pillow: pip install Pillow") from None
    raw = bytes(_bytes_of(msg.data))
    try:
        with PILImage.open(io.BytesIO(raw)) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - PIL raises several types for corrupt data
        raise ConversionError(f"cannot decode {msg.format!r} compressed image ({len(raw)} bytes): {e}") from None
    return check_image_shape(rgb, expected_shape, "compressed image")


# ----------------------------------------------------------------------------- joint states


def joint_positions(msg, names: Sequence[str]) -> np.ndarray:
    """sensor_msgs/JointState -> positions of `names`, in that order (float64).

    A JointState may list joints in any order and carry more joints than asked for
    (joint_state_broadcaster merges arm and fingers). Missing joints raise ConversionError
    naming them and the joints the message does have.
    """
    msg_names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64).reshape(-1)
    if len(positions) != len(msg_names):
        raise ConversionError(f"JointState has {len(msg_names)} names but {len(positions)} positions")
    index = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ConversionError(f"JointState lacks joints {missing}; it has {msg_names}. Set the node's joint_prefix "
                              f"(or robot_type) to match the robot's joint names")
    return positions[[index[n] for n in names]]


def has_joints(msg, names: Iterable[str]) -> bool:
    present = set(msg.name)
    return all(n in present for n in names)


def gripper_width(msg, finger_names: Sequence[str]) -> float | None:
    """Opening width (m) of a Franka hand from its finger joints (each finger moves half the
    width), or None when the message does not carry them."""
    if not has_joints(msg, finger_names):
        return None
    return float(np.sum(joint_positions(msg, finger_names)))


def fill_joint_state(msg, names: Sequence[str], positions, t: float, frame_id: str = "",
                     velocities=None) -> None:
    fill_header(msg.header, t, frame_id)
    q = np.asarray(positions, dtype=np.float64).reshape(-1)
    if len(q) != len(names):
        raise ConversionError(f"{len(names)} joint names but {len(q)} positions")
    msg.name = list(names)
    msg.position = _float64_field_like(msg.position, q)
    msg.velocity = _float64_field_like(msg.velocity, [] if velocities is None else velocities)
    msg.effort = _float64_field_like(msg.effort, [])


# ----------------------------------------------------------------------------- commands


def fill_joint_trajectory(msg, names: Sequence[str], positions, time_from_start_s: float, point) -> None:
    """A one-point trajectory_msgs/JointTrajectory: reach `positions` `time_from_start_s` after
    the controller receives it. The header stamp is zero: joint_trajectory_controller starts a
    trajectory stamped 0 at once. `point` is a fresh JointTrajectoryPoint to fill."""
    q = np.asarray(positions, dtype=np.float64).reshape(-1)
    if len(q) != len(names):
        raise ConversionError(f"{len(names)} joint names but {len(q)} positions")
    if not np.all(np.isfinite(q)):
        raise ConversionError(f"refusing to send non-finite joint positions {q}")
    fill_header(msg.header, 0.0)
    msg.joint_names = list(names)
    point.positions = _float64_field_like(point.positions, q)
    fill_stamp(point.time_from_start, time_from_start_s)
    msg.points = [point]


def joint_trajectory_points(msg, names: Sequence[str]) -> tuple[float, np.ndarray, np.ndarray]:
    """trajectory_msgs/JointTrajectory -> (header stamp s, time_from_start (n,), positions (n, len(names)))
    with the columns reordered to `names`. Missing joints or a point without positions raise
    ConversionError."""
    msg_names = list(msg.joint_names)
    index = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ConversionError(f"JointTrajectory lacks joints {missing}; it has {msg_names}")
    cols = [index[n] for n in names]
    times, rows = [], []
    for k, p in enumerate(msg.points):
        pos = np.asarray(p.positions, dtype=np.float64).reshape(-1)
        if len(pos) != len(msg_names):
            raise ConversionError(f"JointTrajectory point {k} has {len(pos)} positions for {len(msg_names)} joints")
        times.append(stamp_to_seconds(p.time_from_start))
        rows.append(pos[cols])
    if not rows:
        raise ConversionError("JointTrajectory has no points")
    return stamp_to_seconds(msg.header.stamp), np.asarray(times), np.stack(rows)


def fill_float64_array(msg, values) -> None:
    """std_msgs/Float64MultiArray for forward_command_controller: data only, the layout left empty
    (the controller reads `data` in its joint order)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ConversionError(f"refusing to send non-finite values {v}")
    msg.data = _float64_field_like(msg.data, v)


def float64_array_values(msg, expected_len: int | None = None) -> np.ndarray:
    v = np.asarray(msg.data, dtype=np.float64).reshape(-1)
    if expected_len is not None and len(v) != expected_len:
        raise ConversionError(f"Float64MultiArray has {len(v)} values, expected {expected_len}")
    return v


def fill_pose_stamped(msg, position, quat_wxyz, t: float, frame_id: str) -> None:
    """geometry_msgs/PoseStamped from a position (m) and a unit quaternion (w, x, y, z)."""
    p = np.asarray(position, dtype=np.float64).reshape(3)
    q = np.asarray(quat_wxyz, dtype=np.float64).reshape(4)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise ConversionError(f"refusing to send a non-finite pose {p}, {q}")
    fill_header(msg.header, t, frame_id)
    pos, ori = msg.pose.position, msg.pose.orientation
    pos.x, pos.y, pos.z = (float(v) for v in p)
    ori.w, ori.x, ori.y, ori.z = (float(v) for v in q)


def pose_stamped_values(msg) -> tuple[float, np.ndarray, np.ndarray]:
    """geometry_msgs/PoseStamped -> (stamp s, position (3,), unit quaternion wxyz (4,))."""
    pos, ori = msg.pose.position, msg.pose.orientation
    p = np.array([pos.x, pos.y, pos.z], dtype=np.float64)
    q = np.array([ori.w, ori.x, ori.y, ori.z], dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not (np.all(np.isfinite(p)) and np.isfinite(n) and n > 1e-9):
        raise ConversionError(f"PoseStamped has a non-finite position or a zero quaternion: {p}, {q}")
    return stamp_to_seconds(msg.header.stamp), p, q / n


# ----------------------------------------------------------------------------- diagnostics

#: diagnostic_msgs/DiagnosticStatus levels by name (the message's own constants, as ints)
DIAGNOSTIC_LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2, "STALE": 3}


@dataclasses.dataclass(frozen=True)
class DiagnosticEntry:
    """One diagnostic_msgs/DiagnosticStatus, middleware-free."""

    name: str
    level: str  # OK | WARN | ERROR | STALE
    message: str
    values: dict[str, str]
    hardware_id: str = ""

    def __post_init__(self):
        if self.level not in DIAGNOSTIC_LEVELS:
            raise ValueError(f"diagnostic level must be one of {list(DIAGNOSTIC_LEVELS)}, got {self.level!r}")


def fill_diagnostic_array(msg, entries: Sequence[DiagnosticEntry], t: float,
                          new_status: Callable[[], Any], new_key_value: Callable[[str, str], Any]) -> None:
    """diagnostic_msgs/DiagnosticArray from entries. `new_status()` returns an empty
    DiagnosticStatus, `new_key_value(key, value)` a KeyValue (the message classes differ
    between rclpy and rosbags)."""
    fill_header(msg.header, t)
    statuses = []
    for e in entries:
        s = new_status()
        s.level = _byte_like(s.level, DIAGNOSTIC_LEVELS[e.level])
        s.name, s.message, s.hardware_id = e.name, e.message, e.hardware_id
        s.values = [new_key_value(str(k), str(v)) for k, v in e.values.items()]
        statuses.append(s)
    msg.status = statuses


def diagnostic_levels(msg) -> dict[str, int]:
    """name -> level (int) of each status of a DiagnosticArray (for tests and tools)."""
    return {s.name: _byte_value(s.level) for s in msg.status}


# ----------------------------------------------------------------------------- franka_msgs

#: franka_msgs/FrankaRobotState robot_mode constants (franka_msgs/msg/FrankaRobotState.msg)
FRANKA_ROBOT_MODES = {0: "OTHER", 1: "IDLE", 2: "MOVE", 3: "GUIDING", 4: "REFLEX", 5: "USER_STOPPED",
                      6: "AUTOMATIC_ERROR_RECOVERY"}


def franka_robot_state(msg) -> tuple[int, list[str]]:
    """franka_msgs/FrankaRobotState -> (robot_mode, names of the current_errors flags that are set)."""
    mode = _byte_value(msg.robot_mode)
    errors = msg.current_errors
    active = [name for name in message_fields(errors)
              if isinstance(getattr(errors, name, None), (bool, np.bool_)) and getattr(errors, name)]
    return mode, active
