"""Building blocks shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Embeds a float time (B,) into (B, dim) sin/cos features (transformer-style, max period 10k)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]  # (B, dim/2)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class TimeEmbedding(nn.Module):
    """Time (and optional shortcut step size) -> conditioning features (B, dim)."""

    def __init__(self, dim: int, use_step_size: bool) -> None:
        super().__init__()
        self.sin = SinusoidalEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))
        self.step_mlp = (
            nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim)) if use_step_size else None
        )

    def forward(self, t: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        emb = self.mlp(self.sin(t))  # (B, dim)
        if self.step_mlp is not None:
            if d is None:
                d = torch.zeros_like(t)
            emb = emb + self.step_mlp(self.sin(d))
        return emb


def split_linear(layer: nn.Linear, sizes: list[int]) -> list[torch.Tensor]:
    """Column blocks of a Linear's weight, so W @ cat(a, b) + bias = W_a @ a + W_b @ b + bias."""
    return list(torch.split(layer.weight, sizes, dim=1))


def pick(table: torch.Tensor, e: "int | torch.Tensor") -> torch.Tensor:
    """Row e of a precomputed (E, B, ...) table: (B, ...). e is one index, or (B,) per-row indices."""
    if isinstance(e, int):
        return table[e]
    return table[e, torch.arange(table.shape[1], device=table.device)]


def cond_table(layer: nn.Linear, temb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """layer(cat(temb_e, cond_b)) for every evaluation e and row b: (E, B, out), computed in two small matmuls."""
    w_t, w_c = split_linear(layer, [temb.shape[1], cond.shape[1]])
    return (temb @ w_t.t()).unsqueeze(1) + torch.addmm(layer.bias, cond, w_c.t()).unsqueeze(0)


def layernorm_mlp(in_dim: int, width: int, depth: int, act: type[nn.Module] = nn.Mish,
                  out_dim: int | None = None) -> nn.Sequential:
    """depth x (Linear, LayerNorm, act), then a Linear to out_dim when given: critics, value nets, actors."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.LayerNorm(width), act()]
        d = width
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
