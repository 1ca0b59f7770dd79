"""Chunk-level rollouts from a set of envs: one transition per executed chunk.

Rewards are summed over the Ta executed steps (gamma applies per chunk). Terminated and truncated stay apart; an
episode that is truncated (time limit) is bootstrapped from the value of its real final observation, which is kept
before the env resets. Algorithms add what they need per transition in `extras` (chains, noises, (eps, t) pairs).

Which envs run the chunks is one small protocol, `ChunkEnvs`: `VecChunkEnv` (gym-style envs, in this process or in
Ray actors via finetune/ray_rollout.py) and `TorchVecChunkEnv` (finetune/torch_rollout.py: one batched torch-native
simulator such as IsaacLab, observations and actions never leaving its device).

Shapes: T chunk steps, N envs, To obs steps, H horizon, Da action dim, Dc conditioning dim.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import numpy as np
import torch

from genpolicy.envs.base import EnvSpec
from genpolicy.envs.wrappers import EnvSlice

if TYPE_CHECKING:
    from genpolicy.finetune.ray_rollout import RaySlices


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


class ChunkEnvs(Protocol):
    """N chunked envs with auto-reset, whatever runs them: `VecChunkEnv` (envs in this process or, with a Ray
    runner, in Ray actors) or `TorchVecChunkEnv` (one batched torch-native simulator such as IsaacLab).

    `collect()` and the fine-tuning loops use only this. Chunks go in as tensors in env units; everything that comes
    back is a tensor (numpy-backed envs convert at their edge, torch-native ones never leave their device)."""

    spec: EnvSpec
    n_envs: int
    next_seed: int  # where the episode seeds continue after a restart (saved with checkpoints)
    final_obs: bool  # True: step() returns the real final window of episodes that ended (needed to bootstrap)

    def batch_obs(self, device: torch.device) -> dict[str, torch.Tensor]: ...  # {state: (N, To, Ds)}

    def step(self, chunks: torch.Tensor, reward: str = "env") -> ChunkStep: ...  # chunks (N, H, Da) env units

    def restart(self, next_seed: int) -> None: ...  # fresh episodes in every env, seeds from next_seed

    def state(self) -> dict[str, Any]: ...  # what `restore` needs to continue exactly (saved with checkpoints)

    def restore(self, state: dict[str, Any]) -> None: ...  # put back `state` (resume)

    def close(self) -> None: ...


@dataclass
class ChunkStep:
    """One chunk executed in every env (auto-reset done). Tensors live on the envs' device."""

    next_obs: dict[str, torch.Tensor]  # {state: (N, To, Ds)} window after the chunk; where an episode ended, its real
    # final window if `final_obs` (else the first window of the next episode, which must not be bootstrapped from)
    rewards: torch.Tensor  # (N,) float64, summed over the executed steps (or 1/0 for reward="success")
    raw_rewards: torch.Tensor  # (N,) float64, the env's own
    terminated: torch.Tensor  # (N,) bool
    truncated: torch.Tensor  # (N,) bool
    env_steps: int
    episodes: list[dict[str, Any]]  # episodes that ended in this step: success, return, length, env (index)
    final_obs: bool = True
    n_steps: Optional[torch.Tensor] = None  # (N,) steps each env executed (the frame replay indexes windows by it)


class VecChunkEnv:
    """N chunked envs with auto-reset. Episode seeds are seed, seed+1, ... in order of starting (ties: env order).

    The envs run in a `runner`: by default one `EnvSlice` in this process; `RaySlices` (finetune/ray_rollout.py)
    spreads them over Ray actors with the same seeds, so both give the same rollouts."""

    final_obs = True

    def __init__(self, task: str, n_envs: int, n_obs_steps: int, n_action_steps: int, seed: int,
                 max_episode_steps: int = 0, runner: Optional[EnvSlice | RaySlices] = None,
                 images: bool = False, image_size: int = 0) -> None:
        # EnvSlice and RaySlices have the same four members: spec, reset, step, close
        self.runner = runner if runner is not None else EnvSlice(
            task, list(range(seed, seed + n_envs)), n_obs_steps, n_action_steps, max_episode_steps, images=images,
            image_size=image_size)
        self.spec: EnvSpec = self.runner.spec
        self.n_envs = n_envs
        self.next_seed = seed
        # the episode in flight in each env: its seed and the rows it executed, so a resume can rebuild it exactly
        self.ep_seed, self.ep_rows = [0] * n_envs, [[] for _ in range(n_envs)]
        self.obs: list[dict[str, np.ndarray]] = self._reset(list(range(n_envs)))
        self.ep_stats = [self._fresh_stats() for _ in range(n_envs)]

    @staticmethod
    def _fresh_stats() -> dict[str, Any]:
        return {"return": 0.0, "length": 0, "success": False}

    def _reset(self, ids: list[int]) -> list[dict[str, np.ndarray]]:
        seeds = list(range(self.next_seed, self.next_seed + len(ids)))
        self.next_seed += len(ids)
        for i, s in zip(ids, seeds):
            self.ep_seed[i], self.ep_rows[i] = s, []
        return self.runner.reset(ids, seeds) if ids else []

    def restart(self, next_seed: int) -> None:
        self.next_seed = next_seed
        self.obs = self._reset(list(range(self.n_envs)))
        self.ep_stats = [self._fresh_stats() for _ in range(self.n_envs)]

    def state(self) -> dict[str, Any]:
        """Seeds, the episodes in flight (seed, executed rows as float32 lists: exact in JSON) and their statistics."""
        return {"next_seed": self.next_seed, "ep_seed": list(self.ep_seed),
                "ep_rows": [[r.tolist() for r in rows] for rows in self.ep_rows],
                "ep_stats": [dict(st) for st in self.ep_stats]}

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild every episode in flight by replaying its rows from its seed: the envs continue exactly where the
        saved run was (deterministic simulators), so a resumed run equals an uninterrupted one."""
        ids = list(range(self.n_envs))
        rows = [[np.asarray(r, dtype=np.float32) for r in env_rows] for env_rows in state["ep_rows"]]
        self.obs = self.runner.replay(ids, list(state["ep_seed"]), rows)
        self.ep_seed, self.ep_rows = list(state["ep_seed"]), rows
        self.ep_stats = [dict(st) for st in state["ep_stats"]]
        self.next_seed = state["next_seed"]

    def batch_obs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return _to_device(self.obs, device)

    def step(self, chunks: torch.Tensor, reward: str = "env") -> ChunkStep:
        """Execute chunks (N, H, Da) in env units; finished episodes are logged and their envs reset."""
        sent = chunks.detach().cpu().numpy().astype(np.float32)
        results = self.runner.step(sent)
        n = self.n_envs
        rewards, raw, term, trunc = np.zeros(n), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        episodes, ended = [], []
        for i, res in enumerate(results):
            raw[i] = res.reward
            rewards[i] = float(res.success) if reward == "success" else res.reward
            term[i], trunc[i] = res.terminated, res.truncated
            st = self.ep_stats[i]
            st["return"] += res.reward
            st["length"] += res.n_steps
            st["success"] = st["success"] or res.success
            self.ep_rows[i].append(sent[i, : res.n_steps].copy())
            if res.terminated or res.truncated:
                episodes.append({**st, "env": i})
                self.ep_stats[i] = self._fresh_stats()
                ended.append(i)
            else:
                self.obs[i] = res.obs
        for i, o in zip(ended, self._reset(ended)):
            self.obs[i] = o
        t = torch.as_tensor
        return ChunkStep(next_obs=_to_device([r.obs for r in results], torch.device("cpu")), rewards=t(rewards),
                         raw_rewards=t(raw), terminated=t(term), truncated=t(trunc),
                         env_steps=sum(r.n_steps for r in results), episodes=episodes,
                         n_steps=t([r.n_steps for r in results]))

    def close(self) -> None:
        self.runner.close()


def _to_device(obs: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.stack([o[k] for o in obs]), device=device) for k in obs[0]}


class RewardScaler:
    """Divides rewards by the running std of the discounted return (as DPPO / ReinFlow do). Float64 tensors on the
    rewards' device, so torch-native rollouts never leave it."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.ret: Optional[torch.Tensor] = None  # (N,) float64
        self.count, self.mean, self.var = 1e-4, 0.0, 1.0

    def __call__(self, r: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        r = r.double()
        self.ret = r.clone() if self.ret is None else self.ret.to(r.device) * self.gamma + r
        self._update(self.ret)
        self.ret = torch.where(done, torch.zeros_like(self.ret), self.ret)
        return r / math.sqrt(self.var + 1e-8)

    def _update(self, x: torch.Tensor) -> None:
        b_mean, b_var, n = float(x.mean()), float(x.var(unbiased=False)), x.shape[0]
        delta, tot = b_mean - self.mean, self.count + n
        self.mean += delta * n / tot
        self.var = (self.var * self.count + b_var * n + delta**2 * self.count * n / tot) / tot
        self.count = tot

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "var": self.var,
                "ret": None if self.ret is None else self.ret.tolist()}

    def load(self, st: dict[str, Any]) -> None:
        self.count, self.mean, self.var = st["count"], st["mean"], st["var"]
        self.ret = None if st["ret"] is None else torch.tensor(st["ret"], dtype=torch.float64)


def step_chunks(venv: ChunkEnvs, chunks: torch.Tensor | np.ndarray, reward: str = "env") -> ChunkStep:
    """Execute chunks (N, H, Da) in env units in every env (kept for callers of the old function)."""
    return venv.step(torch.as_tensor(chunks), reward)


ActFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # obs -> {"actions": (N,H,Da), extras...}
ValueFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # obs -> (N,)


@torch.no_grad()
def collect(venv: ChunkEnvs, act: ActFn, value: ValueFn, unnormalize: Callable[[torch.Tensor], torch.Tensor],
            n_steps: int, device: torch.device, reward_offset: float = 0.0,
            scaler: Optional[RewardScaler] = None, reward: str = "env") -> Rollout:
    """Run n_steps chunks in every env. `act` returns normalised chunks plus per-transition extras.

    reward="success" replaces the env reward by 1 for the chunk in which the task succeeds (0 otherwise).
    A truncated episode bootstraps from V(its real final window); an env set that cannot return that window
    (`venv.final_obs` False, e.g. IsaacLab, which resets inside step) uses V(the window the chunk started from),
    the approximation rsl_rl makes for IsaacLab time-outs."""
    n = venv.n_envs
    obs_l, act_l, rew_l, term_l, trunc_l, val_l, fval_l = [], [], [], [], [], [], []
    extras: dict[str, list[torch.Tensor]] = {}
    episodes: list[dict[str, Any]] = []
    env_steps, t_env, t_inf = 0, 0.0, 0.0
    for _ in range(n_steps):
        obs = venv.batch_obs(device)
        t0 = time.perf_counter()
        out = act(obs)
        v = value(obs)  # (N,)
        t_inf += time.perf_counter() - t0
        chunks = unnormalize(out["actions"].clamp(-1.0, 1.0))  # (N, H, Da) env units
        t0 = time.perf_counter()
        res = venv.step(chunks, reward)
        t_env += time.perf_counter() - t0
        env_steps += res.env_steps
        episodes += res.episodes
        term, trunc = res.terminated.to(device), res.truncated.to(device)
        boot = trunc & ~term  # (N,) episodes cut by the time limit
        fv = torch.zeros(n, device=device)
        if bool(boot.any()):
            if res.final_obs:
                idx = boot.nonzero().squeeze(-1)
                fv[idx] = value({k: x.to(device)[idx] for k, x in res.next_obs.items()})
            else:
                fv = torch.where(boot, v, fv)
        obs_l.append(obs)
        act_l.append(out["actions"])
        rew_l.append(res.rewards.to(device))
        term_l.append(term)
        trunc_l.append(trunc)
        val_l.append(v)
        fval_l.append(fv)
        for k, x in out.items():
            if k != "actions":
                extras.setdefault(k, []).append(x)
    raw = torch.stack(rew_l)  # (T, N) float64
    shaped = raw + reward_offset
    if scaler is not None:
        shaped = torch.stack([scaler(shaped[t], term_l[t] | trunc_l[t]) for t in range(n_steps)])
    t0 = time.perf_counter()
    next_value = value(venv.batch_obs(device))
    t_inf += time.perf_counter() - t0
    return Rollout(
        obs={k: torch.stack([o[k] for o in obs_l]) for k in obs_l[0]},
        actions=torch.stack(act_l), rewards=shaped.float(), raw_rewards=raw.float(),
        terminated=torch.stack(term_l), truncated=torch.stack(trunc_l),
        values=torch.stack(val_l), final_values=torch.stack(fval_l), next_value=next_value,
        extras={k: torch.stack(v) for k, v in extras.items()}, episodes=episodes, env_steps=env_steps,
        seconds={"env": t_env, "inference": t_inf})
