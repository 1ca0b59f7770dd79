"""Deployment-side chunk handling: observation history and the queue of pending actions."""

from __future__ import annotations

from collections import deque

import torch


class ObsHistory:
    """Keeps the last To observations; the first observation of an episode fills the whole window."""

    def __init__(self, n_obs_steps: int) -> None:
        self.n = n_obs_steps
        self.buf: deque[dict[str, torch.Tensor]] = deque(maxlen=n_obs_steps)

    def reset(self) -> None:
        self.buf.clear()

    def push(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add one step {key: (B, ...)} and return the stacked window {key: (B, To, ...)}."""
        if not self.buf:
            for _ in range(self.n):
                self.buf.append(obs)
        else:
            self.buf.append(obs)
        return {k: torch.stack([o[k] for o in self.buf], dim=1) for k in obs}


class ActionQueue:
    """Pending actions (B, n, Da) from the last chunk; popped one step at a time."""

    def __init__(self) -> None:
        self.actions: torch.Tensor | None = None

    def reset(self) -> None:
        self.actions = None

    def __len__(self) -> int:
        return 0 if self.actions is None else int(self.actions.shape[1])

    def extend(self, chunk: torch.Tensor) -> None:
        self.actions = chunk if self.actions is None else torch.cat([self.actions, chunk], dim=1)

    def pop(self) -> torch.Tensor:
        assert self.actions is not None and self.actions.shape[1] > 0, "pop from an empty action queue"
        a, self.actions = self.actions[:, 0], self.actions[:, 1:]
        return a  # (B, Da)
