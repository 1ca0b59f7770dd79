"""ReinFlow (Zhang et al., 2025): PPO for flow policies through a learned noise injected into every Euler step.

Each of the K Euler (or shortcut) steps becomes Gaussian: x_{k+1} ~ N(x_k + dt * v(x_k, t_k), sigma_phi(s, k)^2),
with sigma from a small noise network whose output h is squashed as
  log sigma^2 = log sigma_min^2 + (log sigma_max^2 - log sigma_min^2) * (tanh h + 1) / 2,
so sigma stays in [sigma_min, sigma_max]. Draws are clipped at randn_clip. The chain's log-likelihood is exact:
log N(x_0; 0, I) + sum_k log N(x_{k+1}; mu_k, sigma_k^2) over the executed Ta rows, normalised by (K+1) * Ta * Da as
the paper does. The rollout and the update evaluate the velocity on one grid (the policy's), so the first ratio is 1
(the reference's two grids made it differ). The loss adds -entropy_coef * (per-element entropy rate) and, optionally,
a BC-W2 term: the MSE between the fine-tuned and the frozen BC policy's deterministic chunks from the same noise.
The saved checkpoint samples deterministically on the same K-step grid (the noise network is only for exploration).

Shapes: N envs, M minibatch, K steps, H horizon, Ta executed steps, Da action dim, Dc conditioning dim, Dt time dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from genpolicy.finetune.config import FinetuneConfig, ReinFlowConfig
from genpolicy.finetune.ppo import frozen_copy, policy_for_finetuning
from genpolicy.policies.base import GenerativePolicy
from genpolicy.policies.samplers import gaussian_log_prob, grid_step


class NoiseNet(nn.Module):
    """sigma(s, k) in [sigma_min, sigma_max] for every chunk element: (M, Dc), (M,) step -> (M, H, Da)."""

    def __init__(self, cond_dim: int, n_steps: int, horizon: int, action_dim: int, c: ReinFlowConfig) -> None:
        super().__init__()
        self.shape, self.time_dependent = (horizon, action_dim), c.time_dependent
        self.step_emb = nn.Embedding(n_steps, 16)
        layers: list[nn.Module] = []
        d = cond_dim + (16 if c.time_dependent else 0)
        for w in c.noise_hidden:
            layers += [nn.Linear(d, w), nn.Tanh()]
            d = w
        self.out = nn.Linear(d, horizon * action_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # start at the middle of the range (in log-variance)
        self.body = nn.Sequential(*layers)
        self.lo, self.hi = 2 * math.log(c.sigma_min), 2 * math.log(c.sigma_max)

    def forward(self, cond: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        h = torch.cat([cond, self.step_emb(k)], -1) if self.time_dependent else cond
        h = self.out(self.body(h))
        log_var = self.lo + (self.hi - self.lo) * (torch.tanh(h) + 1) / 2
        return torch.exp(0.5 * log_var).view(-1, *self.shape)


class ReinFlow:
    def __init__(self, bc: GenerativePolicy, cfg: FinetuneConfig, device: torch.device) -> None:
        c = self.c = cfg.reinflow
        sampler = c.sampler or (bc.cfg.sampler if bc.cfg.sampler in ("euler", "shortcut") else "euler")
        policy = policy_for_finetuning(bc, "reinflow", "flow", device, sampler=sampler, steps=c.steps or bc.cfg.steps)
        self.policy = policy
        self.K, self.Da = policy.cfg.steps, policy.shape.action_dim
        # rows of the chunk in the likelihood: the executed Ta (the reference's choice) or all H
        self.Ta = policy.cfg.horizon if c.likelihood_rows == "all" else policy.cfg.n_action_steps
        self.noise = NoiseNet(policy.obs_encoder.out_dim, self.K, policy.cfg.horizon, self.Da, c).to(device)
        self.ref = frozen_copy(policy) if c.bc_w2_coef > 0 else None
        self.eps = cfg.ppo.clip_eps

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.policy.net.parameters()) + list(self.noise.parameters())

    def modules(self) -> dict[str, nn.Module]:
        return {"noise_net": self.noise}

    def describe(self) -> dict[str, Any]:
        return {"grid": f"{self.policy.cfg.sampler} {self.K}", "sigma": [self.c.sigma_min, self.c.sigma_max],
                "entropy_coef": self.c.entropy_coef}

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        policy = self.policy
        cond = policy.encode(obs)
        x = policy.initial_noise(cond.shape[0])
        den = policy.make_denoiser(cond)
        xs = [x]
        for k in range(self.K):
            mean, _ = grid_step(policy.grid, k, x, den)
            sigma = self.noise(cond, torch.full((cond.shape[0],), k, device=cond.device))  # (N, H, Da)
            z = torch.randn_like(mean).clamp(-self.c.randn_clip, self.c.randn_clip)
            x = mean + sigma * z
            xs.append(x)
        return {"actions": x, "chain": torch.stack(xs, 1)}  # chain: (N, K+1, H, Da)

    def samples(self, flat: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"cond": flat["cond"], "chain": flat["chain"], "adv": flat["adv"]}

    def step_dist(self, cond: torch.Tensor, chain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussians the log-likelihood scores each step of a chain (M, K+1, H, Da) under: mean and sigma
        (M*K, H, Da), rows ordered (sample, step)."""
        m = chain.shape[0]
        cond_rows = cond.repeat_interleave(self.K, 0)  # (M*K, Dc): rows are (sample, step) pairs
        x = chain[:, :-1].flatten(0, 1)  # (M*K, H, Da) all steps in one batch
        k = torch.arange(self.K, device=chain.device).repeat(m)  # (M*K,)
        mean, _ = grid_step(self.policy.grid, k, x, self.policy.make_denoiser(cond_rows, cached=False))
        return mean, self.noise(cond_rows, k)

    def _log_prob(self, cond: torch.Tensor, chain: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised chain log-likelihood (M,) and entropy rate (M,), executed rows only."""
        m = chain.shape[0]
        mean, sigma = self.step_dist(cond, chain)  # (M*K, H, Da)
        lp = gaussian_log_prob(chain[:, 1:].flatten(0, 1), mean, sigma)[:, : self.Ta].sum((1, 2)).view(m, self.K)
        lp0 = gaussian_log_prob(chain[:, 0, : self.Ta], torch.zeros(()), torch.ones(())).sum((1, 2))  # (M,)
        n = (self.K + 1) * self.Ta * self.Da
        ent = (0.5 * torch.log(2 * math.pi * math.e * sigma[:, : self.Ta] ** 2)).sum((1, 2)).view(m, self.K).sum(1)
        ent0 = 0.5 * math.log(2 * math.pi * math.e) * self.Ta * self.Da
        return {"logp": (lp.sum(1) + lp0) / n, "entropy": (ent + ent0) / n, "sigma": sigma.detach().mean()}

    @torch.no_grad()
    def prepare(self, samples: dict[str, torch.Tensor]) -> None:
        idx = torch.arange(samples["adv"].shape[0]).split(2048)
        samples["old_logp"] = torch.cat([self._log_prob(samples["cond"][i], samples["chain"][i])["logp"] for i in idx])

    def loss(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = self._log_prob(mb["cond"], mb["chain"])
        aux = -self.c.entropy_coef * out["entropy"].mean()
        if self.ref is not None:  # BC-W2: stay near the BC policy's deterministic map from the same noise
            noise = mb["chain"][:, 0]
            with torch.no_grad():
                target = self.ref.sample(mb["cond"], noise=noise)
            aux = aux + self.c.bc_w2_coef * (self.policy.sample(mb["cond"], noise=noise) - target).pow(2).mean()
        return {"log_ratio": out["logp"] - mb["old_logp"], "clip_eps": self.eps, "aux_loss": aux,
                "stats": {"logp_min": out["logp"].min().detach(), "logp_max": out["logp"].max().detach(),
                          "entropy": out["entropy"].mean().detach(), "sigma_mean": out["sigma"]}}

