"""Residual MLP denoiser with FiLM conditioning: the fast choice for state-based tasks.

Shapes: B batch, H horizon, Da action dim, Dc conditioning dim, W width.
"""

from __future__ import annotations

import torch
from torch import nn

from genpolicy.policies.networks.common import TimeEmbedding


class _FiLMBlock(nn.Module):
    def __init__(self, width: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.act = nn.Mish()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c).chunk(2, dim=-1)  # (B, W) each
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.act(self.fc1(self.act(y))))


class ResidualMLP(nn.Module):
    """eps/velocity network: (x (B,H,Da), t (B,), cond (B,Dc), d (B,)|None) -> (B,H,Da)."""

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, width: int = 512, depth: int = 3,
                 time_dim: int = 128, use_step_size: bool = False) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.time = TimeEmbedding(time_dim, use_step_size)
        c_dim = time_dim + cond_dim
        self.inp = nn.Linear(horizon * action_dim + c_dim, width)
        self.blocks = nn.ModuleList([_FiLMBlock(width, c_dim) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, horizon * action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        c = torch.cat([self.time(t, d), cond], dim=-1)  # (B, Dt+Dc)
        h = self.inp(torch.cat([x.flatten(1), c], dim=-1))  # (B, W)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.out_norm(h)).view(-1, self.horizon, self.action_dim)  # (B, H, Da)
