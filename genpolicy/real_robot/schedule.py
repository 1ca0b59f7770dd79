"""The action schedule: chunks stamped with control steps, merged into one action per step.

A chunk predicted from the observation of step s holds actions for steps s, s+1, ..., s+H-1. It usually arrives a few
steps later (inference latency). With latency handling, actions for steps already past are dropped and the rest stay
aligned to their steps (Diffusion Policy's real-robot rule); without it, the chunk is executed from its first action
at arrival (what a naive synchronous loop does).

Merging where chunks overlap:
  latest   - the newest chunk wins (a jump where it takes over)
  blend    - the first `blend_steps` steps after a new chunk takes over cross-fade linearly from the older plan (the
             controller passes ControllerConfig.blend_window: a window in seconds, so the same duration at every rate)
  ensemble - ACT's temporal ensembling: every chunk covering the step, weights exp(-k * i), i = 0 for the oldest

The execution modes sync, rtc and bid use `latest` here: sync executes each chunk alone, and rtc / bid build the seam
into the chunk itself (genpolicy/policies/realtime.py).

Shapes: H = chunk length, Da = action dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StampedChunk:
    start: int  # control step of actions[0]
    actions: np.ndarray  # (H, Da)
    arrival: int  # control step at which it was added
    serial: int  # increasing per added chunk

    @property
    def end(self) -> int:  # one past the last step covered
        return self.start + len(self.actions)


@dataclass
class ScheduledAction:
    action: np.ndarray  # (Da,)
    chunk: int  # serial of the chunk that owns this step (the newest covering it)


class ActionSchedule:
    def __init__(self, mode: str = "blend", blend_steps: int = 4, ensemble_k: float = 0.01,
                 latency_handling: bool = True) -> None:
        if mode not in ("latest", "blend", "ensemble"):
            raise ValueError(f"blending mode must be latest|blend|ensemble, got '{mode}'")
        self.mode, self.blend_steps, self.k, self.latency_handling = mode, int(blend_steps), float(ensemble_k), latency_handling
        self.chunks: list[StampedChunk] = []
        self.late_dropped = 0  # actions discarded because their step had passed
        self._serial = 0

    def reset(self) -> None:
        self.chunks.clear()
        self.late_dropped = 0

    def add(self, actions: np.ndarray, obs_step: int, now_step: int) -> None:
        """Add a chunk predicted from the observation of `obs_step`, arriving at control step `now_step`."""
        actions = np.asarray(actions, np.float64)
        if self.latency_handling:
            late = max(0, now_step - obs_step)
            self.late_dropped += min(late, len(actions))
            actions, start = actions[late:], obs_step + late
        else:
            start = now_step
        if len(actions) == 0:
            return
        self._serial += 1
        self.chunks.append(StampedChunk(start, actions, now_step, self._serial))

    def chunk(self, serial: int) -> StampedChunk | None:
        return next((c for c in self.chunks if c.serial == serial), None)

    def prune(self, step: int) -> None:
        """Forget chunks that end before `step`."""
        self.chunks = [c for c in self.chunks if c.end > step]

    def remaining(self, step: int) -> int:
        """Steps from `step` on that some chunk covers."""
        return max((c.end - step for c in self.chunks), default=0) if self.chunks else 0

    def action_at(self, step: int) -> ScheduledAction | None:
        """The action for control step `step`, or None when no chunk covers it."""
        cover = [c for c in self.chunks if c.start <= step < c.end]
        if not cover:
            return None
        newest = cover[-1]
        a_new = newest.actions[step - newest.start]
        if self.mode == "latest" or len(cover) == 1:
            return ScheduledAction(a_new.copy(), newest.serial)
        if self.mode == "ensemble":
            w = np.exp(-self.k * np.arange(len(cover)))  # (C,) oldest first
            stack = np.stack([c.actions[step - c.start] for c in cover])  # (C, Da)
            return ScheduledAction((w[:, None] * stack).sum(0) / w.sum(), newest.serial)
        # blend: cross-fade from the previous owner over the first blend_steps steps the new chunk owns
        into = step - max(newest.start, newest.arrival)
        if into >= self.blend_steps:
            return ScheduledAction(a_new.copy(), newest.serial)
        older = cover[-2]
        w = (into + 1) / (self.blend_steps + 1)
        return ScheduledAction((1 - w) * older.actions[step - older.start] + w * a_new, newest.serial)
