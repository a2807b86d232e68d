"""Franka robot facts shared by the simulation, the safety filter and the nodes.

Position and velocity limits are those of franka_description (see DESIGN.md); acceleration
and jerk limits are Franka's published control parameters. All values are in the real
robot's joint coordinates (radians, rad/s, ...), never in a simulator's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastdp_ros.errors import ConfigError

N_ARM_JOINTS = 7


@dataclass(frozen=True)
class RobotSpec:
    """Limits and naming of one Franka arm type."""

    name: str
    joint_prefix: str
    position_lower: tuple[float, ...]
    position_upper: tuple[float, ...]
    velocity: tuple[float, ...]
    acceleration: tuple[float, ...]
    jerk: tuple[float, ...]
    home: tuple[float, ...]
    gripper_width_range: tuple[float, float] = (0.0, 0.08)
    gripper_speed: float = 0.1  # m/s, the hand's maximum finger speed (both fingers)
    extra: dict = field(default_factory=dict)

    def joint_names(self, prefix: str | None = None) -> list[str]:
        """`<prefix>_joint1..7`; the prefix defaults to the robot type (fr3 / panda)."""
        p = self.joint_prefix if prefix is None else prefix
        return [f"{p}_joint{i}" for i in range(1, N_ARM_JOINTS + 1)]

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.position_lower, dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.position_upper, dtype=np.float64)

    @property
    def max_velocity(self) -> np.ndarray:
        return np.asarray(self.velocity, dtype=np.float64)

    @property
    def max_acceleration(self) -> np.ndarray:
        return np.asarray(self.acceleration, dtype=np.float64)

    @property
    def home_position(self) -> np.ndarray:
        return np.asarray(self.home, dtype=np.float64)


_ACCELERATION = (15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0)
_JERK = (7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0)

FR3 = RobotSpec(
    name="fr3",
    joint_prefix="fr3",
    position_lower=(-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),
    position_upper=(2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159),
    velocity=(2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26),
    acceleration=_ACCELERATION,
    jerk=_JERK,
    home=(0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398),
)

PANDA = RobotSpec(
    name="panda",
    joint_prefix="panda",
    position_lower=(-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
    position_upper=(2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973),
    velocity=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
    acceleration=_ACCELERATION,
    jerk=_JERK,
    home=(0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398),
)

ROBOTS: dict[str, RobotSpec] = {r.name: r for r in (FR3, PANDA)}


def get_robot(name: str) -> RobotSpec:
    """The spec of a robot type by name ('fr3' or 'panda')."""
    try:
        return ROBOTS[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(
            f"unknown robot type {name!r}; choose one of: {', '.join(sorted(ROBOTS))}"
        ) from None
