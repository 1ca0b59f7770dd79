"""Diffusion policy: DDPM training (epsilon or sample prediction), DDPM and DDIM(eta) sampling.

The sampling grid (samplers.diffusion_grid) follows diffusers' DDPMScheduler / DDIMScheduler ("leading" or
"trailing" timestep spacing, set_alpha_to_one, fixed_small variance, x0 clipping) so that a network trained either way
samples the same; tests/test_policies.py checks equality against diffusers to 1e-5.

Shapes: B batch, H horizon, Da action dim, Dc conditioning dim, T train timesteps, K sampling steps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from genpolicy.policies.base import GenerativePolicy, ShapeMeta
from genpolicy.policies.config import PolicyConfig
from genpolicy.policies.samplers import Grid, diffusion_grid


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
    def _make_grid(self) -> Grid:
        c = self.cfg
        return diffusion_grid(self.alphas_cumprod, c.sampler, c.steps, c.timestep_spacing, c.eta, c.prediction,
                              c.clip_sample)
