"""Middleware-free run-time pieces shared by `fastdp` commands and the ROS 2 nodes."""
