"""MuJoCo simulation of a Franka Panda: scene, tasks, scripted experts, fast offscreen rendering.

Importing this package sets ``MUJOCO_GL=egl`` unless the environment already chose a backend
(e.g. ``MUJOCO_GL=osmesa``); MuJoCo reads it when it is first imported.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from fastdp_ros.sim.experts import (  # noqa: E402
    PickPlaceAroundExpert,
    PickPlaceExpert,
    PushExpert,
    ReachExpert,
    ScriptedExpert,
    evaluate_expert,
    make_expert,
    run_expert_episode,
)
from fastdp_ros.sim.render import OffscreenRenderer, gl_backend  # noqa: E402
from fastdp_ros.sim.scene import (  # noqa: E402
    ARM_JOINT_OFFSET,
    CAMERAS,
    MESH_DETAILS,
    FrankaSim,
    SceneConfig,
    build_model,
    build_spec,
)
from fastdp_ros.sim.tasks import (  # noqa: E402
    STEP_COST,
    SUCCESS_BONUS,
    TASKS,
    FrankaEnv,
    Task,
    get_task,
    make_env,
    object_state,
)

__all__ = [
    "ARM_JOINT_OFFSET",
    "CAMERAS",
    "MESH_DETAILS",
    "FrankaSim",
    "OffscreenRenderer",
    "SceneConfig",
    "build_model",
    "build_spec",
    "gl_backend",
    "STEP_COST",
    "SUCCESS_BONUS",
    "TASKS",
    "FrankaEnv",
    "Task",
    "get_task",
    "object_state",
    "make_env",
    "PickPlaceAroundExpert",
    "PickPlaceExpert",
    "PushExpert",
    "ReachExpert",
    "ScriptedExpert",
    "evaluate_expert",
    "make_expert",
    "run_expert_episode",
]
