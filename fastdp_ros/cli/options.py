"""Options several `fastdp` commands share: --threads (fastdp_ros.hardware picks the defaults)."""

from __future__ import annotations


def add_threads_argument(p, role: str = "inference") -> None:
    """`--threads`: torch's (and onnxruntime's) intra-op threads for this command."""
    default = ("half the usable CPUs, 1 to 4: the rest stays free for the control loop and the other "
               "processes of a robot computer" if role == "inference" else "every usable CPU")
    p.add_argument("--threads", type=int, default=None, help=f"intra-op threads (default: {default})")
