"""Per-key affine normalisation whose statistics live inside the policy's state dict.

Every key maps x -> x * scale + offset. `minmax` sends the data range to [-1, 1]; `meanstd` standardises.
Buffers are created at construction with the right shapes, so a saved policy loads strictly and a policy can
never be paired with statistics from another dataset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genpolicy.errors import DataError

_RANGE_EPS = 1e-4  # dimensions that barely move are centred, not blown up


class Normalizer(nn.Module):
    """Holds scale/offset plus raw stats (min, max, mean, std) for each key."""

    def __init__(self, dims: dict[str, int], modes: dict[str, str]) -> None:
        super().__init__()
        self.keys = sorted(dims)
        self.modes = dict(modes)
        for key in self.keys:
            if modes[key] not in ("minmax", "meanstd"):
                raise DataError(f"normaliser mode for '{key}' must be 'minmax' or 'meanstd', got '{modes[key]}'")
            d = dims[key]
            for stat in ("scale", "offset", "min", "max", "mean", "std"):
                init = torch.ones(d) if stat in ("scale", "std") else torch.zeros(d)
                self.register_buffer(self._name(key, stat), init)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _name(key: str, stat: str) -> str:
        return f"{key.replace('.', '__')}__{stat}"

    def stat(self, key: str, stat: str) -> torch.Tensor:
        """Return one statistic tensor, e.g. stat('action', 'min')."""
        return getattr(self, self._name(key, stat))

    def fit(self, data: dict[str, np.ndarray]) -> None:
        """Compute statistics from arrays of shape (N, D) for every key."""
        for key in self.keys:
            if key not in data:
                raise DataError(f"cannot fit normaliser: key '{key}' missing from data")
            x = torch.as_tensor(np.asarray(data[key], dtype=np.float64))
            if x.ndim != 2 or x.shape[1] != self.stat(key, "min").shape[0]:
                raise DataError(f"cannot fit normaliser: '{key}' has shape {tuple(x.shape)}, expected (N, {self.stat(key, 'min').shape[0]})")
            lo, hi = x.min(0).values, x.max(0).values
            mean, std = x.mean(0), x.std(0, unbiased=False)
            if self.modes[key] == "minmax":
                rng = hi - lo
                scale = torch.where(rng > _RANGE_EPS, 2.0 / rng.clamp_min(_RANGE_EPS), torch.ones_like(rng))
                offset = -(hi + lo) / 2.0 * scale
            else:
                safe = torch.where(std > _RANGE_EPS, std, torch.ones_like(std))
                scale, offset = 1.0 / safe, -mean / safe
            for name, val in (("scale", scale), ("offset", offset), ("min", lo), ("max", hi), ("mean", mean), ("std", std)):
                self.stat(key, name).copy_(val.to(torch.float32))
        self.fitted.fill_(True)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Map raw values of `key` (..., D) into the policy's space."""
        return x * self.stat(key, "scale") + self.stat(key, "offset")

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """Inverse of normalize."""
        return (y - self.stat(key, "offset")) / self.stat(key, "scale")
