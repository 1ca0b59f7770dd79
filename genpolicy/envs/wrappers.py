"""Chunked execution with observation history, and video writing.

`ChunkedEnv.step(chunk)` runs up to Ta env steps, sums rewards, keeps terminated and truncated apart, and
returns the stacked window of the last To observations (the first observation of an episode is repeated).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genpolicy.envs.base import Env, EnvSpec


@dataclass
class ChunkStep:
    obs: dict[str, np.ndarray]  # {key: (To, ...)}
    reward: float  # summed over the executed steps
    terminated: bool
    truncated: bool
    success: bool  # success seen at any executed step
    n_steps: int
    infos: list[dict[str, Any]] = field(default_factory=list)


class ChunkedEnv:
    """Executes action chunks on a single env and keeps the observation window."""

    def __init__(self, env: Env, n_obs_steps: int, n_action_steps: int, record: bool = False) -> None:
        self.env, self.To, self.Ta = env, n_obs_steps, n_action_steps
        self.spec = env.spec
        self.record = record
        self.frames: list[np.ndarray] = []
        self._hist: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)

    def _window(self) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in self._hist]) for k in self._hist[0]}

    def reset(self, seed: int | None = None, record: bool | None = None) -> dict[str, np.ndarray]:
        if record is not None:
            self.record = record
        obs = self.env.reset(seed=seed)
        self._hist.clear()
        for _ in range(self.To):
            self._hist.append(obs)
        self.frames = [self.env.render()] if self.record else []
        return self._window()

    def step(self, chunk: np.ndarray) -> ChunkStep:
        """Run the first Ta actions of chunk (>=Ta, Da); stop early when the episode ends."""
        total, term, trunc, success, n = 0.0, False, False, False, 0
        infos = []
        for a in chunk[: self.Ta]:
            obs, r, term, trunc, info = self.env.step(np.asarray(a, dtype=np.float32))
            self._hist.append(obs)
            total += float(r)
            success = success or bool(info.get("success", False))
            infos.append(info)
            n += 1
            if self.record:
                self.frames.append(self.env.render())
            if term or trunc:
                break
        return ChunkStep(self._window(), total, bool(term), bool(trunc), success, n, infos)

    def close(self) -> None:
        self.env.close()


class EnvSlice:
    """Some chunked envs in one process, numpy in and out and no torch, so that it can also live in a (light) Ray
    actor. It steps and resets only when told: episode seeds and bookkeeping stay with the `VecChunkEnv`
    (finetune/rollout.py) that owns it."""

    def __init__(self, task: str, env_seeds: list[int], n_obs_steps: int, n_action_steps: int,
                 max_episode_steps: int = 0) -> None:
        from genpolicy.envs.registry import make_env

        self.envs = [ChunkedEnv(make_env(task, seed=s, max_episode_steps=max_episode_steps), n_obs_steps,
                                n_action_steps) for s in env_seeds]
        self.spec = self.envs[0].spec

    def reset(self, ids: list[int], seeds: list[int]) -> list[dict[str, np.ndarray]]:
        """Start an episode in envs `ids` with `seeds`; returns their first windows."""
        return [self.envs[i].reset(seed=s) for i, s in zip(ids, seeds)]

    def replay(self, ids: list[int], seeds: list[int], chunks: list[list[np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Rebuild episodes in flight: reset env ids[j] with seeds[j], then run chunks[j] (its executed rows, in order).
        Simulators are deterministic given the seed and the actions, so this puts back the exact state (resume).
        Returns each env's current window."""
        out = []
        for i, seed, seq in zip(ids, seeds, chunks):
            obs = self.envs[i].reset(seed=seed)
            for c in seq:
                obs = self.envs[i].step(np.asarray(c, dtype=np.float32)).obs
            out.append(obs)
        return out

    def step(self, chunks: np.ndarray) -> list[ChunkStep]:
        """Run chunks (n, H, Da) in env units, one per env; no resets (infos dropped: nothing reads them)."""
        out = []
        for env, chunk in zip(self.envs, chunks):
            res = env.step(chunk)
            res.infos = []
            out.append(res)
        return out

    def describe(self) -> EnvSpec:
        """The task's spec (a method, so that a Ray actor can answer it)."""
        return self.spec

    def close(self) -> None:
        for e in self.envs:
            e.close()


def write_video(path: str | Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write (H, W, 3) uint8 frames to an mp4 (H.264 via imageio-ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    # H.264 wants even sizes; pad rather than rescale so pixels stay exact
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = [np.pad(f, ((0, ph), (0, pw), (0, 0))) for f in frames]
    imageio.mimwrite(str(path), frames, fps=max(int(round(fps)), 1), codec="libx264", quality=7, macro_block_size=1)
    return path
