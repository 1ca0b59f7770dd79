"""A stand-in for an IsaacLab task built from real simulators: N gymnasium MuJoCo envs stepped together.

It exposes IsaacLab's batched API exactly as `isaaclab.py` relies on it (torch tensors on `device`, `reset(seed=...)
-> (obs_dict, extras)`, `step(actions) -> (obs_dict, reward, terminated, truncated, extras)` with finished sub-envs
reset inside step and no final observation returned), so the adapter and the batched rollout can be tested here. It is
NOT IsaacLab: the physics is MuJoCo's, stepped sequentially on the CPU. It is only used when asked for by name
(`isaaclab_standin/hopper-v5`), never in place of a missing IsaacLab.

Seeding mirrors IsaacLab's one seed per simulation: `reset(seed=s)` seeds sub-env i with s + i; later auto-resets
continue each sub-env's own random stream (gymnasium `reset()` without a seed).
Shapes: N sub-envs, D obs dim, Da action dim.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from genpolicy.envs.gym_mujoco import GYM_TASKS


class StandInEnv:
    """N gymnasium MuJoCo envs behind the IsaacLab `ManagerBasedRLEnv` step/reset signature."""

    def __init__(self, task: str, num_envs: int, seed: int = 0, device: str | torch.device = "cpu",
                 max_episode_steps: int = 0) -> None:
        import gymnasium as gym

        if task not in GYM_TASKS:
            raise ValueError(f"stand-in task '{task}' unknown; known: {', '.join(GYM_TASKS)}")
        self._envs = [gym.make(GYM_TASKS[task], max_episode_steps=max_episode_steps or None) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.max_episode_length = int(self._envs[0].spec.max_episode_steps)
        self.step_dt = float(self._envs[0].unwrapped.dt)
        box = self._envs[0].action_space
        self.single_action_space = gym.spaces.Box(box.low.astype(np.float32), box.high.astype(np.float32))
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        dim = int(np.prod(self._envs[0].observation_space.shape))
        self.single_observation_space = gym.spaces.Dict({"policy": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)})
        self.extras: dict[str, Any] = {}
        self._seed = seed

    def _obs(self, rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"policy": torch.as_tensor(np.stack(rows), dtype=torch.float32, device=self.device)}  # (N, D)

    def reset(self, seed: Optional[int] = None, env_ids: Any = None,
              options: Optional[dict] = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Reset every sub-env (IsaacLab's env_ids subset is not needed by genpolicy and not offered)."""
        if env_ids is not None:
            raise NotImplementedError("the stand-in resets all sub-envs at once")
        if seed is not None:
            self._seed = seed
        rows = [env.reset(seed=self._seed + i)[0] for i, env in enumerate(self._envs)]
        return self._obs(rows), {}

    def step(self, action: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                 torch.Tensor, dict[str, Any]]:
        """Actions (N, Da) tensor; done sub-envs are reset before the observation is taken, as IsaacLab does."""
        a = action.detach().to("cpu", torch.float64).numpy()  # (N, Da): the simulator's native side is numpy
        rows, rew, term, trunc = [], np.zeros(self.num_envs), np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        for i, env in enumerate(self._envs):
            obs, r, te, tr, _ = env.step(a[i])
            rew[i], term[i], trunc[i] = r, te, tr
            if te or tr:
                obs, _ = env.reset()
            rows.append(obs)
        t = lambda x, dt: torch.as_tensor(x, dtype=dt, device=self.device)  # noqa: E731
        self.extras = {"time_outs": t(trunc, torch.bool), "log": {}}
        return self._obs(rows), t(rew, torch.float32), t(term, torch.bool), t(trunc, torch.bool), self.extras

    def render(self) -> Optional[np.ndarray]:
        return None

    def close(self) -> None:
        for env in self._envs:
            env.close()
