"""ConditionalUnet1D with FiLM (scale and bias), the Diffusion Policy backbone, written from its description.

Shapes: B batch, H horizon, Da action dim, C channels. The network convolves over the horizon axis.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from genpolicy.policies.networks.common import TimeEmbedding, cond_table, pick


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int) -> None:
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class _CondResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = _ConvBlock(c_in, c_out, kernel, groups)
        self.block2 = _ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.index = 0

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(c).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1) each
        return self.modulate(x, scale, bias)

    def modulate(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)  # (B, C, H)
        h = self.block2(torch.addcmul(bias, scale, h))  # scale * h + bias
        return h + self.skip(x)

    def film_table(self, temb: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias) for every evaluation and row, (E, B, C, 1) each; Mish acts elementwise, so it splits."""
        act = self.film[0]
        scale, bias = cond_table(self.film[1], act(temb), act(cond)).unsqueeze(-1).chunk(2, dim=2)
        return scale.contiguous(), bias.contiguous()


class ConditionalUnet1D(nn.Module):
    """(x (B,H,Da), t (B,), cond (B,Dc), d (B,)|None) -> (B,H,Da). H must be divisible by 2**(len(down_dims)-1)."""

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (256, 512, 1024),
                 kernel_size: int = 5, n_groups: int = 8, time_dim: int = 128, use_step_size: bool = False) -> None:
        super().__init__()
        self.time = TimeEmbedding(time_dim, use_step_size)
        c_dim = time_dim + cond_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([
                _CondResBlock(a, b, c_dim, kernel_size, n_groups),
                _CondResBlock(b, b, c_dim, kernel_size, n_groups),
                nn.Conv1d(b, b, 3, stride=2, padding=1) if not last else nn.Identity(),
            ]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([_CondResBlock(mid, mid, c_dim, kernel_size, n_groups) for _ in range(2)])
        self.up = nn.ModuleList()
        rev = list(reversed(down_dims))
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            self.up.append(nn.ModuleList([
                _CondResBlock(a * 2, b, c_dim, kernel_size, n_groups),
                _CondResBlock(b, b, c_dim, kernel_size, n_groups),
                nn.ConvTranspose1d(b, b, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(_ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))
        for i, m in enumerate(m for m in self.modules() if isinstance(m, _CondResBlock)):
            m.index = i  # position of its FiLM table in `condition`

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        c = torch.cat([self.time(t, d), cond], dim=-1)  # (B, Dt+Dc)
        return self._run(x, lambda block, h: block(h, c))

    def _run(self, x: torch.Tensor, res: Callable[[_CondResBlock, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        h = x.transpose(1, 2)  # (B, Da, H)
        skips = []
        for res1, res2, downsample in self.down:
            h = res(res2, res(res1, h))
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = res(block, h)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res(res2, res(res1, h)))
        return self.final(h).transpose(1, 2)  # (B, H, Da)

    # --- the sampler's fast path: FiLM tables computed once per call -------------------------------------------
    def condition(self, t: torch.Tensor, d: torch.Tensor | None, cond: torch.Tensor) -> dict[str, Any]:
        """FiLM (scale, bias) of every block for E grid evaluations t (E,), d (E,)|None and cond (B,Dc)."""
        temb = self.time(t, d)  # (E, Dt)
        return {"film": [m.film_table(temb, cond) for m in self.modules() if isinstance(m, _CondResBlock)]}

    def denoise(self, x: torch.Tensor, e: int | torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        """Same output as forward(x, t[e], cond, d[e]) from the tables of `condition`."""
        def res(block: _CondResBlock, h: torch.Tensor) -> torch.Tensor:
            scale, bias = ctx["film"][block.index]
            return block.modulate(h, pick(scale, e), pick(bias, e))
        return self._run(x, res)
