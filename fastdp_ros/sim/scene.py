"""The MuJoCo scene: a Franka Panda arm and hand on a table, a cube, a target marker, cameras.

The arm and hand are gymnasium-robotics' kitchen_franka model, loaded in place from the
installed package (see :mod:`fastdp_ros.sim.assets`) and edited with :class:`mujoco.MjSpec`.

Joint coordinates
-----------------
That model's link6 and link7 bodies are rotated about their joint axis with respect to the real
Panda (``euler='1.57 0 1.57'`` and ``euler='1.57 0 0.7854'`` instead of ``quat='1 1 0 0'``).
This is a constant joint offset: ``q_real = q_sim + ARM_JOINT_OFFSET``. The model writes the
angles rounded (1.57, 0.7854), which leaves a fixed 0.8 mrad tilt that no joint offset can
absorb; the two body orientations are therefore rewritten here with the exact angles
(pi/2, pi/4), after which the offset ``[0, 0, 0, 0, 0, pi/2, pi/4]`` is exact (checked against
an independent forward kinematics of the real Panda in ``test/test_sim.py``).

Every value that enters or leaves :class:`FrankaSim` is in REAL Panda joint coordinates;
the offset is applied only inside this module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mujoco
import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.robots import PANDA, RobotSpec
from fastdp_ros.sim.assets import franka_files
from fastdp_ros.sim.render import OffscreenRenderer

log = logging.getLogger(__name__)

N_ARM = 7
ARM_JOINT_OFFSET = np.array([0.0, 0.0, 0.0, 0.0, 0.0, math.pi / 2, math.pi / 4])
"""``q_real = q_sim + ARM_JOINT_OFFSET`` (radians)."""

CAMERAS = ("front", "wrist")
TARGET_KINDS = ("disc", "sphere", "none")
MESH_DETAILS = ("coarse", "full")

# Poses in the real Panda's link7 frame: the flange is 0.107 m along z, the hand is rotated
# -pi/4 about z with respect to the flange (franka_description's panda_hand joint).
FLANGE_Z = 0.107
_HAND_QUAT = (math.cos(-math.pi / 8), 0.0, 0.0, math.sin(-math.pi / 8))
# Tool centre point in the hand frame: between the fingertip pads. The fingers of this model
# are 1.75x longer than the real ones; their pads span z = 0.093..0.146 m in the hand frame.
TCP_Z_HAND = 0.14

# Front camera (world frame) and wrist camera (hand frame).
FRONT_CAMERA_POS = (1.10, 0.0, 0.70)
FRONT_CAMERA_LOOKAT = (0.48, 0.0, 0.08)
FRONT_CAMERA_FOVY = 50.0
WRIST_CAMERA_POS = np.array([-0.08, 0.0, 0.04])
WRIST_CAMERA_LOOKAT = np.array([0.0, 0.0, 0.22])
WRIST_CAMERA_FOVY = 70.0

_ARM_BODIES = tuple(f"panda0_link{i}" for i in range(1, 8))
_FINGER_BODIES = ("panda0_leftfinger", "panda0_rightfinger")


@dataclass(frozen=True)
class SceneConfig:
    """What the scene contains and how it is rendered.

    ``image_size`` is ``(height, width)`` in pixels (an int means square).
    ``mesh_detail``: how the arm looks in images. ``"coarse"`` draws it with the model's
    collision meshes (~2.5k triangles; a 96 px frame renders in about 1 ms with Mesa's
    software EGL), ``"full"`` with its visual meshes (136k triangles; 5-10 ms per frame).
    Physics is the same either way.
    ``obstacle``: a static square post standing on the table (placed per episode with
    :meth:`FrankaSim.set_obstacle`); it collides with the cube and the arm.
    """

    cube: bool = True
    cube_half_size: float = 0.025
    cube_mass: float = 0.1
    target: str = "disc"
    target_radius: float = 0.04
    image_size: tuple[int, int] | int = (96, 96)
    timestep: float = 0.002
    mesh_detail: str = "coarse"
    obstacle: bool = False
    obstacle_half_width: float = 0.02
    obstacle_half_height: float = 0.09

    def __post_init__(self) -> None:
        if self.mesh_detail not in MESH_DETAILS:
            raise ConfigError(
                f"unknown mesh_detail {self.mesh_detail!r}; "
                f"choose one of: {', '.join(MESH_DETAILS)}"
            )
        if self.target not in TARGET_KINDS:
            raise ConfigError(
                f"unknown target marker {self.target!r}; choose one of: {', '.join(TARGET_KINDS)}"
            )
        h, w = self.image_hw
        if h < 8 or w < 8 or h > 4096 or w > 4096:
            raise ConfigError(
                f"image_size must be between 8 and 4096 pixels, got {self.image_size}"
            )
        if not (1e-4 <= self.timestep <= 0.01):
            raise ConfigError(f"physics timestep must be in [0.0001, 0.01] s, got {self.timestep}")
        if not (0.01 <= self.cube_half_size <= 0.035):
            raise ConfigError(
                f"cube_half_size must be in [0.01, 0.035] m (the hand opens 0.08 m), "
                f"got {self.cube_half_size}"
            )
        if not (0.01 <= self.obstacle_half_width <= 0.05
                and 0.05 <= self.obstacle_half_height <= 0.4):
            raise ConfigError(
                f"obstacle half sizes must be in [0.01, 0.05] m (width) and [0.05, 0.4] m "
                f"(height), got {self.obstacle_half_width} and {self.obstacle_half_height}"
            )

    @property
    def image_hw(self) -> tuple[int, int]:
        return image_hw(self.image_size)


def image_hw(size: tuple[int, int] | int) -> tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    try:
        h, w = size
        return int(h), int(w)
    except (TypeError, ValueError):
        raise ConfigError(f"image size must be an int or (height, width), got {size!r}") from None


# --------------------------------------------------------------------------- small geometry


def _lookat_quat(pos, target, up) -> np.ndarray:
    """Quaternion (wxyz) of a MuJoCo camera at ``pos`` looking at ``target`` (image up ~ ``up``)."""
    pos, target, up = (np.asarray(v, dtype=np.float64) for v in (pos, target, up))
    z = pos - target  # MuJoCo cameras look along their -z axis
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    mat = np.stack([x, y, z], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.reshape(-1))
    return quat


def _quat_mul(a, b) -> np.ndarray:
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return out


def _hand_to_link7(pos_hand, quat_hand=(1.0, 0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """A pose given in the hand frame, expressed in the link7 frame."""
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, np.asarray(_HAND_QUAT))
    pos = np.array([0.0, 0.0, FLANGE_Z]) + rot.reshape(3, 3) @ np.asarray(pos_hand, dtype=float)
    return pos, _quat_mul(_HAND_QUAT, quat_hand)


def mat_to_quat(mat) -> np.ndarray:
    """Rotation matrix (3x3 or 9) -> unit quaternion wxyz."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.asarray(mat, dtype=np.float64).reshape(-1))
    return quat


def quat_to_mat(quat) -> np.ndarray:
    """Unit quaternion wxyz -> 3x3 rotation matrix."""
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64))
    return mat.reshape(3, 3)


# --------------------------------------------------------------------------- model building

_SCENE_XML = """
<mujoco model="fastdp_panda">
  <include file="assets.xml"/>
  <option timestep="{timestep}" integrator="implicitfast"/>
  <visual>
    <global offwidth="{offwidth}" offheight="{offheight}"/>
    <quality offsamples="0" shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <map znear="0.005"/>
  </visual>
  <worldbody>
    <light name="top" directional="true" pos="0.4 0 2" dir="0 0 -1" diffuse="0.5 0.5 0.5"
           specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.32 0.34 0.37 1"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="0.35 0 -0.025" size="0.75 0.7 0.025"
          rgba="0.62 0.52 0.40 1" friction="0.6 0.005 0.0001"/>
    <camera name="front" pos="{front_pos}" quat="{front_quat}" fovy="{front_fovy}"/>
    <include file="chain.xml"/>
    {cube}
    {target}
    {obstacle}
  </worldbody>
  <include file="actuator.xml"/>
</mujoco>
"""

_CUBE_XML = """
    <body name="cube" pos="0.5 0 {half}">
      <freejoint name="cube_joint"/>
      <geom name="cube" type="box" size="{half} {half} {half}" mass="{mass}" rgba="0.85 0.15 0.12 1"
            friction="1 0.005 0.0001" condim="4"/>
    </body>
"""

_TARGET_XML = {
    "disc": """
    <body name="target" mocap="true" pos="0.5 0.2 0">
      <geom name="target" type="cylinder" size="{radius} 0.0015" pos="0 0 0.0015"
            rgba="0.15 0.75 0.25 1" contype="0" conaffinity="0"/>
    </body>
""",
    "sphere": """
    <body name="target" mocap="true" pos="0.5 0.2 0.2">
      <geom name="target" type="sphere" size="{radius}" rgba="0.15 0.75 0.25 1"
            contype="0" conaffinity="0"/>
    </body>
""",
    "none": "",
}

# A mocap body: static in the physics (nothing pushes it), moved per episode via mocap_pos.
_OBSTACLE_XML = """
    <body name="obstacle" mocap="true" pos="0.5 0.1 {half_height}">
      <geom name="obstacle" type="box" size="{half_width} {half_width} {half_height}"
            rgba="0.55 0.56 0.60 1" friction="0.6 0.005 0.0001"/>
    </body>
"""


def build_spec(config: SceneConfig) -> mujoco.MjSpec:
    """The scene as an editable :class:`mujoco.MjSpec` (not compiled)."""
    includes, assets = franka_files()
    h, w = config.image_hw
    front_quat = _lookat_quat(FRONT_CAMERA_POS, FRONT_CAMERA_LOOKAT, (0.0, 0.0, 1.0))
    cube = (
        _CUBE_XML.format(half=config.cube_half_size, mass=config.cube_mass) if config.cube else ""
    )
    target = _TARGET_XML[config.target].format(radius=config.target_radius)
    obstacle = (
        _OBSTACLE_XML.format(half_width=config.obstacle_half_width,
                             half_height=config.obstacle_half_height)
        if config.obstacle else ""
    )
    xml = _SCENE_XML.format(
        timestep=config.timestep,
        offwidth=max(640, w),
        offheight=max(480, h),
        front_pos=" ".join(f"{v:.6f}" for v in FRONT_CAMERA_POS),
        front_quat=" ".join(f"{v:.9f}" for v in front_quat),
        front_fovy=FRONT_CAMERA_FOVY,
        cube=cube,
        target=target,
        obstacle=obstacle,
    )
    spec = mujoco.MjSpec.from_string(xml, include=dict(includes), assets=dict(assets))
    _edit_robot(spec)
    if config.mesh_detail == "coarse":
        _use_coarse_visual_meshes(spec)
    return spec


def _use_coarse_visual_meshes(spec: mujoco.MjSpec) -> None:
    """Draw the arm with its collision meshes: ~50x fewer triangles, much faster to render."""
    mesh_names = {m.name for m in spec.meshes}
    for geom in spec.geoms:
        name = geom.meshname
        if name.endswith("_viz") and name != "finger_viz":
            coarse = name[: -len("_viz")] + "_col"
            if coarse in mesh_names:
                geom.meshname = coarse
    # The detailed meshes are no longer referenced; drop them (faster compile, less memory).
    for mesh in list(spec.meshes):
        if mesh.name.endswith("_viz") and mesh.name != "finger_viz":
            spec.delete(mesh)


def _edit_robot(spec: mujoco.MjSpec) -> None:
    """Real Panda link orientations, names, limits, gravity compensation, TCP and wrist camera."""
    # Exact link6 / link7 orientations (see the module docstring).
    for body_name, euler in (("panda0_link6", (math.pi / 2, 0.0, math.pi / 2)),
                             ("panda0_link7", (math.pi / 2, 0.0, math.pi / 4))):
        body = spec.body(body_name)
        quat = np.zeros(4)
        mujoco.mju_euler2Quat(quat, np.asarray(euler), "xyz")
        body.alt.type = mujoco.mjtOrientation.mjORIENTATION_QUAT
        body.quat = quat

    # Names and limits in sim coordinates (real Panda limits minus the joint offset).
    lower = PANDA.lower - ARM_JOINT_OFFSET
    upper = PANDA.upper - ARM_JOINT_OFFSET
    for i in range(N_ARM):
        old = f"robot:panda0_joint{i + 1}"
        new = f"panda_joint{i + 1}"
        joint = spec.joint(old)
        joint.name = new
        joint.range = [lower[i], upper[i]]
        act = spec.actuator(f"panda0_joint{i + 1}")
        act.name = f"{new}_position"
        act.target = new
        act.ctrlrange = [lower[i], upper[i]]
    finger_acts = ("r_gripper_finger_joint", "l_gripper_finger_joint")
    for i, act_name in enumerate(finger_acts):
        old = f"robot:panda0_finger_joint{i + 1}"
        new = f"panda_finger_joint{i + 1}"
        spec.joint(old).name = new
        act = spec.actuator(act_name)
        act.name = f"{new}_position"
        act.target = new

    # A Franka compensates gravity in its controller; so does the simulated arm.
    for name in _ARM_BODIES + _FINGER_BODIES:
        spec.body(name).gravcomp = 1.0

    for i in range(8):
        spec.body(f"panda0_link{i}").name = f"panda_link{i}"
    spec.body("panda0_leftfinger").name = "panda_leftfinger"
    spec.body("panda0_rightfinger").name = "panda_rightfinger"

    link7 = spec.body("panda_link7")
    # Tool centre point between the fingertip pads; z along the gripper, y along finger motion.
    pos, quat = _hand_to_link7((0.0, 0.0, TCP_Z_HAND))
    link7.add_site(name="tcp", pos=pos, quat=quat, size=[0.006, 0.006, 0.006],
                   group=4, rgba=[1, 1, 0, 1])
    # Wrist camera: on the hand's flat side (-x, away from the connector bump), off the finger
    # plane, looking along the gripper at the region just beyond the fingertips.
    cam_quat_hand = _lookat_quat(WRIST_CAMERA_POS, WRIST_CAMERA_LOOKAT, (-1.0, 0.0, 0.0))
    pos, quat = _hand_to_link7(WRIST_CAMERA_POS, cam_quat_hand)
    link7.add_camera(name="wrist", pos=pos, quat=quat, fovy=WRIST_CAMERA_FOVY)


def build_model(config: SceneConfig | None = None) -> mujoco.MjModel:
    """Compile the scene."""
    config = config or SceneConfig()
    model = build_spec(config).compile()
    # Fast offscreen rendering: no multisampling; no reflective materials in the scene.
    model.vis.quality.offsamples = 0
    model.mat_reflectance[:] = 0.0
    model.light_castshadow[:] = 0
    return model


# --------------------------------------------------------------------------- the simulator


class FrankaSim:
    """A simulated Panda (arm + hand) on a table, in real Panda joint coordinates.

    The arm is position controlled (MuJoCo position actuators, gravity compensated); the hand
    takes a total opening width in metres (0..0.08), split equally over the two fingers.
    """

    def __init__(self, config: SceneConfig | None = None, robot: RobotSpec = PANDA):
        if robot.name != "panda":
            raise ConfigError(
                f"the simulation models a Franka Panda; robot {robot.name!r} is not simulated"
            )
        self.config = config or SceneConfig()
        self.robot = robot
        self.model = build_model(self.config)
        self.data = mujoco.MjData(self.model)
        self._kin = mujoco.MjData(self.model)  # scratch data for kinematics queries
        m = self.model

        def jid(name):
            return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)

        arm_joints = [jid(f"panda_joint{i}") for i in range(1, 8)]
        finger_joints = [jid("panda_finger_joint1"), jid("panda_finger_joint2")]
        self._arm_qadr = np.array([m.jnt_qposadr[j] for j in arm_joints])
        self._arm_dadr = np.array([m.jnt_dofadr[j] for j in arm_joints])
        self._finger_qadr = np.array([m.jnt_qposadr[j] for j in finger_joints])
        self._finger_dadr = np.array([m.jnt_dofadr[j] for j in finger_joints])
        self._arm_act = np.array(
            [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, f"panda_joint{i}_position")
             for i in range(1, 8)]
        )
        self._finger_act = np.array(
            [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, f"panda_finger_joint{i}_position")
             for i in (1, 2)]
        )
        self._tcp = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self._finger_range = m.jnt_range[finger_joints[0]].copy()
        self.width_range = (float(robot.gripper_width_range[0]),
                            min(float(robot.gripper_width_range[1]), 2 * self._finger_range[1]))

        cube = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "cube")
        self.has_cube = cube >= 0
        if self.has_cube:
            cj = m.body_jntadr[cube]
            self._cube_qadr = int(m.jnt_qposadr[cj])
            self._cube_dadr = int(m.jnt_dofadr[cj])
            self._cube_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "cube")
        target = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "target")
        self._target_mocap = int(m.body_mocapid[target]) if target >= 0 else -1
        left = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "panda_leftfinger")
        right = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "panda_rightfinger")
        self._left_geoms = np.flatnonzero(m.geom_bodyid == left)
        self._right_geoms = np.flatnonzero(m.geom_bodyid == right)
        obstacle = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "obstacle")
        self.has_obstacle = obstacle >= 0
        if self.has_obstacle:
            self._obstacle_mocap = int(m.body_mocapid[obstacle])
            self._obstacle_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "obstacle")
            # Every geom of the arm's tree: links, hand and fingers.
            base = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "panda_link0")
            self._robot_geoms = np.flatnonzero(m.body_rootid[m.geom_bodyid] == base)

        self.camera_names = tuple(
            mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(m.ncam)
        )
        self._renderers: dict[tuple[int, int], OffscreenRenderer] = {}
        self._t_goal = 0.0
        # Quaternion sign convention: the hemisphere of the TCP orientation at the home pose,
        # so that a downward gripper's quaternion is continuous over all but extreme yaws.
        _, rot = self.fk(robot.home_position)
        self.quat_reference = mat_to_quat(rot)
        self.reset()

    # ----------------------------------------------------------------- coordinates

    @staticmethod
    def to_sim(q_real) -> np.ndarray:
        """Real Panda joint angles -> this model's joint angles."""
        return np.asarray(q_real, dtype=np.float64) - ARM_JOINT_OFFSET

    @staticmethod
    def to_real(q_sim) -> np.ndarray:
        """This model's joint angles -> real Panda joint angles."""
        return np.asarray(q_sim, dtype=np.float64) + ARM_JOINT_OFFSET

    def canonical_quat(self, quat) -> np.ndarray:
        """``quat`` or ``-quat``, whichever lies in the hemisphere of the home orientation."""
        quat = np.asarray(quat, dtype=np.float64)
        return -quat if float(np.dot(quat, self.quat_reference)) < 0.0 else quat

    # ----------------------------------------------------------------- state

    @property
    def timestep(self) -> float:
        return float(self.model.opt.timestep)

    @property
    def time(self) -> float:
        """Simulated time in seconds since the last reset."""
        return float(self.data.time)

    def reset(
        self,
        q_arm=None,
        gripper_width: float | None = None,
        cube_pose=None,
        target_pos=None,
        obstacle_xy=None,
    ) -> None:
        """Reset physics: arm at ``q_arm`` (real coords, default home), hand at ``gripper_width``
        (default fully open), the cube at ``cube_pose`` (xyz + quat wxyz; default on the table),
        the target marker at ``target_pos``, the obstacle at ``obstacle_xy`` (default: the
        model's place). Commands are set to hold that state."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        q_arm = self.robot.home_position if q_arm is None else np.asarray(q_arm, dtype=np.float64)
        if q_arm.shape != (N_ARM,) or not np.all(np.isfinite(q_arm)):
            raise ConfigError(f"q_arm must be 7 finite joint angles, got {q_arm!r}")
        q_arm = np.clip(q_arm, self.robot.lower, self.robot.upper)
        width = self.width_range[1] if gripper_width is None else float(gripper_width)
        width = float(np.clip(width, *self.width_range))
        d.qpos[self._arm_qadr] = self.to_sim(q_arm)
        d.qpos[self._finger_qadr] = width / 2
        if self.has_cube:
            if cube_pose is None:
                cube_pose = [0.5, 0.0, self.config.cube_half_size, 1.0, 0.0, 0.0, 0.0]
            self.set_cube_pose(cube_pose)
        if target_pos is not None:
            self.set_target(target_pos)
        if obstacle_xy is not None:
            self.set_obstacle(obstacle_xy)
        self.set_command(q_arm, width)
        self._t_goal = 0.0
        mujoco.mj_forward(m, d)

    def set_cube_pose(self, pose) -> None:
        """Place the cube (xyz + quat wxyz) at rest."""
        if not self.has_cube:
            raise ConfigError("this scene has no cube")
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (7,):
            raise ConfigError(
                f"cube pose must be xyz + quat wxyz (7 values), got shape {pose.shape}"
            )
        quat = pose[3:] / np.linalg.norm(pose[3:])
        self.data.qpos[self._cube_qadr:self._cube_qadr + 3] = pose[:3]
        self.data.qpos[self._cube_qadr + 3:self._cube_qadr + 7] = quat
        self.data.qvel[self._cube_dadr:self._cube_dadr + 6] = 0.0

    def set_target(self, pos) -> None:
        """Move the (visual only) target marker."""
        if self._target_mocap < 0:
            raise ConfigError("this scene has no target marker")
        self.data.mocap_pos[self._target_mocap] = np.asarray(pos, dtype=np.float64)

    def target_position(self) -> np.ndarray:
        if self._target_mocap < 0:
            raise ConfigError("this scene has no target marker")
        return self.data.mocap_pos[self._target_mocap].copy()

    def set_obstacle(self, xy) -> None:
        """Stand the obstacle (post) on the table with its centre line at ``xy``."""
        if not self.has_obstacle:
            raise ConfigError("this scene has no obstacle (SceneConfig(obstacle=True) adds one)")
        xy = np.asarray(xy, dtype=np.float64).reshape(-1)
        if xy.shape != (2,) or not np.all(np.isfinite(xy)):
            raise ConfigError(f"obstacle position must be 2 finite values (x, y), got {xy!r}")
        self.data.mocap_pos[self._obstacle_mocap] = [xy[0], xy[1],
                                                     self.config.obstacle_half_height]

    def obstacle_position(self) -> np.ndarray:
        """The obstacle's centre (xyz, m)."""
        if not self.has_obstacle:
            raise ConfigError("this scene has no obstacle (SceneConfig(obstacle=True) adds one)")
        return self.data.mocap_pos[self._obstacle_mocap].copy()

    # ----------------------------------------------------------------- commands and physics

    def set_command(self, q_target, gripper_width: float) -> tuple[np.ndarray, float]:
        """Joint position targets (real coords) and hand width target (m), clipped to the
        Panda's limits. Returns the clipped ``(q, width)`` actually commanded."""
        q = np.asarray(q_target, dtype=np.float64).reshape(-1)
        if q.shape != (N_ARM,):
            raise ConfigError(f"expected 7 joint targets, got {q.shape[0]}")
        if not np.all(np.isfinite(q)) or not math.isfinite(float(gripper_width)):
            raise ConfigError("joint / gripper command contains NaN or infinity")
        q = np.clip(q, self.robot.lower, self.robot.upper)
        width = float(np.clip(float(gripper_width), *self.width_range))
        self.data.ctrl[self._arm_act] = self.to_sim(q)
        self.data.ctrl[self._finger_act] = width / 2
        return q, width

    def command(self) -> tuple[np.ndarray, float]:
        """The current ``(q_target, width_target)`` in real coordinates."""
        q = self.to_real(self.data.ctrl[self._arm_act])
        return q, float(np.sum(self.data.ctrl[self._finger_act]))

    def step(self, n: int = 1) -> None:
        """``n`` physics steps of ``timestep``."""
        if n > 0:
            mujoco.mj_step(self.model, self.data, int(n))
            self._t_goal = self.data.time
            mujoco.mj_forward(self.model, self.data)

    def advance(self, seconds: float) -> None:
        """Integrate physics for ``seconds`` (whole timesteps; fractions carry over, so a
        60 Hz loop of ``advance(1/60)`` keeps exact time on average)."""
        if seconds < 0:
            raise ConfigError(f"cannot advance by a negative time ({seconds} s)")
        self._t_goal += float(seconds)
        n = int(math.floor((self._t_goal - self.data.time) / self.timestep + 0.5))
        if n > 0:
            mujoco.mj_step(self.model, self.data, n)
            # Positions, site poses and contacts consistent with the new state.
            mujoco.mj_forward(self.model, self.data)

    # ----------------------------------------------------------------- observations

    def joint_positions(self) -> np.ndarray:
        """Arm joint angles (rad, real Panda coords)."""
        return self.to_real(self.data.qpos[self._arm_qadr])

    def joint_velocities(self) -> np.ndarray:
        """Arm joint velocities (rad/s)."""
        return self.data.qvel[self._arm_dadr].copy()

    def gripper_width(self) -> float:
        """Opening between the fingers (m)."""
        return float(np.sum(self.data.qpos[self._finger_qadr]))

    def tcp_pose(self) -> np.ndarray:
        """TCP position + quaternion wxyz (in the home orientation's hemisphere), shape (7,)."""
        pos = self.data.site_xpos[self._tcp]
        quat = self.canonical_quat(mat_to_quat(self.data.site_xmat[self._tcp]))
        return np.concatenate([pos, quat])

    def tcp_position(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp].copy()

    def tcp_rotation(self) -> np.ndarray:
        return self.data.site_xmat[self._tcp].reshape(3, 3).copy()

    def cube_pose(self) -> np.ndarray:
        """Cube position + quaternion wxyz, shape (7,)."""
        if not self.has_cube:
            raise ConfigError("this scene has no cube")
        return self.data.qpos[self._cube_qadr:self._cube_qadr + 7].copy()

    def finger_contacts(self) -> tuple[bool, bool]:
        """Whether the left / right finger touches the cube."""
        if not self.has_cube or self.data.ncon == 0:
            return False, False
        geoms = self.data.contact.geom[: self.data.ncon]
        with_cube = geoms[(geoms == self._cube_geom).any(axis=1)]
        if with_cube.size == 0:
            return False, False
        others = with_cube[with_cube != self._cube_geom]
        return bool(np.isin(others, self._left_geoms).any()), bool(
            np.isin(others, self._right_geoms).any()
        )

    def obstacle_contacts(self) -> tuple[bool, bool]:
        """Whether the cube / the robot (any link, the hand or a finger) touches the obstacle."""
        if not self.has_obstacle or self.data.ncon == 0:
            return False, False
        geoms = self.data.contact.geom[: self.data.ncon]
        with_post = geoms[(geoms == self._obstacle_geom).any(axis=1)]
        others = with_post[with_post != self._obstacle_geom]
        cube = self.has_cube and bool((others == self._cube_geom).any())
        return cube, bool(np.isin(others, self._robot_geoms).any())

    # ----------------------------------------------------------------- kinematics

    def fk(self, q_real) -> tuple[np.ndarray, np.ndarray]:
        """TCP ``(position, rotation matrix)`` for arm joints ``q_real``; physics untouched."""
        k = self._kin
        k.qpos[self._arm_qadr] = self.to_sim(q_real)
        mujoco.mj_kinematics(self.model, k)
        return k.site_xpos[self._tcp].copy(), k.site_xmat[self._tcp].reshape(3, 3).copy()

    def tcp_jacobian(self, q_real) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(position, rotation, J)`` of the TCP at ``q_real``; J is 6x7 (linear; angular,
        world frame) with respect to the arm joints. Physics untouched."""
        k = self._kin
        k.qpos[self._arm_qadr] = self.to_sim(q_real)
        mujoco.mj_kinematics(self.model, k)
        mujoco.mj_comPos(self.model, k)
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, k, jacp, jacr, self._tcp)
        jac = np.vstack([jacp[:, self._arm_dadr], jacr[:, self._arm_dadr]])
        return k.site_xpos[self._tcp].copy(), k.site_xmat[self._tcp].reshape(3, 3).copy(), jac

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World ``(position, rotation matrix)`` of a body (e.g. ``panda_link7``)."""
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
        if bid < 0:
            raise ConfigError(f"no body named {name!r}")
        return self.data.xpos[bid].copy(), self.data.xmat[bid].reshape(3, 3).copy()

    # ----------------------------------------------------------------- rendering

    def renderer(self, size: tuple[int, int] | int | None = None) -> OffscreenRenderer:
        """The (cached) renderer for one image size; raises RendererError if none can start."""
        hw = self.config.image_hw if size is None else image_hw(size)
        r = self._renderers.get(hw)
        if r is None:
            r = OffscreenRenderer(self.model, *hw)
            self._renderers[hw] = r
        return r

    def render(self, camera: str = "front",
               size: tuple[int, int] | int | None = None) -> np.ndarray:
        """An RGB image (H x W x 3, uint8) from a named camera."""
        if camera not in self.camera_names:
            raise ConfigError(
                f"unknown camera {camera!r}; choose one of: {', '.join(self.camera_names)}"
            )
        return self.renderer(size).render(self.data, camera)

    def close(self) -> None:
        """Free the renderers (GL contexts)."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
