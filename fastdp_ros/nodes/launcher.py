"""The ROS executables' entry points (setup.py console_scripts; `ros2 run fastdp_ros <name>`).

A node module imports torch and its policy before main() can take over SIGINT and SIGTERM: a
Ctrl-C in those seconds (`ros2 launch` started, then stopped at once) ended the process with a
KeyboardInterrupt traceback and status -2. Here the signals end it quietly with status 0 until
the node's main() installs its own handling (node_common), as a signal that arrives later does.
This module imports nothing heavy, so the handlers are in place before anything slow starts.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def _exit_quietly(signum, frame):
    # os._exit, not SystemExit: the signal may land while torch's import runs Python from C++
    # (pybind11), where an exception cannot unwind and aborts the process (status -6). Nothing
    # has started yet that would need cleaning up.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _run(module: str):
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_quietly)
    return importlib.import_module(module).main()


def policy_node():
    return _run("fastdp_ros.nodes.policy_node")


def ood_monitor_node():
    return _run("fastdp_ros.nodes.ood_monitor_node")


def sim_node():
    return _run("fastdp_ros.nodes.sim_node")
