"""`ros2 run fastdp_ros policy_node`: the policy as a lifecycle node (`fastdp_policy`).

configure   loads the model (engine) and warms it up, subscribes the sensors
activate    starts commanding at control_rate (from the first tick at which every sensor
            stream has arrived); deactivate stops, cleanup releases the model

Subscribes (sensor-data QoS): image_topics (sensor_msgs/Image, or CompressedImage for a topic
ending in /compressed), joint_state_topic and gripper_joint_state_topic
(sensor_msgs/JointState), robot_state_topic (franka_msgs/FrankaRobotState, if installed);
stop_topic (std_msgs/Bool, reliable + transient_local), episode_topic (std_msgs/Header).
Publishes, by command_interface: joint_trajectory_topic (JointTrajectory), forward_command_topic
(Float64MultiArray) or target_pose_topic (PoseStamped), reliable, depth 1; gripper_command_topic
(std_msgs/Float64); /diagnostics.
Service: ~/reset (std_srvs/Trigger) releases the latched stop.

`ros2 param set /fastdp_policy policy <name>` hot-swaps; a refused value comes back with the
reason. All logic lives in policy_logic.py; this file only moves messages.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, Header
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from fastdp_ros.errors import FastDPError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes import node_common as common
from fastdp_ros.nodes.catalog import PolicyCatalog
from fastdp_ros.nodes.parameters import POLICY_NODE_NAME, POLICY_PARAMETERS, read_parameters
from fastdp_ros.nodes.policy_logic import PolicyLogic, PolicyNodeConfig
from fastdp_ros.runtime.periodic import PeriodicThread


class PolicyNode(LifecycleNode):
    def __init__(self):
        super().__init__(POLICY_NODE_NAME)
        self.params = common.declare_parameters(self, POLICY_PARAMETERS)
        self.log_bridge = common.bridge_logging(self)
        self.logic: PolicyLogic | None = None
        self.sensor_subs: list = []
        # the command stream has its own thread on absolute deadlines, not an executor timer: under
        # load a timer waits behind the queued sensor callbacks (runtime/periodic.py)
        self.control_loop: PeriodicThread | None = None
        self.command_pub = self.gripper_pub = None
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", common.RELIABLE_QOS)
        self.reset_srv = self.create_service(Trigger, "~/reset", self.on_reset)
        self.diagnostics_timer = self.create_timer(float(self.params["diagnostics_period"]), self.on_diagnostics)
        # registered after declaring: declaration must not run the hot-swap check
        self.add_on_set_parameters_callback(self.on_set_parameters)

    def now(self) -> float:
        return common.now_seconds(self)

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state) -> TransitionCallbackReturn:
        self.params = read_parameters(POLICY_PARAMETERS, lambda name: self.get_parameter(name).value)
        try:
            catalog = PolicyCatalog.from_file(self.params["policies_file"] or common.default_policies_file())
            self.logic = PolicyLogic(PolicyNodeConfig.from_params(self.params), catalog, clock=self.now)
            self.get_logger().info(f"loaded {self.logic.configure(self.params['policy'], self.params['model_dir'])}")
        except Exception as e:  # noqa: BLE001 - rclpy would swallow it silently; say why configure failed
            what = str(e) if isinstance(e, FastDPError) else f"{type(e).__name__}: {e}"
            self.get_logger().error(f"configure failed: {what}")
            self.logic = None
            return TransitionCallbackReturn.FAILURE
        self.create_entities()
        return super().on_configure(state)

    def create_entities(self) -> None:
        logic, p = self.logic, self.params
        message_type = {"joint_trajectory": JointTrajectory, "forward_command": Float64MultiArray,
                        "cartesian_pose": PoseStamped}[logic.config.command_interface]
        self.command_pub = self.create_lifecycle_publisher(message_type, logic.config.command_topic,
                                                           common.COMMAND_QOS)
        if p["gripper_command_topic"]:
            self.gripper_pub = self.create_lifecycle_publisher(Float64, p["gripper_command_topic"],
                                                               common.COMMAND_QOS)
        subs = []
        for key, topic in logic.intake.config.image_topics.items():
            compressed = topic.endswith("/compressed")
            subs.append(self.create_subscription(
                CompressedImage if compressed else Image, topic,
                lambda msg, key=key, c=compressed: logic.on_image(key, msg, self.now(), c),
                common.SENSOR_QOS))
        subs.append(self.create_subscription(JointState, p["joint_state_topic"],
                                             lambda msg: logic.on_joint_state(msg, self.now()),
                                             common.SENSOR_QOS))
        if p["gripper_joint_state_topic"]:
            subs.append(self.create_subscription(JointState, p["gripper_joint_state_topic"],
                                                 lambda msg: logic.on_gripper_state(msg, self.now()),
                                                 common.SENSOR_QOS))
        subs.append(self.create_subscription(Bool, p["stop_topic"],
                                             lambda msg: logic.on_stop_flag(msg.data, self.now()), common.STOP_QOS))
        if p["episode_topic"]:
            subs.append(self.create_subscription(
                Header, p["episode_topic"],
                lambda msg: logic.on_episode_reset(conv.stamp_to_seconds(msg.stamp), self.now()),
                common.RELIABLE_QOS))
        if p["robot_state_topic"]:
            try:
                from franka_msgs.msg import FrankaRobotState
            except ImportError:
                self.get_logger().info("franka_msgs is not installed: the Franka robot state is not monitored")
            else:
                subs.append(self.create_subscription(
                    FrankaRobotState, p["robot_state_topic"],
                    lambda msg: logic.on_robot_state(*conv.franka_robot_state(msg), self.now()), common.SENSOR_QOS))
        self.sensor_subs = subs
        self.control_loop = PeriodicThread(self.on_tick, logic.config.control_rate, name="control").start()

    def destroy_entities(self) -> None:
        if self.control_loop is not None:  # first: no tick may publish on a destroyed publisher
            self.control_loop.stop()
            self.control_loop = None
        for sub in self.sensor_subs:
            self.destroy_subscription(sub)
        self.sensor_subs = []
        for pub in (self.command_pub, self.gripper_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.command_pub = self.gripper_pub = None

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.logic.activate()
        self.get_logger().info(f"active: {self.logic.config.command_interface} commands on "
                               f"{self.logic.config.command_topic} at {self.logic.config.control_rate:.0f} Hz")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.logic.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.release()
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.release()
        return super().on_shutdown(state)

    def release(self) -> None:
        self.destroy_entities()
        if self.logic is not None:
            self.logic.cleanup()
        self.logic = None

    # ------------------------------------------------------------------ callbacks

    def on_tick(self) -> None:
        logic = self.logic
        if logic is None:
            return
        out = logic.tick(self.now())
        outcome = logic.poll_swap()
        if outcome is not None:
            (self.get_logger().info if outcome.ok else self.get_logger().error)(outcome.message)
            if outcome.revert_to is not None:  # the parameter goes back to the policy that still drives
                self.set_parameters([Parameter("policy", Parameter.Type.STRING, outcome.revert_to)])
        if out is None or self.command_pub is None:
            return
        config = logic.config
        if config.command_interface == "joint_trajectory":
            msg = JointTrajectory()
            conv.fill_joint_trajectory(msg, logic.intake.config.joint_names, out.q, config.trajectory_lead_s,
                                       JointTrajectoryPoint())
        elif config.command_interface == "forward_command":
            msg = Float64MultiArray()
            conv.fill_float64_array(msg, out.q)
        else:
            msg = PoseStamped()
            conv.fill_pose_stamped(msg, out.pose[:3], out.pose[3:], out.t, config.base_frame)
        self.command_pub.publish(msg)
        if self.gripper_pub is not None:
            self.gripper_pub.publish(Float64(data=float(out.gripper)))

    def on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name != "policy":
                continue
            if self.logic is not None:
                ok, reason = self.logic.request_policy(param.value)
            else:  # unconfigured: check the name now, load it at configure
                try:
                    catalog = PolicyCatalog.from_file(self.params["policies_file"] or common.default_policies_file())
                    catalog.resolve(param.value)
                    ok, reason = True, ""
                except FastDPError as e:
                    ok, reason = False, str(e)
            if not ok:
                self.get_logger().warning(f"policy {param.value!r} refused: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def on_reset(self, request, response):
        if self.logic is None:
            response.success, response.message = False, "not configured"
        else:
            response.success, response.message = self.logic.reset(self.now())
        self.get_logger().warning(f"~/reset: {response.message}")
        return response

    def on_diagnostics(self) -> None:
        now = self.now()
        if self.logic is None:
            entries = [conv.DiagnosticEntry(f"{POLICY_NODE_NAME}: controller", "WARN", "not configured", {})]
        else:
            entries = self.logic.diagnostics(now)
        common.publish_diagnostics(self.diagnostics_pub, entries, now)

    def close(self) -> None:
        self.release()
        common.unbridge_logging(self.log_bridge)


def main(args=None) -> int:
    shutdown = common.init(args)
    node = PolicyNode()
    if node.params["autostart"]:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        else:
            node.get_logger().error("autostart: configure failed; fix the parameters and run "
                                    f"`ros2 lifecycle set /{POLICY_NODE_NAME} configure`")
    return common.spin(node, shutdown, close=node.close)


if __name__ == "__main__":
    raise SystemExit(main())
