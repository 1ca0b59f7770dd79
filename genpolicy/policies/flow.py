"""Flow-matching policy (rectified flow) with an optional shortcut head for 1-to-4-step sampling.

Flow time: t=0 is noise, t=1 is data (everywhere in genpolicy). x_t = (1-t)*z + t*a, velocity target a - z.
The shortcut model (Frans et al., 2024) conditions the network on a step size d and trains big steps to agree with
two half steps, so `sampler=shortcut steps=1` jumps from noise to data in one network call.

Shapes: B batch, H horizon, Da action dim, Dc conditioning dim, K sampling steps.
"""

from __future__ import annotations

from typing import Optional

import torch

from genpolicy.policies.base import GenerativePolicy, ShapeMeta
from genpolicy.policies.config import PolicyConfig
from genpolicy.policies.samplers import TIME_SCALE, Grid, flow_grid



class FlowPolicy(GenerativePolicy):
    """Rectified-flow action chunk generator."""

    def __init__(self, cfg: PolicyConfig, shape: ShapeMeta) -> None:
        super().__init__(cfg, shape)
        self._on_sampler_change()

    def _uses_step_size(self) -> bool:
        return self.cfg.shortcut

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predicted velocity (B,H,Da) at flow time t (B,), for step size d (B,) (0 = instantaneous)."""
        if self.cfg.shortcut:
            dd = (d if d is not None else torch.zeros_like(t)) * TIME_SCALE
            return self.net(x, t * TIME_SCALE, cond, dd)
        return self.net(x, t * TIME_SCALE, cond)

    # --- training -----------------------------------------------------------------------------------------------
    def sample_time(self, b: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        u = torch.rand(b, generator=generator, device=device)
        if self.cfg.time_sampling == "uniform":
            return u
        # t ~ Beta(1, 1.5) by inverse CDF: more weight near noise (pi0 uses Beta(1.5, 1) with t=1 as noise)
        return 1.0 - (1.0 - u) ** (1.0 / 1.5)

    def per_sample_loss(self, cond: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """Conditional flow-matching error per element (B,H,Da) at given actions, noise and times t (B,) (FPO uses this)."""
        tt = t.view(-1, 1, 1)
        x_t = (1 - tt) * noise + tt * actions  # (B, H, Da)
        return (self.velocity(x_t, t, cond) - (actions - noise)) ** 2

    def _shortcut_loss(self, cond: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
        """Self-consistency: one step of size 2d equals two steps of size d. Returns (B,) errors."""
        b, dev = actions.shape[0], actions.device
        levels = self.cfg.shortcut_levels
        j = torch.randint(0, levels, (b,), generator=generator, device=dev)
        d2 = 2.0 ** (-j.float())  # (B,) the big step, in {1, 1/2, ..., 2^-(L-1)}
        d = d2 / 2
        n_slots = (1.0 / d2).long()
        t = (torch.rand(b, generator=generator, device=dev) * n_slots).floor() * d2  # multiples of 2d in [0, 1-2d]
        tt = t.view(-1, 1, 1)
        x_t = (1 - tt) * noise + tt * actions
        d_query = torch.where(d <= 2.0 ** (-levels), torch.zeros_like(d), d)  # the finest level is plain flow
        with torch.no_grad():
            s1 = self.velocity(x_t, t, cond, d_query)
            x_mid = x_t + d.view(-1, 1, 1) * s1
            s2 = self.velocity(x_mid, t + d, cond, d_query)
            target = (s1 + s2) / 2
        return ((self.velocity(x_t, t, cond, d2) - target) ** 2).mean((1, 2))

    def loss(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        cond = self.encode(batch["obs"], generator)  # (B, Dc)
        actions = self.normalize_actions(batch["action"])  # (B, H, Da)
        b, dev = actions.shape[0], actions.device
        noise = torch.randn(actions.shape, generator=generator, device=dev)
        n_sc = int(round(b * self.cfg.shortcut_fraction)) if self.cfg.shortcut else 0
        n_fm = b - n_sc
        t = self.sample_time(n_fm, generator, dev)
        err = self.per_sample_loss(cond[:n_fm], actions[:n_fm], noise[:n_fm], t)  # (Bf, H, Da)
        if self.cfg.mask_padded_actions and "action_is_pad" in batch:
            keep = (~batch["action_is_pad"][:n_fm]).float().unsqueeze(-1)
            per = (err * keep).sum((1, 2)) / (keep.sum((1, 2)) * err.shape[-1]).clamp_min(1)
        else:
            per = err.mean((1, 2))
        out = {"loss_fm": per.mean()}
        if n_sc > 0:
            sc = self._shortcut_loss(cond[n_fm:], actions[n_fm:], noise[n_fm:], generator)
            per = torch.cat([per, sc])
            out["loss_shortcut"] = sc.mean()
        out.update(loss=per.mean(), per_sample=per)
        return out

    # --- sampling grid -----------------------------------------------------------------------------------------
    def _make_grid(self) -> Grid:
        # the adaptive sampler has no fixed grid; its Euler grid of the same K serves the chain view and warm starts
        method = "euler" if self.cfg.sampler == "adaptive" else self.cfg.sampler
        return flow_grid(method, self.cfg.steps, step_size_input=self.cfg.shortcut)
