"""Observation encoders: state vectors and camera images -> one conditioning vector per sample.

Shapes: B batch, To observation steps, Ds state dim, 3xHxW images (uint8 in, float inside), F image features.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from genpolicy.errors import ConfigError


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, h, w) -> expected 2-D keypoint coordinates (B, 2K) (Levine et al. 2016)."""

    def __init__(self, in_channels: int, num_kp: int = 32) -> None:
        super().__init__()
        self.kp = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        self.num_kp = num_kp

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        logits = self.kp(feat).flatten(2)  # (B, K, h*w)
        attn = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=feat.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=feat.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attn * grid_x.reshape(1, 1, -1)).sum(-1)  # (B, K)
        ey = (attn * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=-1)  # (B, 2K)


def _groupnorm_resnet18() -> nn.Module:
    """ResNet-18 trunk from scratch with every BatchNorm replaced by GroupNorm (BatchNorm + EMA hurts, per DP)."""
    import torchvision  # optional dependency: only camera policies need it

    net = torchvision.models.resnet18(weights=None)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(max(child.num_features // 16, 1), child.num_features))
            else:
                swap(child)

    swap(net)
    return nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc: (B, 512, h, w)


def _conv_trunk(channels: int = 32) -> nn.Module:
    """A small DrQ-style trunk: four 3x3 convolutions (the first of stride 2) with GroupNorm and ReLU,
    (B, 3, H, W) -> (B, C, ~H/2 - 7, ~W/2 - 7), e.g. a 22x22 map from a 58-px crop where ResNet-18 gives 2x2.
    34k parameters against ResNet-18's 11M: ~9x faster per training step on this CPU."""
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(4):
        layers += [nn.Conv2d(c_in, channels, 3, stride=2 if i == 0 else 1), nn.GroupNorm(channels // 8, channels), nn.ReLU()]
        c_in = channels
    return nn.Sequential(*layers)


TRUNKS = {"resnet18": (_groupnorm_resnet18, 512), "conv": (_conv_trunk, 32)}  # builder, output channels


class ImageEncoder(nn.Module):
    """uint8 image (B, 3, H, W) -> features (B, F). Random crop when training, centre crop when evaluating."""

    def __init__(self, image_size: int, crop_ratio: float = 0.9, feature_dim: int = 64, num_kp: int = 32,
                 trunk: str = "resnet18") -> None:
        super().__init__()
        if trunk not in TRUNKS:
            raise ConfigError(f"policy.image_encoder must be one of {tuple(TRUNKS)}, got '{trunk}'")
        self.crop = max(int(round(image_size * crop_ratio)), 8)
        if trunk == "resnet18" and math.ceil(self.crop / 32) < 2:
            # ResNet-18 downsamples 32x: a 1x1 feature map gives spatial softmax one location, so the image is ignored
            raise ConfigError(f"images of {image_size} px (crops of {self.crop}) give ResNet-18 a 1x1 feature map and "
                              f"the policy would ignore them; use policy.image_encoder=conv or larger images (crops of >= 33 px)")
        build, channels = TRUNKS[trunk]
        self.trunk = build()
        self.pool = SpatialSoftmax(channels, num_kp)
        self.proj = nn.Sequential(nn.Linear(2 * num_kp, feature_dim), nn.ReLU())

    def _crop(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        _, _, h, w = x.shape
        c = self.crop
        if c >= h and c >= w:
            return x
        if self.training:
            # one random offset per sample: the augmentation Diffusion Policy found essential
            b = x.shape[0]
            oy = torch.randint(0, h - c + 1, (b,), device=x.device, generator=generator)
            ox = torch.randint(0, w - c + 1, (b,), device=x.device, generator=generator)
            rows = (oy[:, None] + torch.arange(c, device=x.device)[None])  # (B, c)
            cols = (ox[:, None] + torch.arange(c, device=x.device)[None])
            x = x[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, c, c, 3)
            return x.permute(0, 3, 1, 2)
        oy, ox = (h - c) // 2, (w - c) // 2
        return x[:, :, oy:oy + c, ox:ox + c]

    def forward(self, img: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = img.float() / 127.5 - 1.0  # uint8 -> [-1, 1]
        return self.proj(self.pool(self.trunk(self._crop(x, generator))))  # (B, F)


class ObsEncoder(nn.Module):
    """Normalised observation dict {state: (B,To,Ds), image.<cam>: (B,To,3,H,W)} -> cond (B, To*(Ds + n_cams*F))."""

    def __init__(self, state_dim: int, cameras: tuple[str, ...], n_obs_steps: int, image_size: int = 84,
                 crop_ratio: float = 0.9, feature_dim: int = 64, state_indices: Sequence[int] = (),
                 image_encoder: str = "resnet18") -> None:
        super().__init__()
        self.cameras = tuple(cameras)
        bad = [i for i in state_indices if i >= state_dim]
        if bad:
            raise ConfigError(f"policy.state_indices {bad} out of range for a state of dim {state_dim}")
        # not persistent: the saved PolicyConfig carries the selection, and older checkpoints still load
        self.register_buffer("state_indices", torch.as_tensor(list(state_indices), dtype=torch.long), persistent=False)
        state_dim = len(state_indices) or state_dim
        self.images = nn.ModuleDict({cam: ImageEncoder(image_size, crop_ratio, feature_dim, trunk=image_encoder)
                                     for cam in self.cameras})
        self.out_dim = n_obs_steps * (state_dim + len(self.cameras) * feature_dim)

    def forward(self, obs: dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        state = obs["state"]  # (B, To, Ds)
        if self.state_indices.numel():
            state = state.index_select(-1, self.state_indices)  # (B, To, Ds') only the dims the policy may see
        b, to = state.shape[:2]
        parts = [state]
        for cam in self.cameras:
            img = obs[f"image.{cam}"]  # (B, To, 3, H, W)
            feats = self.images[cam](img.flatten(0, 1), generator)  # (B*To, F)
            parts.append(feats.view(b, to, -1))
        return torch.cat(parts, dim=-1).flatten(1)  # (B, To*(Ds+n_cams*F))
