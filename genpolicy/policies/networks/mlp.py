"""Residual MLP denoiser with FiLM conditioning: the fast choice for state-based tasks.

Shapes: B batch, H horizon, Da action dim, Dc conditioning dim, W width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genpolicy.policies.networks.common import TimeEmbedding, cond_table, pick


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
        return self.modulate(h, 1 + scale, shift)

    def modulate(self, h: torch.Tensor, scale1: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        y = torch.addcmul(shift, self.norm(h), scale1)  # norm(h) * (1 + scale) + shift
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

    # --- the sampler's fast path: conditioning computed once per call, only the x path per step ---------------
    def condition(self, t: torch.Tensor, d: torch.Tensor | None, cond: torch.Tensor) -> dict[str, Any]:
        """Everything that does not depend on x, for E grid evaluations t (E,), d (E,)|None and cond (B,Dc).

        Tables are kept both stacked (E, B, W), for per-row evaluations, and as per-evaluation lists, so a step
        indexes a Python list instead of dispatching a tensor select; weights are pre-transposed views."""
        temb = self.time(t, d)  # (E, Dt)
        hx = self.horizon * self.action_dim
        w_x, w_tc = torch.split(self.inp.weight, [hx, self.inp.weight.shape[1] - hx], dim=1)
        w_t, w_c = torch.split(w_tc, [temb.shape[1], cond.shape[1]], dim=1)
        inp = (temb @ w_t.t()).unsqueeze(1) + torch.addmm(self.inp.bias, cond, w_c.t()).unsqueeze(0)  # (E, B, W)
        blocks = []
        for block in self.blocks:
            scale, shift = cond_table(block.film, temb, cond).chunk(2, dim=-1)  # (E, B, W) each
            scale1, shift = (1 + scale).contiguous(), shift.contiguous()
            blocks.append({"scale1": scale1, "shift": shift, "scale1_l": list(scale1.unbind(0)),
                           "shift_l": list(shift.unbind(0)), "w1": block.fc1.weight.t(), "w2": block.fc2.weight.t()})
        return {"inp": inp, "inp_l": list(inp.unbind(0)), "w_x": w_x.t(), "blocks": blocks,
                "w_out": self.out.weight.t()}

    def denoise(self, x: torch.Tensor, e: int | torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        """Same output as forward(x, t[e], cond, d[e]) from the tables of `condition`."""
        one = isinstance(e, int)
        h = torch.addmm(ctx["inp_l"][e] if one else pick(ctx["inp"], e), x.flatten(1), ctx["w_x"])  # (B, W)
        for block, tb in zip(self.blocks, ctx["blocks"]):
            scale1 = tb["scale1_l"][e] if one else pick(tb["scale1"], e)
            shift = tb["shift_l"][e] if one else pick(tb["shift"], e)
            n = block.norm
            y = torch.addcmul(shift, F.layer_norm(h, n.normalized_shape, n.weight, n.bias, n.eps), scale1)
            y = torch.addmm(block.fc1.bias, F.mish(y), tb["w1"])
            h = torch.addmm(block.fc2.bias, F.mish(y), tb["w2"]).add_(h)  # residual
        n = self.out_norm
        h = F.layer_norm(h, n.normalized_shape, n.weight, n.bias, n.eps)
        return torch.addmm(self.out.bias, h, ctx["w_out"]).view(-1, self.horizon, self.action_dim)  # (B, H, Da)
