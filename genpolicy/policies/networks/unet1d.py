"""ConditionalUnet1D with FiLM (scale and bias), the Diffusion Policy backbone, written from its description.

Shapes: B batch, H horizon, Da action dim, C channels. The network convolves over the horizon axis.
"""

from __future__ import annotations

import torch
from torch import nn

from genpolicy.policies.networks.common import TimeEmbedding


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

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)  # (B, C, H)
        scale, bias = self.film(c).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1) each
        h = self.block2(scale * h + bias)
        return h + self.skip(x)


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

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        c = torch.cat([self.time(t, d), cond], dim=-1)  # (B, Dt+Dc)
        h = x.transpose(1, 2)  # (B, Da, H)
        skips = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, c), c)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, c)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, c), c))
        return self.final(h).transpose(1, 2)  # (B, H, Da)
