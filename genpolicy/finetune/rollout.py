"""Chunk-level rollouts from a set of envs: one transition per executed chunk.

Rewards are summed over the Ta executed steps (gamma applies per chunk). Terminated and truncated stay apart; an
episode that is truncated (time limit) is bootstrapped from the value of its real final observation, which is kept
before the env resets. Algorithms add what they need per transition in `extras` (chains, noises, (eps, t) pairs).

Shapes: T chunk steps, N envs, To obs steps, H horizon, Da action dim, Dc conditioning dim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from genpolicy.envs.registry import make_env
from genpolicy.envs.wrappers import ChunkedEnv


@dataclass
class Rollout:
    """T x N transitions. Observations are raw windows; actions are normalised chunks in [-1, 1]."""

    obs: dict[str, torch.Tensor]  # {state: (T, N, To, Ds), ...}
    actions: torch.Tensor  # (T, N, H, Da)
    rewards: torch.Tensor  # (T, N) summed over the executed steps, after offset and scaling
    raw_rewards: torch.Tensor  # (T, N) as the env gave them
    terminated: torch.Tensor  # (T, N) bool
    truncated: torch.Tensor  # (T, N) bool
    values: torch.Tensor  # (T, N) V(obs_t)
    final_values: torch.Tensor  # (T, N) V(real final obs) where truncated, else 0
    next_value: torch.Tensor  # (N,) V(obs after the last step), to bootstrap across the iteration boundary
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # {name: (T, N, ...)}
    episodes: list[dict[str, Any]] = field(default_factory=list)  # finished episodes: success, return, length
    env_steps: int = 0  # environment steps (chunk size included)
    seconds: dict[str, float] = field(default_factory=dict)  # time in env stepping and in inference


class VecChunkEnv:
    """N chunked envs with auto-reset. Episode seeds are seed, seed+1, ... in order of starting."""

    def __init__(self, task: str, n_envs: int, n_obs_steps: int, n_action_steps: int, seed: int,
                 max_episode_steps: int = 0) -> None:
        self.envs = [ChunkedEnv(make_env(task, seed=seed + i, max_episode_steps=max_episode_steps), n_obs_steps,
                                n_action_steps) for i in range(n_envs)]
        self.spec = self.envs[0].spec
        self.next_seed = seed
        self.obs = [self._reset(e) for e in self.envs]
        self.ep_stats = [{"return": 0.0, "length": 0, "success": False} for _ in self.envs]

    def _reset(self, env: ChunkedEnv) -> dict[str, np.ndarray]:
        self.next_seed += 1
        return env.reset(seed=self.next_seed - 1)

    def batch_obs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(np.stack([o[k] for o in self.obs]), device=device) for k in self.obs[0]}

    def close(self) -> None:
        for e in self.envs:
            e.close()


def _to_device(obs: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.stack([o[k] for o in obs]), device=device) for k in obs[0]}


class RewardScaler:
    """Divides rewards by the running std of the discounted return (as DPPO / ReinFlow do)."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.ret: Optional[np.ndarray] = None
        self.count, self.mean, self.var = 1e-4, 0.0, 1.0

    def __call__(self, r: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.ret = r if self.ret is None else self.ret * self.gamma + r
        self._update(self.ret)
        self.ret = np.where(done, 0.0, self.ret)
        return r / np.sqrt(self.var + 1e-8)

    def _update(self, x: np.ndarray) -> None:
        b_mean, b_var, n = float(np.mean(x)), float(np.var(x)), x.shape[0]
        delta, tot = b_mean - self.mean, self.count + n
        self.mean += delta * n / tot
        self.var = (self.var * self.count + b_var * n + delta**2 * self.count * n / tot) / tot
        self.count = tot

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "var": self.var,
                "ret": None if self.ret is None else self.ret.tolist()}

    def load(self, st: dict[str, Any]) -> None:
        self.count, self.mean, self.var = st["count"], st["mean"], st["var"]
        self.ret = None if st["ret"] is None else np.asarray(st["ret"])


@dataclass
class ChunkStep:
    """One chunk executed in every env (auto-reset done)."""

    next_obs: list[dict[str, np.ndarray]]  # per env: the window after the chunk (the real final one if it ended)
    rewards: np.ndarray  # (N,) summed over executed steps (or 1/0 for reward="success")
    raw_rewards: np.ndarray  # (N,) the env's own
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    env_steps: int
    episodes: list[dict[str, Any]]  # episodes that ended in this step


def step_chunks(venv: VecChunkEnv, chunks: np.ndarray, reward: str = "env") -> ChunkStep:
    """Execute chunks (N, H, Da) in env units; finished episodes are logged and their envs reset."""
    n = len(venv.envs)
    rewards, raw, term, trunc = np.zeros(n), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
    next_obs, episodes, env_steps = [], [], 0
    for i, env in enumerate(venv.envs):
        res = env.step(chunks[i])
        env_steps += res.n_steps
        raw[i] = res.reward
        rewards[i] = float(res.success) if reward == "success" else res.reward
        term[i], trunc[i] = res.terminated, res.truncated
        st = venv.ep_stats[i]
        st["return"] += res.reward
        st["length"] += res.n_steps
        st["success"] = st["success"] or res.success
        next_obs.append(res.obs)
        if res.terminated or res.truncated:
            episodes.append(dict(st))
            venv.ep_stats[i] = {"return": 0.0, "length": 0, "success": False}
            venv.obs[i] = venv._reset(env)
        else:
            venv.obs[i] = res.obs
    return ChunkStep(next_obs, rewards, raw, term, trunc, env_steps, episodes)


ActFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # obs -> {"actions": (N,H,Da), extras...}
ValueFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # obs -> (N,)


@torch.no_grad()
def collect(venv: VecChunkEnv, act: ActFn, value: ValueFn, unnormalize: Callable[[torch.Tensor], torch.Tensor],
            n_steps: int, device: torch.device, reward_offset: float = 0.0,
            scaler: Optional[RewardScaler] = None, reward: str = "env") -> Rollout:
    """Run n_steps chunks in every env. `act` returns normalised chunks plus per-transition extras.

    reward="success" replaces the env reward by 1 for the chunk in which the task succeeds (0 otherwise)."""
    n = len(venv.envs)
    obs_l, act_l, rew_l, term_l, trunc_l, val_l, fval_l = [], [], [], [], [], [], []
    extras: dict[str, list[torch.Tensor]] = {}
    episodes: list[dict[str, Any]] = []
    env_steps, t_env, t_inf = 0, 0.0, 0.0
    for _ in range(n_steps):
        obs = venv.batch_obs(device)
        t0 = time.perf_counter()
        out = act(obs)
        v = value(obs)
        t_inf += time.perf_counter() - t0
        chunks = unnormalize(out["actions"].clamp(-1.0, 1.0)).cpu().numpy()  # (N, H, Da) env units
        t0 = time.perf_counter()
        res = step_chunks(venv, chunks, reward)
        t_env += time.perf_counter() - t0
        env_steps += res.env_steps
        episodes += res.episodes
        rewards, term, trunc = res.rewards, res.terminated, res.truncated
        finals = {i: res.next_obs[i] for i in range(n) if trunc[i] and not term[i]}  # real final obs, to bootstrap
        fv = torch.zeros(n, device=device)
        if finals:
            idx = sorted(finals)
            fv[idx] = value(_to_device([finals[i] for i in idx], device))
        obs_l.append(obs)
        act_l.append(out["actions"])
        rew_l.append(rewards)
        term_l.append(term)
        trunc_l.append(trunc)
        val_l.append(v)
        fval_l.append(fv)
        for k, x in out.items():
            if k != "actions":
                extras.setdefault(k, []).append(x)
    raw = np.stack(rew_l)  # (T, N)
    shaped = raw + reward_offset
    if scaler is not None:
        shaped = np.stack([scaler(shaped[t], term_l[t] | trunc_l[t]) for t in range(n_steps)])
    t0 = time.perf_counter()
    next_value = value(venv.batch_obs(device))
    t_inf += time.perf_counter() - t0
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return Rollout(
        obs={k: torch.stack([o[k] for o in obs_l]) for k in obs_l[0]},
        actions=torch.stack(act_l), rewards=f32(shaped), raw_rewards=f32(raw),
        terminated=torch.as_tensor(np.stack(term_l), device=device), truncated=torch.as_tensor(np.stack(trunc_l), device=device),
        values=torch.stack(val_l), final_values=torch.stack(fval_l), next_value=next_value,
        extras={k: torch.stack(v) for k, v in extras.items()}, episodes=episodes, env_steps=env_steps,
        seconds={"env": t_env, "inference": t_inf})
