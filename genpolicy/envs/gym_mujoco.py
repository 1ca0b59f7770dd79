"""gymnasium MuJoCo locomotion (Hopper, Walker2d, HalfCheetah, Ant; v5) behind the genpolicy Env protocol.

Observations are the env's state vector as `state`; actions are in [-1, 1] and scaled to the env's box. There is no
success notion in locomotion: `success` is always False and the episode return is the metric.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from genpolicy.envs.base import EnvSpec

GYM_TASKS = {"hopper-v5": "Hopper-v5", "walker2d-v5": "Walker2d-v5", "halfcheetah-v5": "HalfCheetah-v5",
             "ant-v5": "Ant-v5"}


class GymMujocoEnv:
    def __init__(self, task: str, seed: int = 0, images: bool = False, max_episode_steps: Optional[int] = None,
                 render_size: int = 256) -> None:
        import gymnasium as gym

        if images:
            raise ValueError("gym locomotion tasks here are state-only")
        self.task = task
        self._env = gym.make(GYM_TASKS[task], render_mode="rgb_array", width=render_size, height=render_size,
                             max_episode_steps=max_episode_steps or None)
        space = self._env.action_space
        self._low, self._high = space.low.astype(np.float64), space.high.astype(np.float64)
        obs_dim = int(np.prod(self._env.observation_space.shape))
        self.spec = EnvSpec(name=f"gym/{task}", state_dim=obs_dim, action_dim=int(space.shape[0]),
                            action_low=-np.ones(space.shape[0], np.float32), action_high=np.ones(space.shape[0], np.float32),
                            max_episode_steps=int(self._env.spec.max_episode_steps or 1000), fps=float(self._env.metadata.get("render_fps", 50)),
                            success_definition="none (locomotion): compare episode returns")
        self._seed = seed

    def reset(self, seed: Optional[int] = None) -> dict[str, np.ndarray]:
        obs, _ = self._env.reset(seed=self._seed if seed is None else seed)
        self._seed += 1
        return {"state": obs.astype(np.float32)}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        obs, r, term, trunc, info = self._env.step(a)
        return {"state": obs.astype(np.float32)}, float(r), bool(term), bool(trunc), {"success": False}

    def render(self) -> np.ndarray:
        frame = np.asarray(self._env.render())
        if not getattr(self, "_gl_tracked", False):  # gymnasium made its GL context now: close it before EGL exits
            from genpolicy.envs.mjrender import track

            track(self)
            self._gl_tracked = True
        return frame

    def close(self) -> None:
        self._env.close()
