"""Chunk-level rollouts on one batched, torch-native simulator with IsaacLab's API (envs/isaaclab.py).

`TorchVecChunkEnv` satisfies `rollout.ChunkEnvs`, so `collect()` and the on-policy `finetune()` use it unchanged.
Observations, actions, rewards and flags stay torch tensors on the env's device: the To-step observation windows are a
device buffer, chunks are sliced on the device, nothing goes through numpy (tests/test_isaaclab.py forbids it).

Chunk semantics differ from `VecChunkEnv` in one way, forced by the simulator stepping all sub-envs together and
resetting finished ones inside step: a sub-env whose episode ends at step j < Ta of a chunk keeps stepping with the
rest of that chunk. Those steps are the first steps of its next episode: they count in that episode's return and
length (episode bookkeeping equals a plain sequential run of the same actions) but in no transition's reward, and the
next chunk starts from the window after them. Env steps count every simulated step (N * Ta per chunk).
The final observation of an episode is not available (see envs/isaaclab.py): `final_obs = False`, and `collect()`
bootstraps a truncated chunk from V(the window it started from).

Shapes: N envs, To obs steps, D obs dim, H horizon, Ta executed steps, Da action dim.
"""

from __future__ import annotations

from typing import Any

import torch

from genpolicy.envs.base import EnvSpec
from genpolicy.envs.isaaclab import OBS_KEY, spec_from_env, step_success
from genpolicy.finetune.rollout import ChunkStep


class TorchVecChunkEnv:
    """N sub-envs of one batched simulator at the chunk level, with on-device observation history."""

    final_obs = False  # the simulator resets inside step and does not return the final observation

    def __init__(self, env: Any, spec: EnvSpec, n_obs_steps: int, n_action_steps: int, seed: int) -> None:
        self.env, self.spec = env, spec
        self.n_envs: int = env.num_envs
        self.device = torch.device(env.device)
        self.To, self.Ta = n_obs_steps, n_action_steps
        self.next_seed = seed
        self.restart(seed)

    def restart(self, next_seed: int) -> None:
        """Reset every sub-env with one simulation seed; next_seed then moves on by N (the episodes started), so a
        resumed run gets fresh, reproducible randomness."""
        obs, _ = self.env.reset(seed=next_seed)
        self.next_seed = next_seed + self.n_envs
        first = obs[OBS_KEY]  # (N, D)
        self.hist = first[:, None].repeat(1, self.To, 1)  # (N, To, D): the first obs repeated, as ChunkedEnv does
        self.ep_return = torch.zeros(self.n_envs, dtype=torch.float64, device=self.device)  # (N,)
        self.ep_length = torch.zeros(self.n_envs, dtype=torch.long, device=self.device)  # (N,)
        self.ep_success = torch.zeros(self.n_envs, dtype=torch.bool, device=self.device)  # (N,)

    def state(self) -> dict[str, Any]:
        return {"next_seed": self.next_seed}

    def restore(self, state: dict[str, Any]) -> None:
        """A batched simulator cannot replay one sub-env: episodes in flight restart, with seeds that continue the
        sequence (so resume here is reproducible but not identical to an uninterrupted run)."""
        self.restart(state["next_seed"])

    def batch_obs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"state": self.hist.to(device).clone()}  # (N, To, D); a copy: the buffer moves on

    def step(self, chunks: torch.Tensor, reward: str = "env") -> ChunkStep:
        """Execute the first Ta actions of chunks (N, H, Da) (env units) in every sub-env."""
        n, dev = self.n_envs, self.device
        chunks = chunks.to(dev)
        rewards = torch.zeros(n, dtype=torch.float64, device=dev)  # (N,) this chunk's transition reward
        term = torch.zeros(n, dtype=torch.bool, device=dev)
        trunc = torch.zeros(n, dtype=torch.bool, device=dev)
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        live = torch.ones(n, dtype=torch.bool, device=dev)  # (N,) still in the episode the chunk started in
        episodes: list[dict[str, Any]] = []
        for j in range(self.Ta):
            obs, r, te, tr, extras = self.env.step(chunks[:, j])  # (N, Da) -> obs {policy: (N, D)}, r (N,), ...
            r, te, tr = r.to(dev, torch.float64).reshape(n), te.to(dev).bool().reshape(n), tr.to(dev).bool().reshape(n)
            s = step_success(extras, n, dev)  # (N,)
            done = te | tr
            rewards += torch.where(live, r, torch.zeros_like(r))
            success |= s & live
            term |= te & live
            trunc |= tr & live
            self.ep_return += r
            self.ep_length += 1
            self.ep_success |= s
            if bool(done.any()):
                episodes += self._finish(done)
            # the window moves on; sub-envs that were just reset restart theirs from their first observation
            o = obs[OBS_KEY].to(dev)  # (N, D)
            self.hist = torch.cat([self.hist[:, 1:], o[:, None]], dim=1)  # (N, To, D)
            self.hist[done] = o[done][:, None].expand(-1, self.To, -1)
            live &= ~done
        raw = rewards
        out = success.double() if reward == "success" else rewards
        return ChunkStep(next_obs={"state": self.hist}, rewards=out, raw_rewards=raw, terminated=term,
                         truncated=trunc, env_steps=n * self.Ta, episodes=episodes, final_obs=False)

    def _finish(self, done: torch.Tensor) -> list[dict[str, Any]]:
        """Log the episodes that ended (done (N,) bool) and zero their counters."""
        ids = done.nonzero().squeeze(-1).tolist()
        rets, lens, succ = self.ep_return[done].tolist(), self.ep_length[done].tolist(), self.ep_success[done].tolist()
        self.next_seed += len(ids)  # the simulator started as many episodes
        self.ep_return[done], self.ep_length[done], self.ep_success[done] = 0.0, 0, False
        return [{"return": r, "length": ln, "success": s, "env": i} for r, ln, s, i in zip(rets, lens, succ, ids)]

    def close(self) -> None:
        self.env.close()


def make_torch_venv(task: str, n_envs: int, n_obs_steps: int, n_action_steps: int, seed: int,
                    device: Any = "cpu", max_episode_steps: int = 0) -> TorchVecChunkEnv:
    """A `TorchVecChunkEnv` on a registered batched task (isaaclab/..., isaaclab_standin/...)."""
    from genpolicy.envs.registry import make_batched_env

    env = make_batched_env(task, n_envs, seed, device, max_episode_steps)
    return TorchVecChunkEnv(env, spec_from_env(env, task), n_obs_steps, n_action_steps, seed)
