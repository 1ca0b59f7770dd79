"""Shared off-policy machinery: a transition replay, Q ensembles with LayerNorm, REDQ-style subsampled minimum,
Polyak target updates, and an auto-tuned temperature. Used by the SAC expert trainer (experts/sac.py) and by the
off-policy fine-tuning algorithms.

Shapes: B batch, E ensemble size, Ds state (or conditioning) dim, Da action dim (a flattened chunk counts as one action).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from genpolicy.policies.networks.common import layernorm_mlp


class Replay:
    """A ring buffer of (obs, action, reward, next_obs, terminated) on one device."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device) -> None:
        self.capacity, self.device, self.n, self.i = capacity, device, 0, 0
        z = lambda *s: torch.zeros(capacity, *s, device=device)  # noqa: E731
        self.obs, self.next_obs, self.action = z(obs_dim), z(obs_dim), z(act_dim)
        self.reward, self.terminated = z(), z()

    def add(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
            terminated: torch.Tensor) -> None:
        """Add a batch of transitions (N, ...); the oldest rows are overwritten when full."""
        n = obs.shape[0]
        k = (self.i + torch.arange(n, device=self.device)) % self.capacity
        self.obs[k], self.action[k], self.reward[k] = obs.to(self.device), action.to(self.device), reward.to(self.device).float()
        self.next_obs[k], self.terminated[k] = next_obs.to(self.device), terminated.to(self.device).float()
        self.i = (self.i + n) % self.capacity
        self.n = min(self.n + n, self.capacity)

    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.n, (batch,), generator=generator).to(self.device)
        return {"obs": self.obs[idx], "action": self.action[idx], "reward": self.reward[idx],
                "next_obs": self.next_obs[idx], "terminated": self.terminated[idx]}


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


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)


class Temperature(nn.Module):
    """SAC's alpha, tuned so the policy's entropy tracks `target_entropy`."""

    def __init__(self, init: float = 0.1, target_entropy: float = 0.0) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init)))
        self.target_entropy = target_entropy

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()


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
