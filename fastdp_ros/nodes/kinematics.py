"""Forward and inverse kinematics of a Franka arm (FR3 and Panda share them), in plain numpy.

The nodes need the tool pose of joint positions in three places: Cartesian commands
(geometry_msgs/PoseStamped for impedance controllers), a policy observing `tcp_pose`, and the
workspace box of the safety filter. The simulation node needs the inverse to follow pose
commands. MuJoCo's model is the simulator's, not the real robot's, so this module is the one
kinematic model the nodes share; `test_nodes_logic` checks it against the simulation.

Kinematics: Franka's published modified Denavit-Hartenberg parameters (Craig's convention:
rotate alpha about x, translate a along x, rotate theta about z, translate d along z), the
flange 0.107 m along link 7's z axis, the hand rotated -pi/4 about z at the flange, and the
tool centre point `tcp_offset` metres along the hand's z axis (0.1034 m for the Franka Hand's
fingertip centre in franka_description; the simulation's longer fingers put it at 0.14 m).
"""

from __future__ import annotations

import math

import numpy as np

from fastdp_ros.errors import ConfigError

#: (a, d, alpha) per joint, metres and radians (Franka's modified DH table)
FRANKA_DH = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
FLANGE_Z = 0.107
HAND_YAW = -math.pi / 4
#: franka_description's <arm>_hand_tcp: the Franka Hand's fingertip centre, along the hand's z axis
FRANKA_HAND_TCP_OFFSET = 0.1034


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def tcp_transform(q, tcp_offset: float = FRANKA_HAND_TCP_OFFSET) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), rotation (3, 3)) of the tool centre point in the base (link0) frame."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    if q.shape != (7,):
        raise ConfigError(f"Franka kinematics needs 7 joint positions, got {q.shape[0]}")
    rot, pos = np.eye(3), np.zeros(3)
    for (a, d, alpha), theta in zip(FRANKA_DH, q):
        rot = rot @ _rot_x(alpha)
        pos = pos + rot @ np.array([a, 0.0, 0.0])
        rot = rot @ _rot_z(theta)
        pos = pos + rot @ np.array([0.0, 0.0, d])
    pos = pos + rot @ np.array([0.0, 0.0, FLANGE_Z])
    rot = rot @ _rot_z(HAND_YAW)
    pos = pos + rot @ np.array([0.0, 0.0, float(tcp_offset)])
    return pos, rot


def mat_to_quat(rot) -> np.ndarray:
    """3x3 rotation -> unit quaternion (w, x, y, z), w >= 0 (Shepperd's method: no division by a small number)."""
    m = np.asarray(rot, dtype=np.float64).reshape(3, 3)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quat_to_mat(quat) -> np.ndarray:
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def canonical_quat(quat, reference) -> np.ndarray:
    """`quat` or `-quat`, whichever lies in the hemisphere of `reference` (both wxyz): a
    downward-pointing gripper's quaternion then stays continuous, as the datasets record it."""
    q = np.asarray(quat, dtype=np.float64)
    return -q if float(np.dot(q, reference)) < 0.0 else q


def tcp_pose(q, tcp_offset: float = FRANKA_HAND_TCP_OFFSET, reference_quat=None) -> np.ndarray:
    """(7,) position + quaternion wxyz of the tool centre point; with `reference_quat` the
    quaternion's sign follows that hemisphere (see canonical_quat)."""
    pos, rot = tcp_transform(q, tcp_offset)
    quat = mat_to_quat(rot)
    if reference_quat is not None:
        quat = canonical_quat(quat, reference_quat)
    return np.concatenate([pos, quat])


def rotation_error(rot_target, rot) -> np.ndarray:
    """Rotation vector (axis * angle, base frame) that turns `rot` into `rot_target`."""
    r = np.asarray(rot_target) @ np.asarray(rot).T
    angle = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0)))
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    n = np.linalg.norm(axis)
    if angle < 1e-9:
        return 0.5 * axis  # small angle: the skew part is the rotation vector
    if n < 1e-9:  # angle ~ pi: axis from the symmetric part
        sym = (r + np.eye(3)) / 2.0
        axis = np.sqrt(np.clip(np.diag(sym), 0.0, None))
        i = int(np.argmax(axis))
        axis = sym[:, i] / max(axis[i], 1e-12)
        return angle * axis / np.linalg.norm(axis)
    return angle * axis / n


def tcp_jacobian(q, tcp_offset: float = FRANKA_HAND_TCP_OFFSET, eps: float = 1e-6) -> np.ndarray:
    """6x7 Jacobian (linear; angular, base frame) by central differences of `tcp_transform`."""
    q = np.asarray(q, dtype=np.float64).reshape(7)
    jac = np.zeros((6, 7))
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        p1, r1 = tcp_transform(q + dq, tcp_offset)
        p0, r0 = tcp_transform(q - dq, tcp_offset)
        jac[:3, i] = (p1 - p0) / (2 * eps)
        jac[3:, i] = rotation_error(r1, r0) / (2 * eps)
    return jac


def solve_ik(position, quat_wxyz, q_start, lower, upper, tcp_offset: float = FRANKA_HAND_TCP_OFFSET,
             iterations: int = 100, damping: float = 1e-2, tolerance: float = 1e-5) -> tuple[np.ndarray, float]:
    """Joint positions whose tool pose reaches (position, quat) starting from `q_start`, by damped
    least squares within the joint limits: a joint at a limit that the step would push further
    is taken out of that step, so the others make up for it instead of the step being clipped
    away. Returns (q, residual): the residual is the norm of the remaining [position error (m),
    rotation error (rad)]; callers decide whether the pose was reachable."""
    target_rot = quat_to_mat(quat_wxyz)
    target_pos = np.asarray(position, dtype=np.float64).reshape(3)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    q = np.clip(np.asarray(q_start, dtype=np.float64).reshape(7), lower, upper)
    residual = math.inf
    for _ in range(iterations):
        pos, rot = tcp_transform(q, tcp_offset)
        err = np.concatenate([target_pos - pos, rotation_error(target_rot, rot)])
        residual = float(np.linalg.norm(err))
        if residual < tolerance:
            break
        jac = tcp_jacobian(q, tcp_offset)
        free = np.ones(7, dtype=bool)
        for _ in range(7):
            j = jac[:, free]
            step = np.zeros(7)
            step[free] = j.T @ np.linalg.solve(j @ j.T + damping ** 2 * np.eye(6), err)
            blocked = free & (((q >= upper) & (step > 0)) | ((q <= lower) & (step < 0)))
            if not blocked.any():
                break
            free &= ~blocked
        q = np.clip(q + step, lower, upper)
    return q, residual
