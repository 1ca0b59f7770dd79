"""Windows for training: To observations ending at step t and H actions starting at t, never crossing episodes.

Indices before an episode's start repeat its first frame and indices past its end repeat its last frame (edge
padding, as Diffusion Policy and LeRobot do); `action_is_pad` marks the padded actions.

Shapes: N windows, B batch, To obs steps, H horizon.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from genpolicy.datasets.lazy import LazyDemos
from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import DataError


def split_episodes(n_episodes: int, val_fraction: float, seed: int, max_train: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level train/val split: at least one val episode when val_fraction > 0 and there are >= 2 episodes."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_episodes)
    n_val = int(round(n_episodes * val_fraction))
    if val_fraction > 0 and n_episodes >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_episodes - 1)
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if max_train > 0:
        train = np.sort(train[:max_train])
    return train, val


class SequenceSampler:
    """Precomputes, for every window, which buffer rows to gather; batches are fancy-indexed numpy arrays."""

    def __init__(self, buffer: ReplayBuffer | LazyDemos, episodes: np.ndarray, n_obs_steps: int, horizon: int) -> None:
        if len(episodes) == 0:
            raise DataError(f"{buffer.source}: no episodes selected for sampling")
        self.buffer = buffer
        ends = buffer.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        obs_idx, act_idx, pad = [], [], []
        o_off = np.arange(-n_obs_steps + 1, 1)  # (To,)
        a_off = np.arange(horizon)  # (H,)
        for e in episodes:
            s, t_end = int(starts[e]), int(ends[e])
            t = np.arange(s, t_end)[:, None]  # every step of the episode is a "current step"
            obs_idx.append(np.clip(t + o_off, s, t_end - 1))
            raw = t + a_off
            act_idx.append(np.clip(raw, s, t_end - 1))
            pad.append(raw > t_end - 1)
        self.obs_idx = np.concatenate(obs_idx)  # (N, To)
        self.act_idx = np.concatenate(act_idx)  # (N, H)
        self.act_pad = np.concatenate(pad)  # (N, H)
        self.obs_keys = ["state", *buffer.image_keys]

    def __len__(self) -> int:
        return len(self.obs_idx)

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict:
        """Windows `idx` -> {obs: {state: (B,To,Ds), image.<cam>: (B,To,3,H,W)}, action: (B,H,Da), action_is_pad: (B,H)}."""
        d = self.buffer.data
        oi, ai = self.obs_idx[idx], self.act_idx[idx]
        obs = {"state": torch.as_tensor(d["state"][oi], device=device)}
        if len(self.obs_keys) > 1:
            # frames may live on disk (LazyDemos): fetch each distinct row once, then expand to (B, To)
            rows, inv = np.unique(oi, return_inverse=True)
            for k in self.obs_keys[1:]:
                frames = self.buffer.read(k, rows) if hasattr(self.buffer, "read") else d[k][rows]
                obs[k] = torch.as_tensor(frames[inv.reshape(oi.shape)], device=device)
        return {
            "obs": obs,
            "action": torch.as_tensor(d["action"][ai], device=device),
            "action_is_pad": torch.as_tensor(self.act_pad[idx], device=device),
        }

    def random_batch(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> dict:
        return self.batch(rng.integers(0, len(self), size=batch_size), device)

    def iter_batches(self, batch_size: int, device: torch.device | str = "cpu", limit: Optional[int] = None):
        """Deterministic pass over (up to `limit`) windows in order, for validation."""
        n = len(self) if limit is None else min(limit, len(self))
        for s in range(0, n, batch_size):
            yield self.batch(np.arange(s, min(s + batch_size, n)), device)
