"""Middleware-free run-time pieces shared by `fastdp` commands and the ROS 2 nodes.

Data flow: sensor samples -> ObservationBuffer -> InferenceWorker (policy.act) ->
ActionScheduler -> SafetyFilter -> command, with watchdogs and an OODMonitor raising a latched
stop; PolicyRunner ties them together (and hot-swaps policies); loop.run_closed_loop drives a
runner against the MuJoCo simulation in real time (`fastdp run`).
"""

from fastdp_ros.runtime.buffer import ObservationBuffer, StreamSpec
from fastdp_ros.runtime.loop import SIM_WORKSPACE, LoopConfig, SimPlant, VideoRecorder, run_closed_loop
from fastdp_ros.runtime.ood import (
    LatchedMonitor,
    ModelScoreMonitor,
    OODMonitor,
    OODReading,
    monitor_from_dataset,
)
from fastdp_ros.runtime.runner import (
    Command,
    PolicyRunner,
    RunnerConfig,
    SwapJob,
    Timing,
    resolve_loader,
    synthetic_observation,
    warm_up,
)
from fastdp_ros.runtime.safety import (
    CARTESIAN_LIMITS,
    CartesianSafetyFilter,
    RateLimiter,
    SafeCommand,
    SafePose,
    SafetyFilter,
    WorkspaceBox,
    braking_speed,
)
from fastdp_ros.runtime.scheduler import BLEND_MODES, ActionScheduler, InvalidChunk, knot_times
from fastdp_ros.runtime.watchdog import StopEvent, StopLatch, WatchdogLimits, check_watchdogs
from fastdp_ros.runtime.worker import InferenceResult, InferenceWorker, LatencyRecord

__all__ = [
    "BLEND_MODES", "CARTESIAN_LIMITS", "SIM_WORKSPACE", "ActionScheduler", "CartesianSafetyFilter", "Command",
    "InferenceResult", "InferenceWorker", "InvalidChunk", "LatchedMonitor", "LatencyRecord", "LoopConfig",
    "ModelScoreMonitor", "OODMonitor",
    "OODReading", "ObservationBuffer", "PolicyRunner", "RateLimiter", "RunnerConfig", "SafeCommand", "SafePose",
    "SafetyFilter", "SimPlant", "StopEvent", "StopLatch", "StreamSpec", "SwapJob", "Timing", "VideoRecorder",
    "WatchdogLimits", "WorkspaceBox", "braking_speed", "check_watchdogs", "knot_times", "monitor_from_dataset",
    "resolve_loader", "run_closed_loop", "synthetic_observation", "warm_up",
]
