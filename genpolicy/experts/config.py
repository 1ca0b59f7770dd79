"""Trained-expert schemas: `SACExpertConfig` (`genpolicy data expert`, genpolicy/experts/sac.py)."""

from __future__ import annotations

from dataclasses import dataclass

from genpolicy.configbase import _bounded, _check_types
from genpolicy.errors import ConfigError


@dataclass
class SACExpertConfig:
    """`genpolicy data expert`: SAC until the deterministic return reaches stop_return (a medium expert)."""

    steps: int = 300_000  # env steps at most
    stop_return: float = 0.0  # stop once the deterministic eval return reaches this (0 = run all steps)
    start_steps: int = 5_000  # uniform random actions first
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    width: int = 256
    eval_every: int = 10_000
    eval_episodes: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "expert")
        _bounded(self, "expert", steps=(1, 2**62), batch_size=(1, 2**20), width=(1, 16384), eval_every=(1, 2**62),
                 eval_episodes=(1, 10_000), start_steps=(0, 2**62))
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("expert.steps and expert.batch_size must be >= 1")
