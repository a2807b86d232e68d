"""A node inside the calling process that watches and pokes a running graph: the node tests and
bench/ros_graph.py use it against the node processes (nodes/processes.py).

It spins its own rclpy context (on the graph's ROS_DOMAIN_ID) in a background thread and
records, with the monotonic time of arrival: the commands on the trajectory topic, the stop
flag, episode outcomes, camera frames and /diagnostics. It publishes camera frames and joint
states, calls ~/reset services and sets parameters as `ros2 param set` does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import node_common as common
from fastdp_ros.nodes.parameters import COMMAND_INTERFACES, EPISODE_TOPIC, OUTCOME_TOPIC, STOP_TOPIC


@dataclass
class Record:
    """What the probe has seen; lists of (arrival time.monotonic(), value)."""

    commands: list = field(default_factory=list)  # (t, joint positions of the first point)
    stop: list = field(default_factory=list)  # (t, bool)
    outcomes: list = field(default_factory=list)  # (t, dict)
    episodes: list = field(default_factory=list)  # (t, label)
    frames: dict = field(default_factory=dict)  # topic -> count
    diagnostics: dict = field(default_factory=dict)  # status name -> (t, level name, message, {key: value})


class GraphProbe:
    """Spins a node named `name` on `domain_id` until close()."""

    def __init__(self, domain_id: int, name: str = "fastdp_probe",
                 command_topic: str = COMMAND_INTERFACES["joint_trajectory"][2],
                 image_topics: tuple[str, ...] = ("/camera/front/image_raw", "/camera/wrist/image_raw")):
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # read when the context starts
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(domain_id), signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name, context=self.context)
        self.record = Record()
        self._lock = threading.Lock()
        n = self.node
        n.create_subscription(JointTrajectory, command_topic, self._on_command, common.RELIABLE_QOS)
        n.create_subscription(Bool, STOP_TOPIC, lambda m: self._add(self.record.stop, bool(m.data)), common.STOP_QOS)
        n.create_subscription(String, OUTCOME_TOPIC, lambda m: self._add(self.record.outcomes, json.loads(m.data)),
                              common.RELIABLE_QOS)
        n.create_subscription(Header, EPISODE_TOPIC, lambda m: self._add(self.record.episodes, m.frame_id),
                              common.RELIABLE_QOS)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, common.RELIABLE_QOS)
        for topic in image_topics:
            n.create_subscription(Image, topic, lambda m, topic=topic: self._count(topic), common.SENSOR_QOS)
        self._publishers: dict = {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, name="probe-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - the context was shut down by close()
            pass

    def _add(self, where: list, value) -> None:
        with self._lock:
            where.append((time.monotonic(), value))

    def _count(self, topic: str) -> None:
        with self._lock:
            self.record.frames[topic] = self.record.frames.get(topic, 0) + 1

    def _on_command(self, msg) -> None:
        q = np.array(msg.points[0].positions, dtype=np.float64) if msg.points else np.zeros(0)
        self._add(self.record.commands, q)

    def _on_diagnostics(self, msg) -> None:
        levels = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
        with self._lock:
            for s in msg.status:
                level = s.level if isinstance(s.level, int) else int.from_bytes(s.level, "little")
                self.record.diagnostics[s.name] = (time.monotonic(), levels.get(level, str(level)), s.message,
                                                   {kv.key: kv.value for kv in s.values})

    # ------------------------------------------------------------------ reading

    def snapshot(self, what: str) -> list:
        with self._lock:
            return list(getattr(self.record, what))

    def diagnostic(self, name_part: str) -> tuple | None:
        """The newest status whose name contains `name_part`."""
        with self._lock:
            for name, status in self.record.diagnostics.items():
                if name_part in name:
                    return status
        return None

    def frames(self, topic: str) -> int:
        with self._lock:
            return self.record.frames.get(topic, 0)

    def stopped(self) -> bool | None:
        stop = self.snapshot("stop")
        return stop[-1][1] if stop else None

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float, period: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(period)
        return bool(condition())

    # ------------------------------------------------------------------ acting

    def publisher(self, msg_type, topic: str, qos=common.SENSOR_QOS):
        """A publisher that has found the topic's subscribers (up to 10 s): messages sent before
        discovery completes are lost on a best-effort topic."""
        key = (msg_type, topic)
        if key not in self._publishers:
            pub = self._publishers[key] = self.node.create_publisher(msg_type, topic, qos)
            if self.wait_for(lambda: pub.get_subscription_count() > 0, 10.0):
                time.sleep(0.2)  # the subscriber's side of the match
        return self._publishers[key]

    def publish_image(self, topic: str, pixels: np.ndarray, encoding: str = "rgb8", stamp: float | None = None,
                      frame_id: str = "probe") -> None:
        msg = Image()
        conv.fill_header(msg.header, time.time() if stamp is None else stamp, frame_id)
        conv.fill_image(msg, pixels, encoding)
        self.publisher(Image, topic).publish(msg)

    def publish_raw_image(self, topic: str, height: int, width: int, encoding: str, data: bytes,
                          step: int | None = None) -> None:
        """An Image as a faulty driver may send it (any encoding, size, step)."""
        msg = Image()
        conv.fill_header(msg.header, time.time(), "probe")
        msg.height, msg.width, msg.encoding = int(height), int(width), encoding
        msg.step = int(step if step is not None else len(data) // max(1, height))
        msg.data = bytes(data)
        self.publisher(Image, topic).publish(msg)

    def publish_joint_state(self, topic: str, names: list[str], positions, stamp: float | None = None) -> None:
        """A JointState as sent, NaN included (ros_messages.fill_joint_state would refuse those)."""
        msg = JointState()
        conv.fill_header(msg.header, time.time() if stamp is None else stamp, "")
        msg.name = list(names)
        msg.position = [float(v) for v in positions]
        self.publisher(JointState, topic).publish(msg)

    def _call(self, srv_type, name: str, request, timeout: float):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} is not available")
            future = client.call_async(request)
            if not self.wait_for(future.done, timeout):
                raise TimeoutError(f"service {name} did not answer within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def trigger(self, service: str, timeout: float = 10.0) -> tuple[bool, str]:
        response = self._call(Trigger, service, Trigger.Request(), timeout)
        return bool(response.success), str(response.message)

    def set_string_parameter(self, node: str, name: str, value: str, timeout: float = 10.0) -> tuple[bool, str]:
        """What `ros2 param set /<node> <name> <value>` does: (successful, reason)."""
        request = SetParameters.Request()
        request.parameters = [ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                                         string_value=value))]
        response = self._call(SetParameters, f"/{node.lstrip('/')}/set_parameters", request, timeout)
        result = response.results[0]
        return bool(result.successful), str(result.reason)

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
