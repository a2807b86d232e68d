"""A real Franka (FR3 or Panda): franka_ros2's bringup, the policy and the OOD monitor.

    ros2 launch fastdp_ros franka.launch.py policy:=onedp robot_ip:=172.16.0.2 robot_type:=fr3
    ros2 launch fastdp_ros franka.launch.py robot_type:=fr3 use_fake_hardware:=true controller:=fr3_arm_controller

When franka_bringup is installed its franka.launch.py is included (robot_ip, robot_type and,
for franka_ros2 releases that still call it so, arm_id; use_fake_hardware; load_gripper);
without it the robot driver must already run. `controller` names a controller of
controllers_yaml to spawn (the one whose input the policy's command topic is). Joint states
come from /franka/joint_states and the fingers from /franka_gripper/joint_states
(config/<robot_type>.yaml).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "fastdp_ros"
BRINGUP = "franka_bringup"

# the arguments policy.launch.py takes, forwarded unchanged
FORWARDED = ("policy", "model_dir", "backend", "control_rate", "command_interface", "use_monitor", "robot_type",
             "monitor_policy")


def _bringup(context):
    """franka_bringup's franka.launch.py when installed (and a controller spawner), else a note."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    def value(name):
        return LaunchConfiguration(name).perform(context)

    try:
        get_package_share_directory(BRINGUP)
    except PackageNotFoundError:
        return [LogInfo(msg=f"{BRINGUP} is not installed: start the Franka driver yourself; launching the policy "
                            f"and the monitor only")]
    fake = value("use_fake_hardware").lower() == "true"
    if not value("robot_ip") and not fake:
        raise RuntimeError("robot_ip is required for a real robot (or use_fake_hardware:=true)")
    robot_type = value("robot_type")
    arguments = {
        "robot_type": robot_type,
        "arm_id": robot_type,  # the name older franka_bringup releases use
        "use_fake_hardware": value("use_fake_hardware"),
        "load_gripper": value("load_gripper"),
    }
    if value("robot_ip"):  # with fake hardware franka_bringup's default is never contacted
        arguments["robot_ip"] = value("robot_ip")
    if value("controllers_yaml"):
        arguments["controllers_yaml"] = value("controllers_yaml")
    # forwarding=False: franka_bringup sees only these arguments, not this file's (an empty
    # controllers_yaml here would otherwise replace franka_bringup's default controllers)
    actions = [GroupAction([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare(BRINGUP), "launch", "franka.launch.py"])),
        launch_arguments=arguments.items(),
    )], scoped=True, forwarding=False)]
    if value("controller"):
        actions.append(Node(package="controller_manager", executable="spawner", arguments=[value("controller")],
                            output="screen"))
    return actions


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
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
        DeclareLaunchArgument("robot_type", default_value="fr3", description="fr3 | panda"),
        DeclareLaunchArgument("monitor_policy", default_value="alt_ood", description="the OOD monitor's encoder"),
        DeclareLaunchArgument("robot_ip", default_value="", description="hostname or IP of the robot's FCI"),
        DeclareLaunchArgument("use_fake_hardware", default_value="false", description="franka_bringup fake hardware"),
        DeclareLaunchArgument("load_gripper", default_value="true", description="start the Franka Hand driver"),
        DeclareLaunchArgument("controller", default_value="",
                              description="controller to spawn (defined in controllers_yaml); empty: none"),
        DeclareLaunchArgument("controllers_yaml", default_value="",
                              description="ros2_control controllers for franka_bringup; empty: franka_bringup's"),
    ]
    policy_and_monitor = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "policy.launch.py"])),
        launch_arguments={name: LaunchConfiguration(name) for name in FORWARDED}.items(),
    )
    return LaunchDescription([*declared, OpaqueFunction(function=_bringup), policy_and_monitor])
