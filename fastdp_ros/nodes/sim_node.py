"""`ros2 run fastdp_ros sim_node`: the MuJoCo task as a ROS robot (`fastdp_sim`).

Publishes, stamped at their physics instants: joint_state_topic (sensor_msgs/JointState, the
7 Panda arm joints and both finger joints, reliable) at joint_state_rate, one
sensor_msgs/Image per camera (sensor-data QoS) at camera_rate, episode_topic (std_msgs/Header)
at every episode start, outcome_topic (std_msgs/String, JSON) at every episode end, and /clock (rosgraph_msgs/Clock) when publish_clock is set.
Subscribes the controllers' inputs: joint_trajectory_topic (JointTrajectory),
forward_command_topic (Float64MultiArray), target_pose_topic (PoseStamped) and
gripper_command_topic (std_msgs/Float64).
All logic lives in sim_logic.py (which reuses runtime.loop.SimPlant, as `fastdp run` does).
"""

from __future__ import annotations

import json
import time

import rclpy
import rclpy.logging
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from fastdp_ros.errors import FastDPError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import node_common as common
from fastdp_ros.nodes.parameters import SIM_NODE_NAME, SIM_PARAMETERS
from fastdp_ros.nodes.sim_logic import SimConfig, SimLogic


class SimNode(Node):
    def __init__(self):
        super().__init__(SIM_NODE_NAME)
        p = self.params = common.declare_parameters(self, SIM_PARAMETERS)
        self.log_bridge = common.bridge_logging(self)
        self.logic = SimLogic(SimConfig.from_params(p))
        self.finished = False
        self.publish_clock = bool(p["publish_clock"])
        self._t0 = time.monotonic()
        self.joint_pub = self.create_publisher(JointState, p["joint_state_topic"], common.RELIABLE_QOS)
        self.image_pubs = {cam: self.create_publisher(Image, topic, common.SENSOR_QOS)
                           for cam, topic in self.logic.config.image_topics.items()}
        self.episode_pub = self.create_publisher(Header, p["episode_topic"], common.RELIABLE_QOS)
        self.outcome_pub = self.create_publisher(String, p["outcome_topic"], common.RELIABLE_QOS)
        self.clock_pub = self.create_publisher(Clock, "/clock", common.RELIABLE_QOS) if self.publish_clock else None
        qos = common.RELIABLE_QOS
        self.create_subscription(JointTrajectory, p["joint_trajectory_topic"],
                                 lambda msg: self.logic.on_joint_trajectory(msg, self.now()), qos)
        self.create_subscription(Float64MultiArray, p["forward_command_topic"],
                                 lambda msg: self.logic.on_forward_command(msg, self.now()), qos)
        self.create_subscription(PoseStamped, p["target_pose_topic"],
                                 lambda msg: self.logic.on_target_pose(msg, self.now()), qos)
        self.create_subscription(Float64, p["gripper_command_topic"],
                                 lambda msg: self.logic.on_gripper_command(msg.data, self.now()), qos)
        self.publish_episode(self.logic.start(self.now()))
        self.step_timer = self.create_timer(1.0 / self.logic.config.joint_state_rate, self.on_step)

    def now(self) -> float:
        """Stamp time: the simulated clock (seconds since start, published on /clock) or ROS time.
        The physics follows it in real time either way."""
        if self.publish_clock:
            return time.monotonic() - self._t0
        return common.now_seconds(self)

    def publish_episode(self, event) -> None:
        msg = Header()
        conv.fill_header(msg, event.stamp, event.label)
        self.episode_pub.publish(msg)

    def on_step(self) -> None:
        now = self.now()
        if self.clock_pub is not None:
            clock = Clock()
            conv.fill_stamp(clock.clock, now)
            self.clock_pub.publish(clock)
        step = self.logic.step(now)
        for sample in step.joint_states:
            msg = JointState()
            conv.fill_joint_state(msg, sample.names, sample.positions, sample.stamp)
            self.joint_pub.publish(msg)
        for camera, stamp, pixels in step.images:
            msg = Image()
            conv.fill_header(msg.header, stamp, f"{camera}_camera")
            conv.fill_image(msg, self.logic.image_message_pixels(pixels), self.logic.config.image_encoding)
            self.image_pubs[camera].publish(msg)
        if step.outcome is not None:
            self.outcome_pub.publish(String(data=json.dumps(step.outcome)))
        if step.episode is not None:
            self.publish_episode(step.episode)
        if step.done:
            self.get_logger().info(f"done: {self.logic.summary()}")
            self.finished = True

    def close(self) -> None:
        self.logic.close()
        common.unbridge_logging(self.log_bridge)


def main(args=None) -> int:
    shutdown = common.init(args)
    try:
        node = SimNode()
    except FastDPError as e:
        rclpy.logging.get_logger(SIM_NODE_NAME).fatal(f"cannot start: {e}")
        rclpy.try_shutdown()
        return 1
    # callbacks on this thread only (common.spin): the renderer's OpenGL context was made current here
    return common.spin(node, shutdown, until=lambda: node.finished, close=node.close)


if __name__ == "__main__":
    raise SystemExit(main())
