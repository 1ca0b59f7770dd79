"""Fine-tuning rollouts spread over Ray actors (`rollout.backend=ray`, the optional extra `pip install .[ray]`).

Each actor owns a contiguous slice of the N envs as an `EnvSlice` and executes one chunk per env per call; the learner
keeps the policy, the episode seeds and the bookkeeping (`VecChunkEnv`), sends chunks and receives windows, rewards
and flags. Because seeds are handed out by the learner in the same order as with the local backend, the same run seed
gives the same rollouts (tests/test_rollout_scale.py checks it).

`rollout.address` is passed to `ray.init(address=...)`: empty starts a local Ray with `workers` CPUs; "auto" or
"ray://host:10001" joins a running cluster (every node needs genpolicy and the simulators installed).
Shapes: N envs, W workers, n_w envs in worker w, To obs steps, H horizon, Da action dim.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from genpolicy.envs.wrappers import ChunkStep as EnvChunkStep
from genpolicy.envs.wrappers import EnvSlice
from genpolicy.errors import ConfigError


def split(n_envs: int, workers: int) -> list[range]:
    """Contiguous env index ranges, one per worker, sizes differing by at most one."""
    if not 1 <= workers <= n_envs:
        raise ConfigError(f"rollout.workers={workers} must be in [1, n_envs={n_envs}]")
    base, extra = divmod(n_envs, workers)
    out, start = [], 0
    for w in range(workers):
        size = base + (w < extra)
        out.append(range(start, start + size))
        start += size
    return out


def init_ray(address: str = "", num_cpus: int = 2) -> None:
    """Join the cluster at `address`, or start a local Ray with `num_cpus` CPUs.

    Ray runs its workers at niceness 15 by default; rollout actors are on the learner's critical path (it waits for
    every chunk), and on a shared machine niced actors starve, so a Ray started here runs them at normal priority
    (RAY_worker_niceness, read when Ray starts; a running cluster keeps its own setting)."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")
    kw: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
    ray.init(**kw, include_dashboard=False, log_to_driver=False)


class RaySlices:
    """The `EnvSlice` interface (spec, reset, step, close) over W Ray actors, each holding one slice of the envs."""

    def __init__(self, task: str, env_seeds: list[int], n_obs_steps: int, n_action_steps: int,
                 max_episode_steps: int = 0, workers: int = 2, address: str = "") -> None:
        try:
            import ray
        except ImportError as e:
            raise ConfigError("rollout.backend=ray needs Ray: pip install 'genpolicy[ray]' (ray==2.60.0)") from e
        self._ray = ray
        self.ranges = split(len(env_seeds), workers)
        if not ray.is_initialized():
            init_ray(address, num_cpus=workers)  # a local Ray gets exactly the CPUs the workers use
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:  # the actors would wait for CPUs forever
            raise ConfigError(f"rollout.workers={workers} actors need one Ray CPU each; this Ray has {cpus:g}")
        actor = ray.remote(num_cpus=1)(EnvSlice)
        self.actors = [actor.remote(task, [env_seeds[i] for i in r], n_obs_steps, n_action_steps, max_episode_steps)
                       for r in self.ranges]
        self.spec = ray.get(self.actors[0].describe.remote())

    def _owner(self, i: int) -> tuple[int, int]:
        for w, r in enumerate(self.ranges):
            if i in r:
                return w, i - r.start
        raise IndexError(i)

    def reset(self, ids: list[int], seeds: list[int]) -> list[dict[str, np.ndarray]]:
        """Reset envs `ids` (global indices) with `seeds`, each in its own actor; first windows in `ids` order."""
        per: dict[int, dict[str, list[int]]] = {}  # worker -> its local ids, their seeds, their positions in `ids`
        for pos, (i, seed) in enumerate(zip(ids, seeds)):
            w, local = self._owner(i)
            part = per.setdefault(w, {"ids": [], "seeds": [], "pos": []})
            part["ids"].append(local)
            part["seeds"].append(seed)
            part["pos"].append(pos)
        futures = {w: self.actors[w].reset.remote(part["ids"], part["seeds"]) for w, part in per.items()}
        out: list[dict[str, np.ndarray]] = [{} for _ in ids]
        for w, fut in futures.items():  # all workers reset at once; gather in the caller's order
            for pos, o in zip(per[w]["pos"], self._ray.get(fut)):
                out[pos] = o
        return out

    def replay(self, ids: list[int], seeds: list[int], chunks: list[list[np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """`EnvSlice.replay` over the actors (each rebuilds its own envs); windows in `ids` order."""
        per: dict[int, dict[str, list]] = {}
        for pos, (i, seed, seq) in enumerate(zip(ids, seeds, chunks)):
            w, local = self._owner(i)
            part = per.setdefault(w, {"ids": [], "seeds": [], "chunks": [], "pos": []})
            for k, v in (("ids", local), ("seeds", seed), ("chunks", seq), ("pos", pos)):
                part[k].append(v)
        futures = {w: self.actors[w].replay.remote(p["ids"], p["seeds"], p["chunks"]) for w, p in per.items()}
        out: list[dict[str, np.ndarray]] = [{} for _ in ids]
        for w, fut in futures.items():
            for pos, o in zip(per[w]["pos"], self._ray.get(fut)):
                out[pos] = o
        return out

    def step(self, chunks: np.ndarray) -> list[EnvChunkStep]:
        """Chunks (N, H, Da) in env units: every actor steps its slice at the same time; results in env order."""
        futures = [a.step.remote(chunks[r.start:r.stop]) for a, r in zip(self.actors, self.ranges)]
        return [res for part in self._ray.get(futures) for res in part]

    def close(self) -> None:
        """Close the envs and end the actors (Ray itself stays up for whoever started it)."""
        self._ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
