"""fastdp_ros: fast diffusion policies for closed-loop control of a Franka arm."""

__version__ = "0.2.1"
