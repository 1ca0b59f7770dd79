"""The one interface every simulator adapter implements (single env, numpy in and out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class EnvSpec:
    """What a task looks like from outside."""

    name: str
    state_dim: int
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    max_episode_steps: int
    fps: float
    success_definition: str  # printed next to every success number
    cameras: tuple[str, ...] = field(default_factory=tuple)


class Env(Protocol):
    """Observations are {"state": float32 (Ds,), "image.<cam>": uint8 (3,H,W)}; info["success"] is a bool."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]: ...

    def render(self) -> np.ndarray: ...

    def close(self) -> None: ...


class LazyImages(Protocol):
    """Optional, for adapters that render their cameras themselves: with `skip_images` set, `step()` leaves the
    image.<cam> keys out of the observation (the chunk runner sets it for steps whose frames no policy window can
    contain: rendering costs ~100x a physics step) and `image_obs()` renders the current state's frames on demand."""

    skip_images: bool

    def image_obs(self) -> dict[str, np.ndarray]: ...


class Expert(Protocol):
    """A scripted demonstrator. `noise` and `detour_prob` degrade it on purpose."""

    def reset(self) -> None: ...

    def act(self, env: Any, obs: dict[str, np.ndarray]) -> np.ndarray: ...
