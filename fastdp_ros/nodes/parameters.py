"""The nodes' ROS parameters, declared up front: name, default, description, and whether it may
change at run time.

The nodes declare exactly these (with a ParameterDescriptor carrying the description and
read_only flag), the config/*.yaml files set a subset of them, and the tests check both
against this table without ROS. Defaults are never empty lists: rclpy cannot infer the type
of an empty array (it would declare it a byte array), so "unset" is an empty string or 0.

Default topic names follow ros2_control's controllers (`<controller>/joint_trajectory`,
`<controller>/commands`) and franka_ros2 (`/franka/joint_states`,
`/franka_gripper/joint_states`, `/franka_robot_state_broadcaster/robot_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from fastdp_ros.errors import ConfigError
from fastdp_ros.nodes.kinematics import FRANKA_HAND_TCP_OFFSET

POLICY_NODE_NAME = "fastdp_policy"
MONITOR_NODE_NAME = "fastdp_ood_monitor"
SIM_NODE_NAME = "fastdp_sim"

#: command_interface -> (message type, parameter naming its topic, default topic: the controller's input)
COMMAND_INTERFACES: dict[str, tuple[str, str, str]] = {
    # joint_trajectory_controller: `~/joint_trajectory`
    "joint_trajectory": ("trajectory_msgs/msg/JointTrajectory", "joint_trajectory_topic",
                         "/joint_trajectory_controller/joint_trajectory"),
    # forward_command_controller (position_controllers/JointGroupPositionController): `~/commands`
    "forward_command": ("std_msgs/msg/Float64MultiArray", "forward_command_topic",
                        "/forward_position_controller/commands"),
    # a Cartesian impedance controller's target pose
    "cartesian_pose": ("geometry_msgs/msg/PoseStamped", "target_pose_topic",
                       "/cartesian_impedance_controller/target_pose"),
}

STOP_TOPIC = "/fastdp/stop"
OOD_SCORE_TOPIC = "/fastdp/ood_score"
GRIPPER_COMMAND_TOPIC = "/fastdp/gripper_width"  # std_msgs/Float64, opening width in m
EPISODE_TOPIC = "/fastdp_sim/episode"  # std_msgs/Header: the simulation started a new episode
OUTCOME_TOPIC = "/fastdp_sim/outcome"  # std_msgs/String, JSON: how an episode ended
DEFAULT_IMAGE_KEYS = ["img_front", "img_wrist"]  # `fastdp train`'s default cameras
DEFAULT_IMAGE_TOPICS = ["/camera/front/image_raw", "/camera/wrist/image_raw"]

#: the simulated Franka Hand's tool centre point along the hand's z axis (fastdp_ros.sim.scene.TCP_Z_HAND:
#: the simulated fingers are longer than the real ones); the real hand's is kinematics.FRANKA_HAND_TCP_OFFSET
SIM_TCP_OFFSET = 0.14
#: stream watchdogs: stale after max(floor, periods x the stream's measured period)
STREAM_TIMEOUT_PERIODS = 10.0
STREAM_TIMEOUT_FLOOR = 0.5


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter. `dynamic` parameters may change while the node runs; all
    others are read-only after start-up (set them in a YAML or on the command line)."""

    name: str
    default: Any
    description: str
    dynamic: bool = False

    def __post_init__(self):
        if isinstance(self.default, (list, tuple)) and not self.default:
            raise ConfigError(f"parameter {self.name!r}: an empty list default has no ROS type")

    @property
    def type_name(self) -> str:
        return param_type_name(self.default)


def param_type_name(value) -> str:
    """The ROS parameter type a Python value declares (bool before int: bool is an int)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)) and value:
        inner = param_type_name(value[0])
        if all(param_type_name(v) == inner for v in value):
            return f"{inner}_array"
    raise ConfigError(f"{value!r} is not a ROS parameter value")


def command_topic(params: dict) -> str:
    """The topic of the command interface `params` chose."""
    interface = params["command_interface"]
    if interface not in COMMAND_INTERFACES:
        raise ConfigError(f"command_interface must be one of {', '.join(COMMAND_INTERFACES)}, got {interface!r}")
    return params[COMMAND_INTERFACES[interface][1]]


def _command_topic_params(what: str) -> list[ParamSpec]:
    return [ParamSpec(param, default, f"{what} of {interface} ({msg_type})")
            for interface, (msg_type, param, default) in COMMAND_INTERFACES.items()]


def _robot_params() -> list[ParamSpec]:
    return [
        ParamSpec("robot_type", "fr3", "Franka arm type: fr3 | panda (joint limits, joint names)"),
        ParamSpec("joint_prefix", "", "joint names are <prefix>_joint1..7 and <prefix>_finger_joint1..2; "
                                      "empty: the robot type (fr3_joint1, panda_joint1, ...)"),
    ]


def _model_params() -> list[ParamSpec]:
    return [
        ParamSpec("policies_file", "", "YAML mapping policy names to model directories; empty: "
                                       "share/fastdp_ros/config/policies.yaml"),
        ParamSpec("model_dir", "", "a model directory to start with instead of the policy's mapping"),
        ParamSpec("device", "cpu", "torch device for inference: cpu | cuda | cuda:N"),
    ]


def _sensor_params() -> list[ParamSpec]:
    return [
        ParamSpec("image_keys", list(DEFAULT_IMAGE_KEYS), "observation keys of the cameras, in the order of "
                                                          "image_topics"),
        ParamSpec("image_topics", list(DEFAULT_IMAGE_TOPICS),
                  "sensor_msgs/Image topic per image key; a topic ending in /compressed is read as "
                  "sensor_msgs/CompressedImage (jpeg or png)"),
        ParamSpec("joint_state_topic", "/franka/joint_states", "sensor_msgs/JointState with the arm joints"),
        ParamSpec("gripper_joint_state_topic", "/franka_gripper/joint_states",
                  "sensor_msgs/JointState with the finger joints; empty: they come on joint_state_topic"),
        ParamSpec("diagnostics_period", 1.0, "seconds between diagnostic_msgs/DiagnosticArray messages on "
                                              "/diagnostics (diagnostic_updater's default period)"),
        ParamSpec("stream_timeout_periods", STREAM_TIMEOUT_PERIODS,
                  "a sensor stream (once started) is stale after this many of its measured periods (median "
                  "interval of its header stamps) without a sample, or stream_timeout_floor if longer"),
        ParamSpec("stream_timeout_floor", STREAM_TIMEOUT_FLOOR,
                  "seconds below which no stream is called stale: on a loaded 2-core machine delivery stalls "
                  "of 0.2-0.36 s were measured on healthy streams; the policy executes 0.8 s chunks anyway"),
    ]


def stream_timeouts(params: dict) -> tuple[float, float]:
    """(floor in s, periods) of the stream watchdogs, checked."""
    floor, periods = float(params["stream_timeout_floor"]), float(params["stream_timeout_periods"])
    if not (math.isfinite(floor) and floor > 0 and math.isfinite(periods) and periods >= 1):
        raise ConfigError(f"need stream_timeout_floor > 0 s and stream_timeout_periods >= 1, got {floor}, {periods}")
    return floor, periods


POLICY_PARAMETERS: tuple[ParamSpec, ...] = (
    *_robot_params(),
    ParamSpec("policy", "onedp", "policy name from policies_file, or a model directory; set it while the "
                                 "node runs to hot-swap (an invalid value is refused with the reason)", dynamic=True),
    *_model_params(),
    ParamSpec("backend", "torch", "inference backend: torch | torch_compile | onnxruntime | tensorrt"),
    ParamSpec("inference_threads", 0, "intra-op threads for inference; 0: half the usable CPUs, 1 to 4 "
                                      "(fastdp_ros.hardware.inference_threads, as the fastdp command)"),
    ParamSpec("control_rate", 60.0, "commands per second (Hz)"),
    ParamSpec("command_interface", "joint_trajectory", "joint_trajectory (joint_trajectory_controller) | "
                                                       "forward_command (forward_command_controller) | "
                                                       "cartesian_pose (Cartesian impedance, PoseStamped)"),
    *_command_topic_params("topic for the commands"),
    ParamSpec("trajectory_lead_ticks", 2, "joint_trajectory: the point is due this many command periods after "
                                          "the message, so one late message still finds the controller moving"),
    ParamSpec("gripper_command_topic", GRIPPER_COMMAND_TOPIC, "std_msgs/Float64 gripper opening width (m); "
                                                              "empty: not published"),
    *_sensor_params(),
    ParamSpec("robot_state_topic", "/franka_robot_state_broadcaster/robot_state",
              "franka_msgs/FrankaRobotState (used when franka_msgs is installed): REFLEX or USER_STOPPED "
              "holds the arm; empty: not used"),
    ParamSpec("stop_topic", STOP_TOPIC, "std_msgs/Bool stop flag of the OOD monitor; while true the arm holds"),
    ParamSpec("episode_topic", "", "std_msgs/Header of the simulation's episode resets (the arm is moved "
                                   "there): restart from the measured state; empty: a real robot"),
    ParamSpec("base_frame", "", "frame_id of Cartesian commands; empty: <prefix>_link0"),
    ParamSpec("tcp_offset", FRANKA_HAND_TCP_OFFSET,
              "tool centre point along the hand's z axis (m): 0.1034 for the Franka Hand (franka_description's "
              "hand_tcp), 0.14 in the simulation"),
    ParamSpec("workspace", "none", "box the tool centre point must stay in: none | sim (the simulated table) | "
                                   "six numbers x_min,y_min,z_min,x_max,y_max,z_max (m, base frame)"),
    ParamSpec("velocity_scale", 1.0, "fraction of the robot's joint velocity limits the commands may use"),
    ParamSpec("acceleration_scale", 1.0, "fraction of the robot's joint acceleration limits"),
    ParamSpec("blend", "crossfade", "how overlapping action chunks blend: crossfade | ensemble"),
    ParamSpec("replan_period", -1.0, "seconds between new plans; -1: the model's chunk length (n_action_steps "
                                     "x dt, what it was trained and evaluated with); 0: plan from every frame"),
    ParamSpec("autostart", True, "configure and activate the lifecycle node at start-up (false: wait for "
                                 "`ros2 lifecycle set`)"),
)

MONITOR_PARAMETERS: tuple[ParamSpec, ...] = (
    *_robot_params(),
    ParamSpec("policy", "alt_ood", "the monitor's encoder: a policy name from policies_file or a model "
                               "directory (an ALT model brings its own index and threshold)"),
    *_model_params(),
    ParamSpec("ood_dataset", "", "for a model without its own OOD index: the dataset it was trained on "
                                 "(training embeddings and the calibrated threshold come from it)"),
    ParamSpec("ood_samples", 1000, "dataset windows embedded per split (ood_dataset only)"),
    ParamSpec("ood_threshold", 0.0, "OOD score above which a check counts as out of distribution; 0: the "
                                     "threshold calibrated with the model (or on ood_dataset)"),
    ParamSpec("ood_quantile", 0.99, "threshold quantile of held-out in-distribution scores (ood_dataset only; the "
                                     "model directory's ood_calibration.json for this dataset replaces it)"),
    ParamSpec("tcp_offset", FRANKA_HAND_TCP_OFFSET,
              "tool centre point along the hand's z axis (m), for a model observing tcp_pose: 0.1034 for the "
              "Franka Hand, 0.14 in the simulation"),
    ParamSpec("debounce", 1, "consecutive checks over the threshold that raise the stop (1: the calibration "
                             "counts every frame over its threshold as a stop, scripts/calibrate_ood.py)"),
    ParamSpec("blank_image_std", 4.0,  # runtime.ood.BLANK_IMAGE_STD (not imported: it brings torch)
              "a camera frame whose pixels vary less than this (std per colour channel, 0-255) counts as out of "
              "distribution: a covered lens or a failed camera; 0 turns the check off"),
    ParamSpec("max_check_rate", 60.0, "at most this many OOD checks per second (two unsynchronised 30 Hz cameras "
                                      "give a new observation up to 60 times a second)"),
    *_sensor_params(),
    ParamSpec("stop_topic", STOP_TOPIC, "std_msgs/Bool stop flag (reliable, transient_local, depth 1)"),
    ParamSpec("score_topic", OOD_SCORE_TOPIC, "std_msgs/Float32 OOD score of every check"),
    ParamSpec("command_interface", "joint_trajectory", "the policy's command type (see fastdp_policy)"),
    *_command_topic_params("the policy's command topic"),
    ParamSpec("command_timeout", 0.5, "seconds without a command (once commands have started) that raise the "
                                      "stop: 30 ticks at 60 Hz; a hot swap keeps the command rate, and a loaded "
                                      "machine's stalls stay well below (as stream_timeout_floor)"),
)

SIM_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("task", "push", "simulation task: reach | push | pick_place | pick_place_around"),
    ParamSpec("cameras", ["front", "wrist"], "simulation cameras to publish (fastdp collect's default)"),
    ParamSpec("image_topics", list(DEFAULT_IMAGE_TOPICS), "sensor_msgs/Image topic per camera"),
    ParamSpec("image_size", 96, "camera image height and width (px; fastdp collect's default)"),
    ParamSpec("image_encoding", "rgb8", "encoding of the published images: rgb8 | bgr8 | mono8 | rgba8 | bgra8"),
    ParamSpec("camera_rate", 30.0, "frames per second per camera (fastdp run's default)"),
    ParamSpec("joint_state_rate", 100.0, "joint states per second; also the physics update rate of the node"),
    ParamSpec("joint_state_topic", "/joint_states", "sensor_msgs/JointState: 7 arm and 2 finger joints"),
    *_command_topic_params("accepted commands"),
    ParamSpec("gripper_command_topic", GRIPPER_COMMAND_TOPIC, "std_msgs/Float64 gripper width commands (m)"),
    ParamSpec("tcp_offset", SIM_TCP_OFFSET, "tool centre point of PoseStamped commands along the hand's z axis "
                                            "(m; the simulated fingertips)"),
    ParamSpec("seed0", 1_000_000, "seed of the first episode (fastdp eval's first seed)"),
    ParamSpec("episodes", 0, "stop after this many episodes; 0: run until shut down"),
    ParamSpec("auto_reset", True, "start a new episode after a success or the task's time limit"),
    ParamSpec("episode_topic", EPISODE_TOPIC, "std_msgs/Header published at every episode reset"),
    ParamSpec("outcome_topic", OUTCOME_TOPIC, "std_msgs/String, a JSON object per finished episode: episode, "
                                              "seed, success, duration_s (reliable)"),
    ParamSpec("reset_command_tolerance", 0.01, "after a reset, arm commands apply once one lies within this "
                                               "many radians of the new start (the policy has restarted)"),
    ParamSpec("publish_clock", False, "publish the simulated time on /clock (run the other nodes with "
                                      "use_sim_time)"),
)


def read_parameters(specs, get: Callable[[str], Any]) -> dict[str, Any]:
    """{name: value} of every spec, read with `get(name)` (a node's parameter getter)."""
    return {s.name: get(s.name) for s in specs}


def defaults(specs) -> dict[str, Any]:
    return {s.name: (list(s.default) if isinstance(s.default, list) else s.default) for s in specs}
