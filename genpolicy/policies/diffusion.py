"""Diffusion policy: DDPM training (epsilon or sample prediction), DDPM and DDIM(eta) sampling.

The sampling arithmetic follows diffusers' DDPMScheduler / DDIMScheduler ("leading" timestep spacing,
set_alpha_to_one, fixed_small variance, x0 clipping) so that a network trained either way samples the same;
tests/test_policies.py checks equality against diffusers to 1e-5.

Shapes: B batch, H horizon, Da action dim, Dc conditioning dim, T train timesteps, K sampling steps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from genpolicy.config import PolicyConfig
from genpolicy.policies.base import GenerativePolicy, ShapeMeta


def make_betas(schedule: str, n: int) -> torch.Tensor:
    """Beta schedule (T,), float32, computed the way diffusers does."""
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, n, dtype=torch.float32)

    def alpha_bar(t: float) -> float:  # iDDPM cosine ("squaredcos_cap_v2")
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                        dtype=torch.float32)


class DiffusionPolicy(GenerativePolicy):
    """DDPM-trained action chunk generator."""

    def __init__(self, cfg: PolicyConfig, shape: ShapeMeta) -> None:
        super().__init__(cfg, shape)
        betas = make_betas(cfg.beta_schedule, cfg.num_train_timesteps)
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0), persistent=False)  # (T,)
        self._on_sampler_change()

    # --- training -----------------------------------------------------------------------------------------------
    def per_sample_loss(self, cond: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """Denoising MSE per element (B,H,Da) at given normalised actions, noise and integer timesteps t (B,)."""
        ac = self.alphas_cumprod[t].view(-1, 1, 1)  # (B, 1, 1)
        x_t = ac.sqrt() * actions + (1 - ac).sqrt() * noise  # (B, H, Da)
        out = self.net(x_t, t.float(), cond)
        target = noise if self.cfg.prediction == "epsilon" else actions
        return (out - target) ** 2

    def loss(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        cond = self.encode(batch["obs"], generator)  # (B, Dc)
        actions = self.normalize_actions(batch["action"])  # (B, H, Da)
        b = actions.shape[0]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), generator=generator, device=actions.device)
        err = self.per_sample_loss(cond, actions, noise, t)  # (B, H, Da)
        if self.cfg.mask_padded_actions and "action_is_pad" in batch:
            keep = (~batch["action_is_pad"]).float().unsqueeze(-1)  # (B, H, 1)
            per = (err * keep).sum((1, 2)) / (keep.sum((1, 2)) * err.shape[-1]).clamp_min(1)
        else:
            per = err.mean((1, 2))  # (B,)
        return {"loss": per.mean(), "per_sample": per}

    # --- sampling grid -----------------------------------------------------------------------------------------
    def _on_sampler_change(self) -> None:
        c = self.cfg
        T, K = c.num_train_timesteps, c.steps
        if c.timestep_spacing == "leading":
            ts = (torch.arange(K) * (T // K)).flip(0)  # (K,) descending, as diffusers
        else:  # trailing: the first step starts from pure noise at t = T-1
            ts = torch.round(torch.arange(T, 0, -T / K, dtype=torch.float64)).long() - 1
        prev = torch.cat([ts[1:], torch.tensor([-1])])  # step to the next grid point; -1 means "to data"
        ac = self.alphas_cumprod.double().cpu()
        a_t = ac[ts]
        a_prev = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones(()).double())  # set_alpha_to_one
        if c.sampler == "ddim":
            var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
            std = c.eta * var.sqrt()
            self.stochastic = c.eta > 0
        else:  # ddpm posterior, fixed_small variance; no noise on the step to t=0
            beta_t = 1 - a_t / a_prev
            var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp_min(1e-20)
            std = torch.where(ts > 0, var.sqrt(), torch.zeros(()).double())
            self.stochastic = True
        f32 = lambda v: v.to(torch.float32)  # noqa: E731
        self._grid = {"t": ts, "a_t": f32(a_t), "a_prev": f32(a_prev), "std": f32(std)}
        self._grid_list = {k: v.tolist() for k, v in self._grid.items()}

    def step(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._grid_list
        t, a_t, a_prev, std = g["t"][k], g["a_t"][k], g["a_prev"][k], g["std"][k]
        out = self.net(x, torch.full((x.shape[0],), float(t), device=x.device), cond)  # (B, H, Da)
        sa, sb = math.sqrt(a_t), math.sqrt(1 - a_t)
        if self.cfg.prediction == "epsilon":
            x0, eps = (x - sb * out) / sa, out
        else:
            x0 = out
            eps = (x - sa * x0) / sb
        if self.cfg.clip_sample > 0:
            x0 = x0.clamp(-self.cfg.clip_sample, self.cfg.clip_sample)
        if self.cfg.sampler == "ddim":
            mean = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std * std, 0.0)) * eps
        else:
            beta_t = 1 - a_t / a_prev
            mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x0 + (math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)) * x
        return mean, torch.tensor(std, dtype=x.dtype, device=x.device)
