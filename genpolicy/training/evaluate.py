"""Roll a policy out in real simulators: batched inference across envs, chunked execution, videos, eval.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from genpolicy.training.runs import progress_bar

from genpolicy.envs.registry import make_env
from genpolicy.envs.wrappers import ChunkedEnv, write_video
from genpolicy.errors import DataError
from genpolicy.policies import GenerativePolicy


def evaluate(policy: GenerativePolicy, task: str, n_episodes: int = 50, n_envs: int = 10, seed: int = 100000,
             out_dir: Optional[str | Path] = None, n_videos: int = 0, images: Optional[bool] = None,
             max_episode_steps: int = 0, progress: bool = True, noise_seed: Optional[int] = None) -> dict[str, Any]:
    """Run `n_episodes` episodes (seeds seed..seed+n-1) and return the eval.json dict (also written to out_dir).
    The sampling noise is seeded by `seed` too, or by `noise_seed` to draw other noise on the same episodes."""
    was_training = policy.training
    policy.eval()
    images = bool(policy.shape.cameras) if images is None else images
    n_envs = max(1, min(n_envs, n_episodes))
    # camera policies see frames of the size they were trained on
    size = policy.shape.image_size if images else 0
    envs = [ChunkedEnv(make_env(task, seed=seed, images=images, max_episode_steps=max_episode_steps, image_size=size),
                       policy.cfg.n_obs_steps, policy.cfg.n_action_steps) for _ in range(n_envs)]
    spec = envs[0].spec
    if spec.action_dim != policy.shape.action_dim or spec.state_dim != policy.shape.state_dim:
        for env in envs:  # simulators and their GL contexts are closed here, not by __del__ at interpreter exit
            env.close()
        raise DataError(f"task '{task}' has state/action dims ({spec.state_dim}, {spec.action_dim}) but the policy "
                        f"expects ({policy.shape.state_dim}, {policy.shape.action_dim})")
    device = policy.device
    gen = torch.Generator(device=device).manual_seed(seed if noise_seed is None else noise_seed)  # part of the protocol
    episodes: list[dict[str, Any]] = []
    slot_ep: list[Optional[int]] = [None] * n_envs
    slot_obs: list[Optional[dict[str, np.ndarray]]] = [None] * n_envs
    slot_stats: list[dict[str, Any]] = [{} for _ in range(n_envs)]
    slot_prev: list[Optional[torch.Tensor]] = [None] * n_envs  # last chunk, for warm-started sampling
    infer_s: list[float] = []  # seconds per predict_chunk call
    nfe: list[float] = []  # adaptive sampler: network evaluations per chunk
    next_ep = 0
    t0 = time.time()
    bar = progress_bar(n_episodes, f"eval {task}", "ep", progress)

    def start(i: int) -> None:
        nonlocal next_ep
        if next_ep >= n_episodes:
            slot_ep[i] = None
            return
        ep = next_ep
        next_ep += 1
        slot_ep[i] = ep
        slot_obs[i] = envs[i].reset(seed=seed + ep, record=ep < n_videos)
        slot_stats[i] = {"return": 0.0, "length": 0, "success": False}
        slot_prev[i] = None

    for i in range(n_envs):
        start(i)
    while any(e is not None for e in slot_ep):
        active = [i for i in range(n_envs) if slot_ep[i] is not None]
        chunks: dict[int, torch.Tensor] = {}
        # episodes that just started sample cold; the others may warm-start from their previous chunk
        groups = [[i for i in active if slot_prev[i] is None], [i for i in active if slot_prev[i] is not None]] \
            if policy.cfg.warm_start_steps > 0 else [active]
        for group in groups:
            if not group:
                continue
            batch = {k: torch.as_tensor(np.stack([slot_obs[i][k] for i in group]), device=device)  # type: ignore[index]
                     for k in slot_obs[group[0]]}  # type: ignore[union-attr]
            warm = policy.cfg.warm_start_steps > 0 and slot_prev[group[0]] is not None
            prev = torch.stack([slot_prev[i] for i in group]) if warm else None  # type: ignore[misc]
            t_call = time.perf_counter()
            out = policy.predict_chunk(batch, generator=gen, prev=prev).cpu()  # (B, H, Da)
            infer_s.append(time.perf_counter() - t_call)
            if policy.last_nfe is not None:
                nfe.extend(policy.last_nfe.float().tolist())
            chunks.update({i: out[j] for j, i in enumerate(group)})
        for i in active:
            slot_prev[i] = chunks[i]
            res = envs[i].step(chunks[i].numpy())
            st = slot_stats[i]
            st["return"] += res.reward
            st["length"] += res.n_steps
            st["success"] = st["success"] or res.success
            slot_obs[i] = res.obs
            if res.terminated or res.truncated:
                ep = slot_ep[i]
                record: dict[str, Any] = {"episode": ep, "seed": seed + ep, "success": bool(st["success"]),
                                          "return": float(st["return"]), "length": int(st["length"]),
                                          "terminated": res.terminated, "truncated": res.truncated}
                if envs[i].record and out_dir is not None:
                    video = write_video(Path(out_dir) / f"episode_{ep:03d}.mp4", envs[i].frames, spec.fps)
                    record["video"] = str(video)
                episodes.append(record)
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.2f}")
                start(i)
    bar.close()
    for env in envs:
        env.close()
    if was_training:
        policy.train()
    episodes.sort(key=lambda e: e["episode"])
    result = {
        "task": task,
        "success_definition": spec.success_definition,
        "success_rate": float(np.mean([e["success"] for e in episodes])),
        "mean_return": float(np.mean([e["return"] for e in episodes])),
        "mean_length": float(np.mean([e["length"] for e in episodes])),
        "n_episodes": len(episodes),
        "seed": seed,
        "noise_seed": seed if noise_seed is None else noise_seed,
        "sampler": policy.cfg.sampler,
        "steps": policy.cfg.steps,
        "warm_start_steps": policy.cfg.warm_start_steps,
        "infer_ms_per_call": round(1000 * float(np.mean(infer_s)), 3) if infer_s else None,
        "nfe_per_chunk": round(float(np.mean(nfe)), 3) if nfe else None,
        "eval_seconds": round(time.time() - t0, 2),
        "videos": [e["video"] for e in episodes if "video" in e],
        "episodes": episodes,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=2))
    return result
