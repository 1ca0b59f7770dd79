"""IsaacLab tasks (`isaaclab/<Isaac-Task-Id>`) behind genpolicy's interfaces. UNTESTED WITH ISAACLAB ITSELF.

IsaacLab needs isaacsim from NVIDIA's index and an RTX GPU, so it cannot be installed on the development machine. This
adapter is written against IsaacLab's documented API and exercised only with `isaaclab_standin.py`, a batched env
built from real MuJoCo simulators that exposes the same interface (tests/test_isaaclab.py).

The API relied on (IsaacLab 2.x/3.0 `ManagerBasedRLEnv`; `DirectRLEnv` has the same step/reset signature):
- `env.reset(seed=None, env_ids=None, options=None) -> (obs_dict, extras)`; `obs_dict["policy"]` is (N, D) float on
  `env.device`; a seed re-seeds the whole simulation (there are no per-episode seeds).
- `env.step(actions (N, Da) tensor) -> (obs_dict, reward (N,), terminated (N,) bool, truncated (N,) bool, extras)`.
  Finished sub-envs are reset INSIDE step, before observations are computed, so the returned obs of a done env is
  already its next episode's first obs; the final obs is not returned (`extras` carries logs, not a final obs).
  Truncated is the time limit (`termination_manager.time_outs`).
- `env.num_envs`, `env.device`, `env.single_observation_space["policy"]` and `env.single_action_space` (Boxes,
  unbounded by default), `env.max_episode_length`
  (steps), `env.step_dt`, `env.close()`.
- Creating a task: start the app first (`isaaclab.app.AppLauncher(headless=True)`), import `isaaclab_tasks` (it
  registers the `Isaac-*` gym ids), `cfg = isaaclab_tasks.utils.parse_env_cfg(task, device=..., num_envs=...)`,
  `gym.make(task, cfg=cfg)`.
Sources: isaac-sim/IsaacLab `source/isaaclab/isaaclab/envs/manager_based_rl_env.py` (step: "reset envs that
terminated/timed-out ... note: done after reset to get the correct observations for reset envs"),
`source/isaaclab_tasks/isaaclab_tasks/utils/parse_cfg.py` (`parse_env_cfg`), the API page
https://isaac-sim.github.io/IsaacLab/main/source/api/lab/isaaclab.envs.html, and rsl_rl's PPO `process_env_step`,
which bootstraps time-outs with the value of the pre-step observation (`values * infos["time_outs"]`).

How genpolicy handles the missing final observation: the batched rollout (finetune/torch_rollout.py) bootstraps a
truncated chunk from V(the window the chunk started from), as rsl_rl does, never from the post-reset observation
(which belongs to another episode). Off-policy fine-tuning, which stores next observations, refuses these tasks.

Evaluation (`make_env`, one env at a time) uses `IsaacLabSingleEnv` over a 1-env instance. Isaac Sim runs one
simulation per process, so with real IsaacLab that second instance next to the training env will not work; evaluating
on the training env itself is not implemented yet.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from genpolicy.envs.base import EnvSpec
from genpolicy.errors import ConfigError

OBS_KEY = "policy"  # IsaacLab's observation group for the actor


def make_isaaclab_env(task_id: str, num_envs: int, seed: int, device: str | torch.device,
                      max_episode_steps: int = 0) -> Any:
    """Start Isaac Sim headless and build `num_envs` sub-envs of an `Isaac-*` task (untested here, see above)."""
    try:
        from isaaclab.app import AppLauncher
    except ImportError as e:
        raise ConfigError(f"task 'isaaclab/{task_id}' needs IsaacLab (isaacsim + an RTX GPU), which is not installed; "
                          "the stand-in 'isaaclab_standin/hopper-v5' exercises the same adapter on MuJoCo") from e
    AppLauncher(headless=True)  # must exist before any other isaaclab import
    import gymnasium as gym
    import isaaclab_tasks  # noqa: F401  (registers the Isaac-* gym ids)
    from isaaclab_tasks.utils import parse_env_cfg

    cfg = parse_env_cfg(task_id, device=str(device), num_envs=num_envs)
    cfg.seed = seed
    if max_episode_steps:
        # IsaacLab: max_episode_length = ceil(episode_length_s / step_dt); half a step below n keeps rounding off n + 1
        cfg.episode_length_s = (max_episode_steps - 0.5) * cfg.sim.dt * cfg.decimation
    return gym.make(task_id, cfg=cfg).unwrapped


def spec_from_env(env: Any, name: str, success_definition: str = "none: compare episode returns") -> EnvSpec:
    """The EnvSpec of a batched IsaacLab-style env (action bounds: the space's, or [-1, 1] where unbounded)."""
    state_dim = int(env.single_observation_space[OBS_KEY].shape[-1])  # a Dict of groups; "policy" is concatenated
    space = env.single_action_space
    low = np.where(np.isfinite(space.low), space.low, -1.0).astype(np.float32)
    high = np.where(np.isfinite(space.high), space.high, 1.0).astype(np.float32)
    return EnvSpec(name=name, state_dim=state_dim, action_dim=int(space.shape[0]), action_low=low, action_high=high,
                   max_episode_steps=int(env.max_episode_length), fps=float(1.0 / env.step_dt),
                   success_definition=success_definition)


def step_success(extras: dict[str, Any], n: int, device: torch.device) -> torch.Tensor:
    """(N,) bool: extras["success"] when the task reports one (IsaacLab has no standard key), else all False."""
    s = extras.get("success")
    if s is None:
        return torch.zeros(n, dtype=torch.bool, device=device)
    return torch.as_tensor(s, device=device).bool().reshape(n)


class IsaacLabSingleEnv:
    """The genpolicy `Env` protocol (numpy, one env) over a batched env with num_envs=1: for evaluation and demos.

    `reset(seed)` re-seeds the simulation; the auto-reset inside step is harmless because the caller stops at the
    first terminated/truncated step and resets explicitly."""

    def __init__(self, env: Any, name: str) -> None:
        if env.num_envs != 1:
            raise ValueError(f"IsaacLabSingleEnv needs num_envs=1, got {env.num_envs}")
        self.env = env
        self.device = torch.device(env.device)
        self.spec = spec_from_env(env, name)

    def reset(self, seed: Optional[int] = None) -> dict[str, np.ndarray]:
        obs, _ = self.env.reset(seed=seed)
        return {"state": obs[OBS_KEY][0].detach().cpu().numpy().astype(np.float32)}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.device)[None]  # (1, Da)
        obs, r, term, trunc, extras = self.env.step(a)
        success = bool(step_success(extras, 1, self.device)[0])
        return ({"state": obs[OBS_KEY][0].detach().cpu().numpy().astype(np.float32)}, float(r[0]), bool(term[0]),
                bool(trunc[0]), {"success": success})

    def render(self) -> np.ndarray:
        frame = self.env.render()
        return np.zeros((64, 64, 3), np.uint8) if frame is None else np.asarray(frame)

    def close(self) -> None:
        self.env.close()
