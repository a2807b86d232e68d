"""Policy node + OOD monitor, to pair with any robot or simulator (Gazebo included).

    ros2 launch fastdp_ros policy.launch.py policy:=onedp robot_type:=fr3
    ros2 launch fastdp_ros policy.launch.py params_file:=/path/to/my_robot.yaml use_monitor:=false

Robot-specific topics and names come from params_file (default config/<robot_type>.yaml);
the launch arguments override them. sim.launch.py and franka.launch.py include this file.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "fastdp_ros"


def _config(*parts):
    return PathJoinSubstitution([FindPackageShare(PACKAGE), "config", *parts])


def generate_launch_description():
    declared = [
        DeclareLaunchArgument("policy", default_value="onedp",
                              description="policy name in policies_file (dp, onedp, consistency, ractd, ragdp, alt) "
                                          "or a model directory"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="a model directory to start with instead of the policy's mapping"),
        DeclareLaunchArgument("backend", default_value="torch",
                              description="inference backend: torch | torch_compile | onnxruntime | tensorrt"),
        DeclareLaunchArgument("control_rate", default_value="60.0", description="commands per second (Hz)"),
        DeclareLaunchArgument("command_interface", default_value="joint_trajectory",
                              description="joint_trajectory | forward_command | cartesian_pose"),
        DeclareLaunchArgument("use_monitor", default_value="true", description="start the OOD monitor node"),
        DeclareLaunchArgument("robot_type", default_value="fr3", description="fr3 | panda"),
        # a list of substitutions concatenates: <share>/config/<robot_type> + ".yaml"
        DeclareLaunchArgument("params_file", default_value=[_config(LaunchConfiguration("robot_type")), ".yaml"],
                              description="node parameters (topics, joint names); default config/<robot_type>.yaml"),
        DeclareLaunchArgument("policies_file", default_value=_config("policies.yaml"),
                              description="policy names -> model directories"),
        DeclareLaunchArgument("monitor_policy", default_value="alt_ood",
                              description="the OOD monitor's encoder: a policy name or model directory"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
    ]

    def text(name):
        return ParameterValue(LaunchConfiguration(name), value_type=str)

    shared = {
        "robot_type": text("robot_type"),
        "policies_file": text("policies_file"),
        "command_interface": text("command_interface"),
        "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
    }
    policy_node = Node(
        package=PACKAGE, executable="policy_node", name="fastdp_policy", output="screen",
        parameters=[LaunchConfiguration("params_file"), {
            **shared,
            "policy": text("policy"),
            "model_dir": text("model_dir"),
            "backend": text("backend"),
            "control_rate": ParameterValue(LaunchConfiguration("control_rate"), value_type=float),
        }],
    )
    monitor_node = Node(
        package=PACKAGE, executable="ood_monitor_node", name="fastdp_ood_monitor", output="screen",
        parameters=[LaunchConfiguration("params_file"), {**shared, "policy": text("monitor_policy")}],
        condition=IfCondition(LaunchConfiguration("use_monitor")),
    )
    return LaunchDescription([*declared, policy_node, monitor_node])
