"""The sampling engine: turn noise x_K into an action chunk x_0 through K Gaussian steps.

Every policy is a chain x_{k+1} = mean_k(x_k) + std_k * z_k (k = 0 is the first step from noise). A policy supplies
`step(x, k, cond) -> (mean, std)` on its precomputed grid; this module runs the loop once, for all families.

Shapes: B batch, K sampling steps, H horizon, Da action dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

StepFn = Callable[[torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Chain:
    """A sampled chain. chain[:, 0] is the initial noise and chain[:, -1] the action chunk (normalised)."""

    chain: torch.Tensor  # (B, K+1, H, Da)
    means: torch.Tensor  # (B, K, H, Da)
    stds: torch.Tensor  # (B, K, H, Da) or broadcastable (1, K, 1, 1)

    @property
    def actions(self) -> torch.Tensor:
        return self.chain[:, -1]


def run_chain(step: StepFn, cond: torch.Tensor, noise: torch.Tensor, n_steps: int, stochastic: bool,
              step_noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
              keep_chain: bool = False) -> torch.Tensor | Chain:
    """Run K steps from `noise` (B,H,Da). `step_noise` (K,B,H,Da) fixes the per-step draws for reproducibility.

    Returns the final sample, or a Chain when keep_chain is set. Deterministic grids draw nothing.
    """
    x = noise
    xs, means, stds = [x], [], []
    for k in range(n_steps):
        mean, std = step(x, k, cond)
        if stochastic:
            if step_noise is not None:
                z = step_noise[k]
            else:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + std * z
        else:
            x = mean
        if keep_chain:
            xs.append(x)
            means.append(mean)
            stds.append(torch.as_tensor(std, dtype=x.dtype, device=x.device).expand_as(mean))
    if not keep_chain:
        return x
    return Chain(chain=torch.stack(xs, 1), means=torch.stack(means, 1), stds=torch.stack(stds, 1))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    var = std * std
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * torch.pi * var))
