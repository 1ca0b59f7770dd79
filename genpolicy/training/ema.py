"""Exponential moving average of weights with Diffusion Policy's warm-up decay."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """decay(step) = 1 - (1 + step)^-power, clamped to [0, max_decay]; buffers (normaliser stats) are copied."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay = power, max_decay

    def decay(self, step: int) -> float:
        return float(min(max(1.0 - (1.0 + step) ** -self.power, 0.0), self.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, params, alpha=1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)
