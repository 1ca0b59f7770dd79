"""Steered policies: what DSRL and EXPO add to a diffusion/flow policy, kept inside the policy so that a fine-tuned
checkpoint deploys and evaluates exactly as it was fine-tuned.

- DSRL (`policy.steer=dsrl`): a latent-noise policy pi_W(w | s) picks the initial noise of a deterministic sampler
  (DDIM eta=0 or Euler); w is a tanh-Gaussian scaled into [-m, m], m = `steer_scale` (DSRL's action_magnitude).
- EXPO (`policy.steer=expo`): an edit policy pi_e(delta | s, a) proposes a' = clip(a + beta * delta), beta =
  `steer_scale`; the action is the argmax over N base samples and M edited ones of a Q ensemble's minimum.

Shapes: B batch, N base samples, M edited samples, C = N + M candidates, D = H * Da (a flattened chunk), Dc cond dim.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from genpolicy.policies.networks.rl import QEnsemble, TanhGaussianActor, subsample_min


class NoiseSteer(nn.Module):
    def __init__(self, cond_dim: int, noise_dim: int, magnitude: float, width: int, depth: int) -> None:
        super().__init__()
        self.magnitude = float(magnitude)
        self.actor = TanhGaussianActor(cond_dim, noise_dim, width, depth)

    def forward(self, cond: torch.Tensor, deterministic: bool = False,
                generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """cond (B, Dc) -> w (B, D) in [-m, m] with its log-density (B,) (the scaling's Jacobian included)."""
        out = self.actor(cond, deterministic=deterministic, generator=generator)
        m = self.magnitude
        return {"w": m * out["action"], "log_prob": out["log_prob"] - out["action"].shape[-1] * math.log(m),
                "mean": m * out["mean"]}


class EditSteer(nn.Module):
    def __init__(self, cond_dim: int, chunk_dim: int, beta: float, width: int, depth: int, n_q: int, n_base: int,
                 n_edit: int, n_min_q: int) -> None:
        super().__init__()
        self.beta, self.n_base, self.n_edit, self.n_min_q = float(beta), n_base, min(n_edit, n_base), n_min_q
        self.edit = TanhGaussianActor(cond_dim + chunk_dim, chunk_dim, width, depth)
        self.q = QEnsemble(cond_dim, chunk_dim, n_q, width, depth)

    def edit_actions(self, cond: torch.Tensor, a: torch.Tensor, deterministic: bool = False,
                     generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """(B, Dc), (B, D) -> edited actions a + beta * delta clipped to [-1, 1], with log pi_e(delta | s, a) (B,)."""
        out = self.edit(torch.cat([cond, a], -1), deterministic=deterministic, generator=generator)
        return {"action": (a + self.beta * out["action"]).clamp(-1.0, 1.0), "log_prob": out["log_prob"],
                "delta": out["action"]}

    @torch.no_grad()
    def select(self, cond: torch.Tensor, base: torch.Tensor, q: Optional[QEnsemble] = None, k: Optional[int] = None,
               deterministic: bool = False, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """The on-the-fly policy: cond (B, Dc), base samples (B, N, D) -> the argmax candidate (B, D).

        Candidates are the N base samples and edits of the first M of them; each is scored by the minimum over a
        random subset of k heads of `q` (default: this module's critic, all heads)."""
        b, n, d = base.shape
        edited = self.edit_actions(cond.repeat_interleave(self.n_edit, 0), base[:, : self.n_edit].reshape(-1, d),
                                   deterministic, generator)["action"].view(b, self.n_edit, d)  # (B, M, D)
        cand = torch.cat([base, edited], 1)  # (B, C, D)
        c = cand.shape[1]
        q = self.q if q is None else q
        scores = subsample_min(q(cond.repeat_interleave(c, 0), cand.reshape(-1, d)), k or len(q.qs), generator)
        idx = scores.view(b, c).argmax(1)  # (B,)
        return {"action": cand[torch.arange(b, device=cand.device), idx], "index": idx, "q": scores.view(b, c),
                "candidates": cand}


def make_steer(cfg: "PolicyConfig", cond_dim: int, chunk_dim: int) -> Optional[nn.Module]:  # noqa: F821
    if cfg.steer == "dsrl":
        return NoiseSteer(cond_dim, chunk_dim, cfg.steer_scale, cfg.steer_width, cfg.steer_depth)
    if cfg.steer == "expo":
        return EditSteer(cond_dim, chunk_dim, cfg.steer_scale, cfg.steer_width, cfg.steer_depth, cfg.expo_n_q,
                         cfg.expo_n_base, cfg.expo_n_edit, cfg.expo_min_q)
    return None
