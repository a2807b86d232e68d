"""rclpy glue the three nodes share: QoS profiles, parameter declaration, logging, time, spinning.

Like the node files, this module imports rclpy; nothing below nodes/ does.
"""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path
from typing import Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from fastdp_ros.ros_messages import fill_diagnostic_array
from fastdp_ros.nodes.parameters import ParamSpec, read_parameters

#: cameras, joint states and franka_robot_state_broadcaster (best effort): a best-effort
#: subscription matches reliable and best-effort publishers alike
SENSOR_QOS = qos_profile_sensor_data
#: commands: only the newest matters; reliable, so any controller's subscription matches
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
#: the latched stop flag: a late subscriber gets the current value
STOP_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: state other nodes must not miss (joint states of the simulation, episode events, diagnostics)
RELIABLE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)


def declare_parameters(node, specs: tuple[ParamSpec, ...]) -> dict:
    """Declare every parameter with its description (read-only unless dynamic); returns their
    values after the launch file's and YAML's overrides."""
    for s in specs:
        node.declare_parameter(s.name, s.default,
                               ParameterDescriptor(description=s.description, read_only=not s.dynamic))
    return read_parameters(specs, lambda name: node.get_parameter(name).value)


def now_seconds(node) -> float:
    """The node's ROS time (system time, or /clock with use_sim_time) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


class RosLogHandler(logging.Handler):
    """Python `logging` records of fastdp_ros (the runtime, the logic modules) to the node's logger."""

    def __init__(self, ros_logger):
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"[{record.name}] {record.getMessage()}"
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into a control loop
            self.handleError(record)


def bridge_logging(node) -> RosLogHandler:
    package_logger = logging.getLogger("fastdp_ros")
    handler = RosLogHandler(node.get_logger())
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False  # the ROS logger prints it; no second copy on stderr
    return handler


def unbridge_logging(handler: RosLogHandler) -> None:
    logging.getLogger("fastdp_ros").removeHandler(handler)


def default_policies_file() -> str:
    """share/fastdp_ros/config/policies.yaml of the installed package (the source tree's when
    running from a checkout without colcon)."""
    from fastdp_ros.nodes.catalog import POLICIES_FILE

    source_tree = Path(__file__).resolve().parents[2] / "config" / POLICIES_FILE
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return str(source_tree)
    try:
        return str(Path(get_package_share_directory("fastdp_ros")) / "config" / POLICIES_FILE)
    except PackageNotFoundError:
        return str(source_tree)


def publish_diagnostics(publisher, entries, t: float) -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    msg = DiagnosticArray()
    fill_diagnostic_array(msg, entries, t, DiagnosticStatus, lambda k, v: KeyValue(key=k, value=v))
    publisher.publish(msg)


class ShutdownRequest:
    """SIGINT and SIGTERM as a request to stop spinning, handled by the node's own code.

    rclpy's handlers shut the context down from the signal (a callback still running then
    publishes on a dead context) and Python's raise KeyboardInterrupt wherever the main thread
    is, also inside the clean-up after a first Ctrl-C: `ros2 launch` forwards the terminal's
    SIGINT to nodes that already got it from the terminal. Here the first signal is noted and
    the spin loop ends; later ones are ignored."""

    def __init__(self):
        self.signal: int | None = None

    def install(self) -> "ShutdownRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum

    def ignore_further(self) -> None:
        """Ignore SIGINT/SIGTERM from now on: Python's finalisation resets the handlers it set to
        the default action, and a forwarded Ctrl-C arriving then would kill the process (exit -2)
        after a clean shutdown; an ignored signal stays ignored."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    @property
    def requested(self) -> bool:
        return self.signal is not None


def init(args=None) -> ShutdownRequest:
    """rclpy.init without rclpy's signal handlers; SIGINT/SIGTERM end `spin` cleanly."""
    shutdown = ShutdownRequest().install()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return shutdown


def spin(node, shutdown: ShutdownRequest, until: Callable[[], bool] | None = None,
         close: Callable[[], None] | None = None) -> int:
    """Spin `node` until SIGINT/SIGTERM, an external shutdown or `until()`; then stop the
    executor, close, destroy and shut down, in that order: nothing publishes after the context
    is gone. Exits 0.

    Every callback runs on this (the main) thread, where the node was built (an OpenGL context
    made current here can only render here). The callbacks are short; what takes time has
    threads of its own (inference, OOD checks, the policy node's control loop). rclpy's
    MultiThreadedExecutor was measured falling 0.15-0.8 s behind on the 2-core machine (the
    monitor's 60 Hz step timer, with camera, joint-state and command callbacks), which its
    stream watchdog then took for silent cameras; a SingleThreadedExecutor kept up (bench/README.md)."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    # what start-up made (the model, the libraries' objects) leaves the collector's generations: a
    # full collection would otherwise walk it all in the middle of a control period
    gc.collect()
    gc.freeze()
    try:
        # short waits: a signal handler runs between them, so a stop takes at most 0.1 s
        while not shutdown.requested and rclpy.ok() and not (until is not None and until()):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown()
        if close is not None:
            close()
        node.destroy_node()
        rclpy.try_shutdown()
        shutdown.ignore_further()
    return 0
