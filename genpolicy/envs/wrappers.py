"""Chunked execution with observation history, and video writing.

`ChunkedEnv.step(chunk)` runs up to Ta env steps, sums rewards, keeps terminated and truncated apart, and
returns the stacked window of the last To observations (the first observation of an episode is repeated).

Render on demand: the policy only looks at the window after a chunk, so of the Ta executed steps only the last To
can contribute frames. With an adapter that supports it (`envs.base.LazyImages`) the others are stepped without
rendering. The steps left before the time limit are known, so a chunk cut by truncation renders its own last To
steps; a chunk cut by termination renders the final state on demand and repeats it for the history frames it skipped
(a terminated episode's final window is never acted on nor bootstrapped from). Videos (`record`) still render every
step with `env.render()`.
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

    def __init__(self, env: Env, n_obs_steps: int, n_action_steps: int, record: bool = False,
                 render_every_step: bool = False) -> None:
        self.env, self.To, self.Ta = env, n_obs_steps, n_action_steps
        self.spec = env.spec
        self.record = record
        self.frames: list[np.ndarray] = []
        self._hist: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)
        # render on demand only where the adapter can skip frames and there are cameras to skip
        self.lazy = (not render_every_step and bool(env.spec.cameras) and hasattr(env, "skip_images")
                     and hasattr(env, "image_obs"))
        self.t = 0  # steps into the episode (to know which chunk the time limit cuts)
        self.rendered = 0  # observations rendered with frames (for measurements)

    def _window(self) -> dict[str, np.ndarray]:
        hist = list(self._hist)
        keys = hist[-1].keys()  # the newest observation always has every key (rendered on demand if skipped)
        for j in range(len(hist) - 2, -1, -1):  # a skipped frame repeats the next one (early termination only)
            if hist[j].keys() != keys:
                hist[j] = {**hist[j + 1], **hist[j]}
        return {k: np.stack([o[k] for o in hist]) for k in keys}

    def reset(self, seed: int | None = None, record: bool | None = None) -> dict[str, np.ndarray]:
        if record is not None:
            self.record = record
        if self.lazy:
            self.env.skip_images = False  # type: ignore[attr-defined]
        obs = self.env.reset(seed=seed)
        self.t = 0
        self.rendered += 1
        self._hist.clear()
        for _ in range(self.To):
            self._hist.append(obs)
        self.frames = [self.env.render()] if self.record else []
        return self._window()

    def step(self, chunk: np.ndarray) -> ChunkStep:
        """Run the first Ta actions of chunk (>=Ta, Da); stop early when the episode ends."""
        total, term, trunc, success, n = 0.0, False, False, False, 0
        infos = []
        rows = chunk[: self.Ta]
        # the last To steps this chunk can run (the time limit may cut it) are the only ones a window can contain
        n_max = min(len(rows), max(self.spec.max_episode_steps - self.t, 1))
        first_seen = n_max - self.To
        obs: dict[str, np.ndarray] = {}
        for k, a in enumerate(rows):
            if self.lazy:
                self.env.skip_images = k < first_seen  # type: ignore[attr-defined]
            obs, r, term, trunc, info = self.env.step(np.asarray(a, dtype=np.float32))
            self.t += 1
            self.rendered += int(not self.lazy or k >= first_seen)
            self._hist.append(obs)
            total += float(r)
            success = success or bool(info.get("success", False))
            infos.append(info)
            n += 1
            if self.record:
                self.frames.append(self.env.render())
            if term or trunc:
                break
        if self.lazy:
            self.env.skip_images = False  # type: ignore[attr-defined]
            if n - 1 < first_seen:  # ended before the rendered steps: the final state's frames on demand
                obs.update(self.env.image_obs())  # type: ignore[attr-defined]
                self.rendered += 1
        return ChunkStep(self._window(), total, bool(term), bool(trunc), success, n, infos)

    def close(self) -> None:
        self.env.close()


class EnvSlice:
    """Some chunked envs in one process, numpy in and out and no torch, so that it can also live in a (light) Ray
    actor. It steps and resets only when told: episode seeds and bookkeeping stay with the `VecChunkEnv`
    (finetune/rollout.py) that owns it."""

    def __init__(self, task: str, env_seeds: list[int], n_obs_steps: int, n_action_steps: int,
                 max_episode_steps: int = 0, images: bool = False, image_size: int = 0) -> None:
        from genpolicy.envs.registry import make_env

        self.envs = [ChunkedEnv(make_env(task, seed=s, max_episode_steps=max_episode_steps, images=images,
                                         image_size=image_size), n_obs_steps, n_action_steps) for s in env_seeds]
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
