"""Record demonstrations from scripted experts through the same env adapters used for evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from genpolicy.training.runs import progress_bar

from genpolicy.datasets.lazy import LazyDemos, open_zarr
from genpolicy.datasets.replay_buffer import ReplayBuffer, ZarrEpisodeWriter
from genpolicy.errors import DataError
from genpolicy.envs.registry import make_env
from genpolicy.experts.registry import make_expert


def generate(task: str, n_episodes: int, seed: int = 0, noise: float = 0.0, detour_prob: float = 0.0,
             images: bool = False, keep_failed: bool = False, max_episode_steps: int = 0,
             progress: bool = True, max_attempts_factor: int = 3, expert_path: str = "",
             image_size: int = 0, out: str | Path | None = None) -> ReplayBuffer | LazyDemos:
    """Run the task's expert until `n_episodes` episodes are kept (successes only unless keep_failed).

    Episode i uses env seed `seed + i`. The buffer's attrs record the expert's success rate over all attempts and
    its mean return. Tasks with no success notion (locomotion) keep every episode.

    With `out`, each kept episode is appended to the zarr store at `out` as it finishes (chunk by chunk, one episode
    in memory; the store appears complete or not at all) and the store is returned opened lazily.
    """
    env = make_env(task, seed=seed, images=images, max_episode_steps=max_episode_steps, image_size=image_size)
    expert = make_expert(task, noise=noise, detour_prob=detour_prob, seed=seed, expert_path=expert_path)
    keep_failed = keep_failed or env.spec.success_definition.startswith("none")
    returns: list[float] = []
    episodes: list[dict[str, np.ndarray]] = []
    writer = ZarrEpisodeWriter(out) if out is not None else None
    kept = 0
    attempts = successes = 0
    t0 = time.time()
    bar = progress_bar(n_episodes, f"demos {task}", "ep", progress)
    try:
        while kept < n_episodes and attempts < max_attempts_factor * n_episodes:
            obs = env.reset(seed=seed + attempts)
            expert.reset()
            steps: dict[str, list[np.ndarray]] = {k: [] for k in obs}
            steps["action"] = []
            success, done, ret = False, False, 0.0
            while not done:
                action = np.asarray(expert.act(env, obs), dtype=np.float32)
                for k, v in obs.items():
                    steps[k].append(v)
                steps["action"].append(action)
                obs, r, term, trunc, info = env.step(action)
                ret += float(r)
                success = success or bool(info.get("success", False))
                done = term or trunc
            attempts += 1
            successes += int(success)
            returns.append(ret)
            if success or keep_failed:
                ep = {k: np.stack(v) for k, v in steps.items()}
                if writer is not None:
                    writer.append(ep)
                else:
                    episodes.append(ep)
                kept += 1
                bar.update(1)
            bar.set_postfix(expert_success=f"{successes / attempts:.2f}")
    except BaseException:
        if writer is not None:  # interrupted or failed: no half-written store is left behind
            writer.abort()
        raise
    bar.close()
    env.close()
    attrs: dict[str, Any] = {
        "task": task, "fps": env.spec.fps, "source": "scripted_expert", "seed": seed,
        "expert_noise": noise, "expert_detour_prob": detour_prob, "expert_attempts": attempts,
        "expert_successes": successes, "expert_success_rate": successes / max(attempts, 1),
        "success_definition": env.spec.success_definition, "kept_failed": keep_failed,
        "generation_seconds": round(time.time() - t0, 2), "expert_mean_return": float(np.mean(returns)) if returns else 0.0,
    }
    if writer is None:
        return ReplayBuffer.from_episodes(episodes, attrs)
    if kept == 0:
        writer.abort()
        raise DataError(f"{out}: the expert kept no episode in {attempts} attempts")
    writer.close(attrs)
    return open_zarr(Path(out), images=False)
