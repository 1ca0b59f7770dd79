"""A 2-D point-mass task with deliberately bimodal demonstrations.

The agent starts below a round obstacle and must reach a goal above it. The expert goes around the left or the
right side with equal probability, so a good generative policy reproduces both ways while a mean-squared-error
regressor averages them and drives into the obstacle.

`toy/bimodal-right` is the RL variant: only the right-hand way counts. Reaching the goal after passing left of the
obstacle ends the episode without reward, so a BC policy trained on the bimodal demonstrations starts at about 50%.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genpolicy.envs.base import EnvSpec

START = np.array([0.0, -1.0])
GOAL = np.array([0.0, 1.0])
OBSTACLE_R = 0.35
SPEED = 0.08  # distance per step at |action| = 1
GOAL_TOL = 0.15


class ToyEnv:
    """State: agent position (2,). Action: velocity in [-1, 1]^2. Success: within GOAL_TOL of the goal."""

    def __init__(self, seed: int = 0, images: bool = False, image_size: int = 64, max_episode_steps: int = 0,
                 render_size: int = 128, rewarded_side: bool = False) -> None:
        self.rewarded_side = rewarded_side
        self.spec = EnvSpec(
            name="toy/bimodal-right" if rewarded_side else "toy/bimodal", state_dim=2, action_dim=2, action_low=-np.ones(2, np.float32),
            action_high=np.ones(2, np.float32), max_episode_steps=max_episode_steps or 80, fps=10.0,
            success_definition=(f"agent within {GOAL_TOL} of the goal having passed right of the obstacle" if rewarded_side
                                else f"agent within {GOAL_TOL} of the goal at any step"),
            cameras=("top",) if images else ())
        self.images, self.image_size, self.render_size = images, image_size, render_size
        self.rng = np.random.default_rng(seed)
        self.pos = START.copy()
        self.t = 0
        self.went_right = False
        self.skip_images = False  # envs.base.LazyImages: the chunk runner skips frames no window can contain

    def image_obs(self) -> dict[str, np.ndarray]:
        return {"image.top": self._draw(self.image_size).transpose(2, 0, 1).copy()} if self.images else {}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self.pos.astype(np.float32)}
        if self.images and not self.skip_images:
            obs.update(self.image_obs())
        return obs

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        # A fixed start: both ways around the obstacle are equally good from the very same state, so only a
        # multimodal policy can reproduce the demonstrations (a regressor cannot split them by start position).
        self.pos = START.copy()
        self.t = 0
        self.went_right = False
        return self._obs()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.pos = np.clip(self.pos + SPEED * a, -1.5, 1.5)
        r = np.linalg.norm(self.pos)
        if r < OBSTACLE_R:  # solid obstacle: pushed back onto its rim
            self.pos = self.pos / max(r, 1e-9) * OBSTACLE_R
        self.t += 1
        if abs(self.pos[1]) < 0.2:  # beside the obstacle: which way round is it going?
            self.went_right = bool(self.pos[0] > 0)
        reached = bool(np.linalg.norm(self.pos - GOAL) < GOAL_TOL)
        success = reached and (self.went_right or not self.rewarded_side)
        truncated = self.t >= self.spec.max_episode_steps and not reached
        return self._obs(), float(success), reached, truncated, {"success": success}

    def _draw(self, size: int) -> np.ndarray:
        """Top-down picture (size, size, 3) uint8 of the 3x3 world centred on the origin."""
        ys, xs = np.mgrid[0:size, 0:size]
        wx = (xs + 0.5) / size * 3.0 - 1.5
        wy = 1.5 - (ys + 0.5) / size * 3.0
        img = np.full((size, size, 3), 255, np.uint8)
        img[wx ** 2 + wy ** 2 < OBSTACLE_R ** 2] = (120, 120, 120)
        img[(wx - GOAL[0]) ** 2 + (wy - GOAL[1]) ** 2 < GOAL_TOL ** 2] = (40, 180, 60)
        img[(wx - self.pos[0]) ** 2 + (wy - self.pos[1]) ** 2 < 0.06 ** 2] = (220, 40, 40)
        return img

    def render(self) -> np.ndarray:
        return self._draw(self.render_size)

    def close(self) -> None:
        pass


class ToyExpert:
    """Goes around the obstacle on a side chosen at random per episode (the two modes)."""

    def __init__(self, noise: float = 0.0, detour_prob: float = 0.0, seed: int = 0) -> None:
        self.noise, self.detour_prob = noise, detour_prob
        self.rng = np.random.default_rng(seed)
        self.waypoints: list[np.ndarray] = []

    def reset(self) -> None:
        side = 1.0 if self.rng.random() < 0.5 else -1.0
        self.waypoints = [np.array([side * 0.6, -0.4]), np.array([side * 0.6, 0.4]), GOAL.copy()]
        if self.rng.random() < self.detour_prob:  # a pointless excursion before the real path
            self.waypoints.insert(0, np.array([self.rng.uniform(-1.2, 1.2), self.rng.uniform(-1.4, -0.8)]))

    def act(self, env: ToyEnv, obs: dict[str, np.ndarray]) -> np.ndarray:
        pos = obs["state"].astype(np.float64)
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - pos) < 0.1:
            self.waypoints.pop(0)
        delta = self.waypoints[0] - pos
        dist = np.linalg.norm(delta)
        a = delta / max(dist, 1e-9) * min(1.0, dist / SPEED)
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, size=2)
        return np.clip(a, -1.0, 1.0).astype(np.float32)
