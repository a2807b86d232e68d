"""ROS 2 nodes: the only place rclpy is imported.

  policy_node.py       `fastdp_policy` (lifecycle): sensors -> PolicyRunner -> commands; hot swap
  ood_monitor_node.py  `fastdp_ood_monitor`: own encoder + index -> OOD score, latched stop flag
  sim_node.py          `fastdp_sim`: the MuJoCo task as a robot (joint states, cameras, commands)
  node_common.py       QoS profiles, parameter declaration, logging bridge, spinning

The node files only move messages. What they do is in modules that import no rclpy and are
tested without ROS: fastdp_ros.ros_messages (messages <-> numpy, shared with the rosbag2
importer), parameters.py (the declared parameters), catalog.py (policy names -> model directories), sensors.py (sensor messages ->
observation samples), kinematics.py (Franka FK/IK), policy_logic.py, monitor_logic.py,
sim_logic.py. Importing this package imports none of them.
"""
