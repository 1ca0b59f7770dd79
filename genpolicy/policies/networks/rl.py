"""Small RL networks shared by fine-tuning (critics, actors) and by steered policies at inference (DSRL's noise actor,
EXPO's edit policy and critic).

Shapes: B batch, E ensemble size, Ds input dim, Da output (action or noise) dim.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from genpolicy.policies.networks.common import layernorm_mlp


class QEnsemble(nn.Module):
    """E independent Q(s, a) MLPs with LayerNorm, evaluated together: (B, Ds), (B, Da) -> (E, B)."""

    def __init__(self, obs_dim: int, act_dim: int, n: int = 2, width: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.qs = nn.ModuleList([layernorm_mlp(obs_dim + act_dim, width, depth, nn.ReLU, out_dim=1) for _ in range(n)])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1)
        return torch.stack([q(x).squeeze(-1) for q in self.qs])  # (E, B)


def subsample_min(q: torch.Tensor, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """REDQ: the minimum over a random subset of k of the E heads, (E, B) -> (B,). k = E is the plain minimum."""
    if k >= q.shape[0]:
        return q.min(0).values
    idx = torch.randperm(q.shape[0], generator=generator)[:k].to(q.device)
    return q[idx].min(0).values


class TanhGaussianActor(nn.Module):
    """pi(a|s): tanh-squashed Gaussian, (B, Ds) -> sample (B, Da) in [-1, 1] with log-prob (B,)."""

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.body = layernorm_mlp(obs_dim, width, depth, nn.ReLU)
        self.mu, self.log_std = nn.Linear(width, act_dim), nn.Linear(width, act_dim)

    def forward(self, obs: torch.Tensor, deterministic: bool = False,
                generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        h = self.body(obs)
        mu, log_std = self.mu(h), self.log_std(h).clamp(-5.0, 2.0)
        std = log_std.exp()
        u = mu if deterministic else mu + std * torch.randn(mu.shape, generator=generator, device=mu.device)
        a = torch.tanh(u)
        log_prob = (-0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)  # tanh Jacobian
        return {"action": a, "log_prob": log_prob, "mean": torch.tanh(mu)}
