"""Small gymnasium environments defined by the tests, for `fastdp eval --env test module:factory`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: every env made here, so a test can look at what it was driven with
MADE: list = []


class JointTargetEnv(gym.Env):
    """A 7-joint arm that moves to the joint targets it is given (first 7 action values), with a
    gripper (the 8th); dict observations, optionally with cameras whose colour follows joint 1.
    Succeeds (info["is_success"], gymnasium-robotics' name) when every joint is within
    `tolerance` of `goal`; or, with succeed_at, at that step whatever the actions."""

    def __init__(self, cameras=("img_front", "img_wrist"), image_shape=(24, 32), goal=0.5, tolerance=0.05,
                 succeed_at=None, channel_first=False, float_images=False, array_obs=False, limit=50):
        self.cameras, self.image_shape = tuple(cameras), tuple(image_shape)
        self.goal, self.tolerance, self.succeed_at, self.limit = goal, tolerance, succeed_at, limit
        self.channel_first, self.float_images, self.array_obs = channel_first, float_images, array_obs
        self.action_space = spaces.Box(-3.0, 3.0, (8,), np.float32)
        self.observation_space = spaces.Box(-3.0, 3.0, (7,), np.float32) if array_obs else spaces.Dict(
            {"joint_pos": spaces.Box(-3.0, 3.0, (7,), np.float32), "gripper": spaces.Box(0.0, 0.08, (1,), np.float32)})
        self.actions: list[np.ndarray] = []
        self.seeds: list[int | None] = []
        MADE.append(self)

    def _obs(self):
        if self.array_obs:
            return self.q.astype(np.float32)
        obs = {"joint_pos": self.q.astype(np.float32), "gripper": np.array([self.width], np.float32)}
        for cam in self.cameras:
            img = np.zeros(self.image_shape + (3,), np.uint8)
            img[..., 0] = np.uint8(np.clip(128 + 100 * self.q[0], 0, 255))
            if self.float_images:
                img = img.astype(np.float32) / 255.0
            obs[cam] = np.transpose(img, (2, 0, 1)) if self.channel_first else img
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self.q = self.np_random.uniform(-0.2, 0.2, 7)
        self.width, self.t = 0.04, 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        action = np.asarray(action, np.float64)
        self.actions.append(action)
        self.q = self.q + np.clip(action[:7] - self.q, -0.2, 0.2)
        self.width = float(np.clip(action[7], 0.0, 0.08)) if len(action) > 7 else self.width
        self.t += 1
        error = float(np.abs(self.q - self.goal).max())
        success = error < self.tolerance if self.succeed_at is None else self.t >= self.succeed_at
        return self._obs(), -error, False, self.t >= self.limit, {"is_success": success, "goal_error": error}


def make_joint_target_env(**kwargs):
    return JointTargetEnv(**kwargs)
