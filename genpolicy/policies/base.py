"""What every generative policy shares: normalisation, observation encoding, the chain view and deployment.

A family (diffusion.py, flow.py) subclasses GenerativePolicy once and supplies the training loss and `step`.

Shapes: B batch, To obs steps, H horizon, Ta executed steps, Da action dim, Dc conditioning dim, K sampling steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from genpolicy.config import PolicyConfig
from genpolicy.policies.chunking import ActionQueue, ObsHistory
from genpolicy.policies.networks.encoders import ObsEncoder
from genpolicy.policies.networks.mlp import ResidualMLP
from genpolicy.policies.networks.unet1d import ConditionalUnet1D
from genpolicy.policies.normalizer import Normalizer
from genpolicy.policies.samplers import Chain, gaussian_log_prob, run_chain


@dataclass
class ShapeMeta:
    """The data a policy consumes and produces. Saved next to the PolicyConfig."""

    state_dim: int
    action_dim: int
    cameras: list[str] = field(default_factory=list)
    image_size: int = 84

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerativePolicy(nn.Module):
    """Base for diffusion and flow policies. Subclasses implement `loss`, `_grid` and `step`."""

    stochastic: bool = False  # whether the current grid adds noise at some step

    def __init__(self, cfg: PolicyConfig, shape: ShapeMeta) -> None:
        super().__init__()
        self.cfg, self.shape = cfg, shape
        self.normalizer = Normalizer({"state": shape.state_dim, "action": shape.action_dim},
                                     {"state": cfg.normalizer, "action": "minmax"})
        self.obs_encoder = ObsEncoder(shape.state_dim, tuple(shape.cameras), cfg.n_obs_steps, shape.image_size,
                                      cfg.crop_ratio, cfg.image_feature_dim)
        self.net = self._build_net(self.obs_encoder.out_dim, use_step_size=self._uses_step_size())
        self._history = ObsHistory(cfg.n_obs_steps)
        self._queue = ActionQueue()

    # --- construction -------------------------------------------------------------------------------------------
    def _uses_step_size(self) -> bool:
        return False

    def _build_net(self, cond_dim: int, use_step_size: bool) -> nn.Module:
        c = self.cfg
        if c.network == "mlp":
            return ResidualMLP(c.horizon, self.shape.action_dim, cond_dim, c.width, c.depth, c.time_dim, use_step_size)
        return ConditionalUnet1D(c.horizon, self.shape.action_dim, cond_dim, tuple(c.down_dims), c.kernel_size,
                                 c.n_groups, c.time_dim, use_step_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- data side ----------------------------------------------------------------------------------------------
    def encode(self, obs: dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Raw observation window {state: (B,To,Ds), image.<cam>: (B,To,3,H,W) uint8} -> cond (B, Dc).

        In train mode image crops are random (drawn from `generator` when given, for exact resume)."""
        normed = dict(obs)
        normed["state"] = self.normalizer.normalize("state", obs["state"].float())
        return self.obs_encoder(normed, generator)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize("action", actions)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize("action", actions)

    # --- family-specific ----------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """BC loss on a batch {obs: {...}, action: (B,H,Da) raw, action_is_pad: (B,H)}; returns {'loss', 'per_sample'}."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, k: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chain step on the current grid: x_k (B,H,Da) -> (mean (B,H,Da), std broadcastable)."""
        raise NotImplementedError

    def set_sampler(self, sampler: Optional[str] = None, steps: Optional[int] = None) -> None:
        """Switch the sampling method or number of steps (validated like the config)."""
        d = asdict(self.cfg)
        if sampler:
            d["sampler"] = sampler
        if steps:
            d["steps"] = steps
        self.cfg = PolicyConfig(**d)
        self._on_sampler_change()

    def _on_sampler_change(self) -> None:
        pass

    # --- the chain view ------------------------------------------------------------------------------------------
    def initial_noise(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn((batch, self.cfg.horizon, self.shape.action_dim), generator=generator, device=self.device)

    def sample(self, cond: torch.Tensor, noise: Optional[torch.Tensor] = None, step_noise: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised action chunk (B,H,Da) from initial noise x_K (B,H,Da); deterministic grids need only `noise`."""
        if noise is None:
            noise = self.initial_noise(cond.shape[0], generator)
        return run_chain(self.step, cond, noise, self.cfg.steps, self.stochastic, step_noise, generator)  # type: ignore[return-value]

    def sample_chain(self, cond: torch.Tensor, noise: Optional[torch.Tensor] = None,
                     step_noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> Chain:
        """Like `sample`, but keeps every chain state with its step means and stds."""
        if noise is None:
            noise = self.initial_noise(cond.shape[0], generator)
        return run_chain(self.step, cond, noise, self.cfg.steps, self.stochastic, step_noise, generator, keep_chain=True)  # type: ignore[return-value]

    def step_log_prob(self, cond: torch.Tensor, x: torch.Tensor, x_next: torch.Tensor, k: int,
                      min_std: float = 1e-3) -> torch.Tensor:
        """log p(x_next | x) of grid step k, summed over (H, Da): (B,). std is floored at min_std.

        Old and new log-probs must both come from here, on the same grid (see DESIGN.md).
        """
        mean, std = self.step(x, k, cond)
        std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).clamp_min(min_std).expand_as(mean)
        return gaussian_log_prob(x_next, mean, std).flatten(1).sum(-1)

    # --- deployment ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, torch.Tensor], noise: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Raw observation window -> action chunk in env units (B, H, Da), starting at the current step."""
        cond = self.encode(obs)
        x = self.sample(cond, noise=noise, generator=generator)
        return self.unnormalize_actions(x.clamp(-1.0, 1.0))

    def reset(self) -> None:
        """Forget observation history and pending actions (call at every episode start)."""
        self._history.reset()
        self._queue.reset()

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> torch.Tensor:
        """One observation {state: (B,Ds) or (Ds,), ...} -> one action (B,Da), re-planning every Ta steps."""
        step_obs = {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, device=self.device)
                    for k, v in obs.items()}
        single = step_obs["state"].ndim == 1
        if single:
            step_obs = {k: v.unsqueeze(0) for k, v in step_obs.items()}
        window = self._history.push(step_obs)
        if len(self._queue) == 0:
            chunk = self.predict_chunk(window)  # (B, H, Da)
            self._queue.extend(chunk[:, : self.cfg.n_action_steps])
        action = self._queue.pop()
        return action[0] if single else action
