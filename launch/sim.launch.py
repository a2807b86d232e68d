"""The MuJoCo simulation as a ROS robot, with the policy and the OOD monitor on it.

    ros2 launch fastdp_ros sim.launch.py policy:=onedp
    ros2 launch fastdp_ros sim.launch.py policy:=alt command_interface:=forward_command use_monitor:=false

The whole launch ends when the simulation node ends (after `episodes`, if set, or Ctrl-C).
Parameters come from config/sim.yaml.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "fastdp_ros"
SIM_PARAMS = "sim.yaml"

# the arguments policy.launch.py takes, forwarded unchanged
FORWARDED = ("policy", "model_dir", "backend", "control_rate", "command_interface", "use_monitor", "robot_type",
             "monitor_policy")


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    sim_params = PathJoinSubstitution([share, "config", SIM_PARAMS])
    declared = [
        DeclareLaunchArgument("policy", default_value="onedp",
                              description="policy name (dp, onedp, consistency, ractd, ragdp, alt) or model directory"),
        DeclareLaunchArgument("model_dir", default_value="", description="a model directory instead of the mapping"),
        DeclareLaunchArgument("backend", default_value="torch",
                              description="inference backend: torch | torch_compile | onnxruntime | tensorrt"),
        DeclareLaunchArgument("control_rate", default_value="60.0", description="commands per second (Hz)"),
        DeclareLaunchArgument("command_interface", default_value="joint_trajectory",
                              description="joint_trajectory | forward_command | cartesian_pose"),
        DeclareLaunchArgument("use_monitor", default_value="true", description="start the OOD monitor node"),
        DeclareLaunchArgument("robot_type", default_value="panda",
                              description="the simulation models a Franka Panda; fr3 applies FR3 limits to it"),
        DeclareLaunchArgument("monitor_policy", default_value="alt_ood", description="the OOD monitor's encoder"),
        DeclareLaunchArgument("task", default_value="push", description="reach | push | pick_place | pick_place_around"),
        DeclareLaunchArgument("episodes", default_value="0", description="end after this many episodes; 0: run on"),
        DeclareLaunchArgument("publish_clock", default_value="false",
                              description="publish the simulated time on /clock (the other nodes then use it)"),
    ]
    sim_node = Node(
        package=PACKAGE, executable="sim_node", name="fastdp_sim", output="screen",
        parameters=[sim_params, {
            "task": ParameterValue(LaunchConfiguration("task"), value_type=str),
            "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
            "publish_clock": ParameterValue(LaunchConfiguration("publish_clock"), value_type=bool),
        }],
        on_exit=Shutdown(reason="the simulation ended"),
    )
    policy_and_monitor = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "policy.launch.py"])),
        launch_arguments={
            **{name: LaunchConfiguration(name) for name in FORWARDED},
            "params_file": sim_params,
            "use_sim_time": LaunchConfiguration("publish_clock"),
        }.items(),
    )
    return LaunchDescription([*declared, sim_node, policy_and_monitor])
