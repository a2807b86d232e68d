"""fastdp_ros: fast diffusion policies for closed-loop control of a Franka arm."""

__version__ = "0.2.1"

# OpenMP threads sleep instead of spinning when idle, before anything loads torch: on a shared
# CPU, spinning threads take the cores the others wait for (fastdp_ros.hardware)
from fastdp_ros.hardware import prefer_passive_waiting as _prefer_passive_waiting  # noqa: E402

_prefer_passive_waiting()
