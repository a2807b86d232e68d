"""`ros2 run fastdp_ros ood_monitor_node`: the out-of-distribution monitor (`fastdp_ood_monitor`).

Its own encoder and index from a model directory (an ALT model's, or any model's encoder
with `ood_dataset`), on the same camera and joint topics as the policy.
Subscribes (sensor-data QoS): image_topics, joint_state_topic, gripper_joint_state_topic; the
policy's command topic of its command_interface, for the command-stream watchdog.
Publishes: score_topic (std_msgs/Float32, every check), stop_topic (std_msgs/Bool; reliable,
transient_local, depth 1; on every change), /diagnostics.
Service: ~/reset (std_srvs/Trigger) clears the latched stop.
All logic lives in monitor_logic.py.
"""

from __future__ import annotations

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from fastdp_ros.errors import FastDPError
from fastdp_ros.nodes import node_common as common
from fastdp_ros.nodes.catalog import PolicyCatalog
from fastdp_ros.nodes.monitor_logic import MonitorConfig, MonitorLogic, build_monitor
from fastdp_ros.nodes.parameters import MONITOR_NODE_NAME, MONITOR_PARAMETERS, command_topic
from fastdp_ros.nodes.sensors import SensorConfig

COMMAND_TYPES = {"joint_trajectory": JointTrajectory, "forward_command": Float64MultiArray,
                 "cartesian_pose": PoseStamped}


class OODMonitorNode(Node):
    def __init__(self):
        super().__init__(MONITOR_NODE_NAME)
        p = self.params = common.declare_parameters(self, MONITOR_PARAMETERS)
        self.log_bridge = common.bridge_logging(self)
        commands = command_topic(p)  # checks command_interface
        catalog = PolicyCatalog.from_file(p["policies_file"] or common.default_policies_file())
        entry = catalog.resolve(p["model_dir"] or p["policy"])
        monitor = build_monitor(entry, p)
        spec = monitor.spec
        sensors = SensorConfig.from_params(p, list(spec.image_keys),
                                           tuple(spec.image_shape) if spec.image_keys else None,
                                           wants_tcp_pose="tcp_pose" in spec.obs_keys)
        config = MonitorConfig.from_params(p)
        # a finished check wakes the executor (the worker thread triggers it): the stop goes out
        # as soon as the score is known, not at the next timer tick
        self.check_done = self.create_guard_condition(self.on_step)
        self.logic = MonitorLogic(monitor, config, sensors, clock=self.now, on_result=self.check_done.trigger)
        self.get_logger().info(f"monitoring with {entry.name} ({entry.path}, {monitor.kind} score, threshold "
                               f"{monitor.threshold:.4g} ({monitor.threshold_source}), debounce {monitor.debounce})")

        self.stop_pub = self.create_publisher(Bool, p["stop_topic"], common.STOP_QOS)
        self.score_pub = self.create_publisher(Float32, p["score_topic"], common.RELIABLE_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", common.RELIABLE_QOS)
        for key, topic in sensors.image_topics.items():
            compressed = topic.endswith("/compressed")
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     lambda msg, key=key, c=compressed: self.on_image(key, msg, c), common.SENSOR_QOS)
        self.create_subscription(JointState, p["joint_state_topic"],
                                 lambda msg: self.logic.on_joint_state(msg, self.now()),
                                 common.SENSOR_QOS)
        if p["gripper_joint_state_topic"]:
            self.create_subscription(JointState, p["gripper_joint_state_topic"],
                                     lambda msg: self.logic.on_gripper_state(msg, self.now()),
                                     common.SENSOR_QOS)
        self.create_subscription(COMMAND_TYPES[p["command_interface"]], commands,
                                 lambda msg: self.logic.on_command(self.now()), common.COMMAND_QOS)
        self.reset_srv = self.create_service(Trigger, "~/reset", self.on_reset)
        # the watchdogs, and a frame that came within a check period of the last check
        self.step_timer = self.create_timer(config.min_check_period / 2.0, self.on_step)
        self.diagnostics_timer = self.create_timer(float(p["diagnostics_period"]), self.on_diagnostics)
        self.stop_pub.publish(Bool(data=False))

    def now(self) -> float:
        return common.now_seconds(self)

    def on_image(self, key: str, msg, compressed: bool) -> None:
        if self.logic.on_image(key, msg, self.now(), compressed):
            self.on_step()  # check the new frame now (the step submits it if a check period has passed)

    def on_step(self) -> None:
        step = self.logic.step(self.now())
        for score in step.scores:
            self.score_pub.publish(Float32(data=float(score)))
        if step.changed:
            self.stop_pub.publish(Bool(data=step.stopped))
            if step.stopped:
                self.get_logger().error(f"STOP: {self.logic.latch.reason}")

    def on_reset(self, request, response):
        released = self.logic.reset(self.now())
        self.on_step()  # publishes the lowered flag, or nothing if a standing fault raised it again
        stopped = self.logic.latch.stopped
        response.success = not stopped
        response.message = f"released: {'; '.join(released)}" if released else "nothing to release"
        if stopped:
            response.message += f"; raised again: {self.logic.latch.reason}"
        self.get_logger().warning(f"~/reset: {response.message}")
        return response

    def on_diagnostics(self) -> None:
        now = self.now()
        common.publish_diagnostics(self.diagnostics_pub, self.logic.diagnostics(now), now)

    def close(self) -> None:
        self.logic.close()
        common.unbridge_logging(self.log_bridge)


def main(args=None) -> int:
    shutdown = common.init(args)
    try:
        node = OODMonitorNode()
    except FastDPError as e:
        rclpy.logging.get_logger(MONITOR_NODE_NAME).fatal(f"cannot start: {e}")
        rclpy.try_shutdown()
        return 1
    return common.spin(node, shutdown, close=node.close)


if __name__ == "__main__":
    raise SystemExit(main())
