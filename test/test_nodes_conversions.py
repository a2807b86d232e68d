"""Message <-> numpy conversions on real ROS 2 message classes and CDR bytes (rosbags' Humble and
Jazzy typestores), plus the field types rclpy uses (array.array, bytes), without ROS."""

import array
import io
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

from fastdp_ros import ros_messages as conv
from fastdp_ros.ros_messages import ConversionError

STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


@pytest.fixture(scope="module", params=sorted(STORES))
def ts(request):
    return get_typestore(STORES[request.param])


def cdr_round_trip(ts, msg):
    """Serialize to CDR bytes and back: what crosses the wire is what the node reads."""
    data = ts.serialize_cdr(msg, msg.__msgtype__)
    return ts.deserialize_cdr(data, msg.__msgtype__)


def header(ts, t=0.0, frame_id=""):
    sec, nanosec = conv.seconds_to_sec_nanosec(t)
    return ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                           frame_id=frame_id)


def empty_image(ts, t=12.5):
    return ts.types["sensor_msgs/msg/Image"](header=header(ts, t, "cam"), height=0, width=0, encoding="",
                                             is_bigendian=0, step=0, data=np.empty(0, np.uint8))


def raw_image(ts, pixels_bytes, height, width, encoding, step):
    return ts.types["sensor_msgs/msg/Image"](header=header(ts, 1.0), height=height, width=width, encoding=encoding,
                                             is_bigendian=0, step=step, data=np.frombuffer(pixels_bytes, np.uint8))


def joint_state(ts, names, positions, t=3.25):
    return ts.types["sensor_msgs/msg/JointState"](header=header(ts, t), name=list(names),
                                                  position=np.asarray(positions, np.float64),
                                                  velocity=np.empty(0), effort=np.empty(0))


RGB = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- time


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=4e9, allow_nan=False))
def test_seconds_round_trip_through_sec_nanosec(t):
    sec, nanosec = conv.seconds_to_sec_nanosec(t)
    assert 0 <= nanosec < 1_000_000_000
    assert abs(sec + nanosec * 1e-9 - t) <= 1e-9 * max(1.0, abs(t)) + 1e-9


def test_stamp_survives_cdr(ts):
    msg = cdr_round_trip(ts, empty_image(ts, 1712345678.123456789))
    assert conv.stamp_to_seconds(msg.header.stamp) == pytest.approx(1712345678.123456789, abs=1e-6)
    with pytest.raises(ConversionError, match="non-finite"):
        conv.seconds_to_sec_nanosec(float("nan"))


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_image_round_trip(ts, encoding):
    msg = empty_image(ts)
    conv.fill_image(msg, conv.rgb_to_encoding(RGB, encoding), encoding)
    back = cdr_round_trip(ts, msg)
    assert (back.height, back.width, back.encoding) == (6, 5, encoding)
    assert back.step == 5 * conv.IMAGE_ENCODINGS[encoding][0]
    np.testing.assert_array_equal(conv.image_to_rgb(back, RGB.shape), RGB)


def test_bgr_bytes_are_swapped_to_rgb(ts):
    """A bgr8 frame's first byte is blue: the policy must see it in the third channel."""
    bgr = np.array([[[10, 20, 30]]], np.uint8)
    msg = raw_image(ts, bgr.tobytes(), 1, 1, "bgr8", 3)
    np.testing.assert_array_equal(conv.image_to_rgb(cdr_round_trip(ts, msg)), [[[30, 20, 10]]])


def test_mono_image_round_trip_replicates_grey(ts):
    grey = RGB[..., 0]
    msg = empty_image(ts)
    conv.fill_image(msg, grey, "mono8")
    back = cdr_round_trip(ts, msg)
    assert back.step == 5
    rgb = conv.image_to_rgb(back, (6, 5, 3))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], grey)


def test_row_padding_is_removed(ts):
    """Drivers may pad rows (step > width * channels): the padding must not shift pixels."""
    step = 5 * 3 + 4
    padded = np.zeros((6, step), np.uint8)
    padded[:, :15] = RGB.reshape(6, 15)
    padded[:, 15:] = 255
    msg = cdr_round_trip(ts, raw_image(ts, padded.tobytes(), 6, 5, "rgb8", step))
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)


def test_step_too_small_for_the_encoding_is_refused(ts):
    """A bgr8 image labelled mono-sized step (or the wrong encoding for its step)."""
    msg = cdr_round_trip(ts, raw_image(ts, RGB.tobytes(), 6, 5, "rgb8", 5))
    with pytest.raises(ConversionError, match=r"step 5 is smaller than width x channels = 5 x 3 = 15"):
        conv.image_to_rgb(msg)


def test_data_size_not_matching_step_and_height_is_refused(ts):
    msg = cdr_round_trip(ts, raw_image(ts, RGB.tobytes()[:-3], 6, 5, "rgb8", 15))
    with pytest.raises(ConversionError, match=r"87 bytes, step x height = 15 x 6 = 90"):
        conv.image_to_rgb(msg)


@pytest.mark.parametrize("encoding", ["16UC1", "yuv422", "32FC1", ""])
def test_unknown_encoding_is_refused_with_the_supported_ones(ts, encoding):
    msg = cdr_round_trip(ts, raw_image(ts, RGB.tobytes(), 6, 5, encoding, 15))
    with pytest.raises(ConversionError, match="not supported; use one of rgb8, bgr8"):
        conv.image_to_rgb(msg)
    with pytest.raises(ConversionError, match="not supported"):
        conv.fill_image(empty_image(ts), RGB, encoding)


def test_image_of_another_size_than_the_policy_is_refused(ts):
    msg = empty_image(ts)
    conv.fill_image(msg, RGB, "rgb8")
    with pytest.raises(ConversionError, match=r"5x6 px, the policy was trained on 96x96"):
        conv.image_to_rgb(cdr_round_trip(ts, msg), (96, 96, 3))


def test_fill_image_refuses_wrong_channels_or_dtype(ts):
    with pytest.raises(ConversionError, match=r"rgb8 needs a uint8 \(H, W, 3\)"):
        conv.fill_image(empty_image(ts), RGB[..., :2], "rgb8")
    with pytest.raises(ConversionError, match="uint8"):
        conv.fill_image(empty_image(ts), RGB.astype(np.float32), "rgb8")


def test_rclpy_style_fields_get_array_array():
    """rclpy's uint8[] setter takes array.array('B') without a per-byte check: fill_image must
    produce it when the message holds one (as a freshly built rclpy Image does)."""
    msg = SimpleNamespace(header=None, height=0, width=0, encoding="", is_bigendian=0, step=0,
                          data=array.array("B"))
    conv.fill_image(msg, RGB, "rgb8")
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    np.testing.assert_array_equal(conv.image_to_rgb(msg), RGB)


# ----------------------------------------------------------------------------- compressed images


def compressed(ts, rgb, fmt):
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return ts.types["sensor_msgs/msg/CompressedImage"](header=header(ts, 2.0), format=fmt,
                                                       data=np.frombuffer(buf.getvalue(), np.uint8))


def test_png_compressed_image_decodes_exactly(ts):
    msg = cdr_round_trip(ts, compressed(ts, RGB, "png"))
    np.testing.assert_array_equal(conv.compressed_image_to_rgb(msg, RGB.shape), RGB)


def test_jpeg_compressed_image_decodes_to_rgb(ts):
    """image_transport names the format "<enc>; jpeg compressed <enc>"; colours come back as RGB."""
    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = 200  # red
    smooth[..., 2] = 40
    msg = cdr_round_trip(ts, compressed(ts, smooth, "bgr8; jpeg compressed bgr8"))
    rgb = conv.compressed_image_to_rgb(msg, (16, 16, 3))
    assert np.abs(rgb.astype(int) - smooth).max() <= 6


def test_compressed_image_errors(ts):
    msg = compressed(ts, RGB, "png")
    with pytest.raises(ConversionError, match="trained on 96x96"):
        conv.compressed_image_to_rgb(msg, (96, 96, 3))
    msg.format = "16UC1; compressedDepth"
    with pytest.raises(ConversionError, match="use jpeg or png"):
        conv.compressed_image_to_rgb(msg)
    bad = ts.types["sensor_msgs/msg/CompressedImage"](header=header(ts), format="jpeg",
                                                      data=np.frombuffer(b"not a jpeg", np.uint8))
    with pytest.raises(ConversionError, match="cannot decode 'jpeg'"):
        conv.compressed_image_to_rgb(cdr_round_trip(ts, bad))


# ----------------------------------------------------------------------------- joint states

ARM = [f"fr3_joint{i}" for i in range(1, 8)]
FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]


def test_joint_state_is_reordered_by_name(ts):
    q = np.linspace(-1.0, 1.0, 7)
    order = [3, 0, 6, 1, 5, 2, 4]
    names = [ARM[i] for i in order] + FINGERS
    msg = cdr_round_trip(ts, joint_state(ts, names, np.r_[q[order], 0.02, 0.02]))
    np.testing.assert_array_equal(conv.joint_positions(msg, ARM), q)
    assert conv.gripper_width(msg, FINGERS) == pytest.approx(0.04)
    assert conv.gripper_width(msg, ["panda_finger_joint1", "panda_finger_joint2"]) is None


def test_missing_joints_are_named(ts):
    msg = cdr_round_trip(ts, joint_state(ts, ARM[:5], np.zeros(5)))
    with pytest.raises(ConversionError, match=r"lacks joints \['fr3_joint6', 'fr3_joint7'\]; it has \['fr3_joint1'"):
        conv.joint_positions(msg, ARM)
    wrong = cdr_round_trip(ts, joint_state(ts, [n.replace("fr3", "panda") for n in ARM], np.zeros(7)))
    with pytest.raises(ConversionError, match="joint_prefix"):
        conv.joint_positions(wrong, ARM)


def test_joint_state_with_fewer_positions_than_names(ts):
    msg = joint_state(ts, ARM, np.zeros(6))
    with pytest.raises(ConversionError, match="7 names but 6 positions"):
        conv.joint_positions(cdr_round_trip(ts, msg), ARM)


def test_fill_joint_state_round_trip(ts):
    msg = joint_state(ts, [], np.empty(0), t=0.0)
    conv.fill_joint_state(msg, ARM + FINGERS, np.r_[np.arange(7.0), 0.01, 0.01], 5.5)
    back = cdr_round_trip(ts, msg)
    assert list(back.name) == ARM + FINGERS
    assert conv.stamp_to_seconds(back.header.stamp) == 5.5
    np.testing.assert_array_equal(conv.joint_positions(back, ARM), np.arange(7.0))


# ----------------------------------------------------------------------------- commands


def empty_point(ts):
    return ts.types["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.empty(0), velocities=np.empty(0), accelerations=np.empty(0), effort=np.empty(0),
        time_from_start=ts.types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))


def test_joint_trajectory_round_trip(ts):
    msg = ts.types["trajectory_msgs/msg/JointTrajectory"](header=header(ts, 99.0), joint_names=[], points=[])
    q = np.linspace(0.1, 0.7, 7)
    conv.fill_joint_trajectory(msg, ARM, q, 2 / 60, empty_point(ts))
    back = cdr_round_trip(ts, msg)
    assert back.header.stamp.sec == 0 and back.header.stamp.nanosec == 0  # start now
    stamp, times, positions = conv.joint_trajectory_points(back, list(reversed(ARM)))
    assert stamp == 0.0 and times == pytest.approx([2 / 60], abs=1e-9)
    np.testing.assert_array_equal(positions[0], q[::-1])


def test_joint_trajectory_errors(ts):
    msg = ts.types["trajectory_msgs/msg/JointTrajectory"](header=header(ts), joint_names=[], points=[])
    with pytest.raises(ConversionError, match="non-finite"):
        conv.fill_joint_trajectory(msg, ARM, np.r_[np.zeros(6), np.nan], 0.1, empty_point(ts))
    with pytest.raises(ConversionError, match="7 joint names but 6 positions"):
        conv.fill_joint_trajectory(msg, ARM, np.zeros(6), 0.1, empty_point(ts))
    conv.fill_joint_trajectory(msg, ARM, np.zeros(7), 0.1, empty_point(ts))
    with pytest.raises(ConversionError, match=r"lacks joints \['panda_joint1'"):
        conv.joint_trajectory_points(cdr_round_trip(ts, msg), [n.replace("fr3", "panda") for n in ARM])
    msg.points = []
    with pytest.raises(ConversionError, match="no points"):
        conv.joint_trajectory_points(msg, ARM)


def test_float64_multi_array_round_trip(ts):
    layout = ts.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    msg = ts.types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.empty(0))
    conv.fill_float64_array(msg, np.arange(7.0))
    back = cdr_round_trip(ts, msg)
    np.testing.assert_array_equal(conv.float64_array_values(back, 7), np.arange(7.0))
    with pytest.raises(ConversionError, match="has 7 values, expected 8"):
        conv.float64_array_values(back, 8)
    with pytest.raises(ConversionError, match="non-finite"):
        conv.fill_float64_array(msg, [np.inf])


def test_pose_stamped_round_trip(ts):
    t = ts.types
    msg = t["geometry_msgs/msg/PoseStamped"](
        header=header(ts), pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=0, y=0, z=0),
                                                           orientation=t["geometry_msgs/msg/Quaternion"](x=0, y=0, z=0,
                                                                                                         w=1)))
    quat = np.array([0.5, 0.5, -0.5, 0.5])
    conv.fill_pose_stamped(msg, [0.4, -0.1, 0.3], quat, 7.0, "fr3_link0")
    stamp, p, q = conv.pose_stamped_values(cdr_round_trip(ts, msg))
    assert stamp == 7.0 and msg.header.frame_id == "fr3_link0"
    np.testing.assert_allclose(p, [0.4, -0.1, 0.3])
    np.testing.assert_allclose(q, quat)
    msg.pose.orientation.w = msg.pose.orientation.x = msg.pose.orientation.y = msg.pose.orientation.z = 0.0
    with pytest.raises(ConversionError, match="zero quaternion"):
        conv.pose_stamped_values(msg)


# ----------------------------------------------------------------------------- diagnostics


def test_diagnostic_array_round_trip(ts):
    t = ts.types
    msg = t["diagnostic_msgs/msg/DiagnosticArray"](header=header(ts), status=[])
    entries = [conv.DiagnosticEntry("fastdp_policy: controller", "ERROR", "STOP: stale", {"inference_p50_ms": "2.10"}),
               conv.DiagnosticEntry("fastdp_policy: sensors", "OK", "all streams fresh", {})]

    def new_status():
        return t["diagnostic_msgs/msg/DiagnosticStatus"](level=0, name="", message="", hardware_id="", values=[])

    conv.fill_diagnostic_array(msg, entries, 4.0, new_status,
                               lambda k, v: t["diagnostic_msgs/msg/KeyValue"](key=k, value=v))
    back = cdr_round_trip(ts, msg)
    assert conv.diagnostic_levels(back) == {"fastdp_policy: controller": 2, "fastdp_policy: sensors": 0}
    assert back.status[0].values[0].key == "inference_p50_ms" and back.status[0].values[0].value == "2.10"


def test_diagnostic_level_is_bytes_for_rclpy():
    """rclpy's DiagnosticStatus.level is a `byte` field: bytes of length 1."""
    status = SimpleNamespace(level=b"\x00", name="", message="", hardware_id="", values=[])
    msg = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0), frame_id=""), status=[])
    conv.fill_diagnostic_array(msg, [conv.DiagnosticEntry("x", "WARN", "m", {})], 1.0, lambda: status,
                               lambda k, v: (k, v))
    assert msg.status[0].level == b"\x01"
    with pytest.raises(ValueError, match="level must be one of"):
        conv.DiagnosticEntry("x", "FATAL", "m", {})


# ----------------------------------------------------------------------------- franka_msgs

# franka_msgs is not in rosbags' stores: register the fields the node reads (same names and types
# as franka_msgs/msg/FrankaRobotState and Errors) and push them through real CDR as well
FRANKA_ERRORS = "bool joint_position_limits_violation\nbool joint_reflex\nbool cartesian_reflex\n" \
                "bool communication_constraints_violation\n"
FRANKA_STATE = ("std_msgs/Header header\nuint8 ROBOT_MODE_IDLE=1\nuint8 ROBOT_MODE_REFLEX=4\n"
                "uint8 robot_mode\nfranka_msgs/Errors current_errors\n")


@pytest.fixture(scope="module")
def franka_ts(ts):
    types = get_types_from_msg(FRANKA_ERRORS, "franka_msgs/msg/Errors")
    types.update(get_types_from_msg(FRANKA_STATE, "franka_msgs/msg/FrankaRobotState"))
    ts.register(types)
    return ts


def test_franka_robot_state_mode_and_errors(franka_ts):
    t = franka_ts.types
    errors = t["franka_msgs/msg/Errors"](joint_position_limits_violation=False, joint_reflex=True,
                                         cartesian_reflex=False, communication_constraints_violation=True)
    msg = t["franka_msgs/msg/FrankaRobotState"](header=header(franka_ts), robot_mode=4, current_errors=errors)
    mode, active = conv.franka_robot_state(cdr_round_trip(franka_ts, msg))
    assert conv.FRANKA_ROBOT_MODES[mode] == "REFLEX"
    assert active == ["joint_reflex", "communication_constraints_violation"]
