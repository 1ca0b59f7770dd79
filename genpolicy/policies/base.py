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

from genpolicy.errors import ConfigError
from genpolicy.policies.chunking import ActionQueue, ObsHistory
from genpolicy.policies.config import PolicyConfig
from genpolicy.policies.networks.encoders import ObsEncoder
from genpolicy.policies.networks.mlp import ResidualMLP
from genpolicy.policies.networks.unet1d import ConditionalUnet1D
from genpolicy.policies.normalizer import Normalizer
from genpolicy.policies.samplers import (TIME_SCALE, Chain, Denoiser, Grid, SplitDenoiser, Step, draw_step_noise,
                                         gaussian_log_prob, grid_step, make_denoiser, run, run_adaptive)


@dataclass
class ShapeMeta:
    """The data a policy consumes and produces. Saved next to the PolicyConfig."""

    state_dim: int
    action_dim: int
    cameras: list[str] = field(default_factory=list)
    image_size: int = 84

    def __post_init__(self) -> None:
        # also built from a checkpoint's config.json, so check types and bounds (sizes allocate layers)
        from genpolicy.configbase import _bounded, _check_types

        _check_types(self, "policy.shape")
        _bounded(self, "policy.shape", state_dim=(1, 65_536), action_dim=(1, 4096), image_size=(8, 1024))
        if len(self.cameras) > 16 or len(set(self.cameras)) != len(self.cameras) or not all(
                c and c.replace("_", "").replace("-", "").isalnum() for c in self.cameras):
            raise ConfigError(f"policy.shape.cameras must be at most 16 distinct names, got {self.cameras!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerativePolicy(nn.Module):
    """Base for diffusion and flow policies. Subclasses implement `loss` and `_make_grid`."""

    def __init__(self, cfg: PolicyConfig, shape: ShapeMeta) -> None:
        super().__init__()
        self.cfg, self.shape = cfg, shape
        self.normalizer = Normalizer({"state": shape.state_dim, "action": shape.action_dim},
                                     {"state": cfg.normalizer, "action": "minmax"})
        self.obs_encoder = ObsEncoder(shape.state_dim, tuple(shape.cameras), cfg.n_obs_steps, shape.image_size,
                                      cfg.crop_ratio, cfg.image_feature_dim, cfg.state_indices, cfg.image_encoder)
        self.net = self._build_net(self.obs_encoder.out_dim, use_step_size=self._uses_step_size())
        if cfg.ft_steps > 0:  # DPPO: a fine-tuned copy drives the last ft_steps grid steps; `net` stays frozen
            self.net_ft: Optional[nn.Module] = self._build_net(self.obs_encoder.out_dim, self._uses_step_size())
            self.net_ft.load_state_dict(self.net.state_dict())
            self.net.requires_grad_(False)
        else:
            self.net_ft = None
        from genpolicy.policies.steering import make_steer

        self.steer = make_steer(cfg, self.obs_encoder.out_dim, cfg.horizon * shape.action_dim)
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

    def _make_grid(self) -> Grid:
        """The family's sampling grid for the current cfg.sampler / cfg.steps."""
        raise NotImplementedError

    # --- sampler settings -----------------------------------------------------------------------------------------
    def set_sampler(self, sampler: Optional[str] = None, steps: Optional[int] = None, **kw: Any) -> None:
        """Switch the sampling method, number of steps or other sampler fields (validated like the config)."""
        d = asdict(self.cfg)
        if sampler:
            d["sampler"] = sampler
        if steps:
            d["steps"] = steps
        d.update(kw)
        new = PolicyConfig(**d)
        if self.cfg.ft_steps and any(getattr(new, k) != getattr(self.cfg, k) for k in ("sampler", "steps", "timestep_spacing")):
            raise ConfigError(f"this policy was fine-tuned on the last {self.cfg.ft_steps} steps of {self.cfg.sampler} "
                              f"{self.cfg.steps} ({self.cfg.timestep_spacing}); another grid would evaluate a different "
                              f"policy, so the sampler and steps are fixed")
        if self.cfg.steer == "dsrl" and any(getattr(new, k) != getattr(self.cfg, k)
                                            for k in ("sampler", "steps", "eta", "timestep_spacing")):
            raise ConfigError(f"this policy was steered by DSRL through {self.cfg.sampler} {self.cfg.steps}; its noise "
                              "actor only means something for that exact map, so the sampler and steps are fixed")
        self.cfg = new
        self._on_sampler_change()

    def _on_sampler_change(self) -> None:
        self.grid = self._make_grid()
        self._accel: Optional[Any] = None  # built lazily by `_accelerated`
        self.last_nfe: Optional[torch.Tensor] = None  # adaptive sampler: network evaluations per row of the last call

    @property
    def stochastic(self) -> bool:
        """Whether the current grid adds noise at some step."""
        return self.grid.stochastic

    def resolved_backend(self) -> str:
        """The sampling path `sample` takes: auto picks CUDA graphs on a GPU and eager on a CPU."""
        b = self.cfg.backend
        if b == "auto":
            return "cuda_graph" if self.device.type == "cuda" else "eager"
        return b

    # --- the chain view ------------------------------------------------------------------------------------------
    def initial_noise(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn((batch, self.cfg.horizon, self.shape.action_dim), generator=generator, device=self.device)

    def make_denoiser(self, cond: torch.Tensor, cached: bool = True) -> Denoiser:
        """x, evaluation -> network output on the current grid; fine-tuned steps (ft_steps) use `net_ft`."""
        frozen = make_denoiser(self.net, self.grid, cond, cached)
        if self.net_ft is None:
            return frozen
        first = (self.grid.n_steps - self.cfg.ft_steps) * self.grid.evals_per_step
        return SplitDenoiser(frozen, make_denoiser(self.net_ft, self.grid, cond, cached), first)

    def step(self, x: torch.Tensor, k: Step, cond: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One differentiable grid step: x_k (B,H,Da) -> (mean (B,H,Da), std). k is an int or per-row (B,) steps."""
        return grid_step(self.grid, k, x, self.make_denoiser(cond, cached=False))

    def renoise(self, data: torch.Tensor, start: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A chain state at step `start` whose clean part is `data` (B,H,Da): the warm-start entry point."""
        a, b = self.grid.renoise[0][start], self.grid.renoise[1][start]
        z = torch.randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
        return torch.add(data * a, z, alpha=b)

    def sample(self, cond: torch.Tensor, noise: Optional[torch.Tensor] = None, step_noise: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None, start: int = 0, min_std: float = 0.0,
               guide: Optional[Any] = None) -> torch.Tensor:
        """Normalised action chunk (B,H,Da) from the chain state `noise` at grid step `start` (default: pure noise).

        With grad enabled the result is differentiable; otherwise the fast path runs (cached conditioning, no
        autograd, compiled or CUDA-graph replay when the backend says so) and returns an ordinary tensor.
        `guide` (realtime.Guide): RTC inpainting of an old plan through the same engine; an inactive guide (nothing
        frozen, no guidance) takes the plain path, so the result is then exactly the plain sample.
        """
        if noise is None:
            noise = self.initial_noise(cond.shape[0], generator)
        if guide is not None and guide.active:
            return self._sample_guided(cond, noise, step_noise, generator, guide)
        if self.cfg.sampler == "adaptive":
            return self._sample_adaptive(cond, noise)
        if step_noise is None:
            step_noise = draw_step_noise(self.grid, noise, generator, start, min_std)
        if torch.is_grad_enabled():
            return run(self.grid, self.make_denoiser(cond, cached=False), noise, step_noise,  # type: ignore[return-value]
                       start=start, min_std=min_std)
        backend = self.resolved_backend()
        if backend != "eager" and start == 0 and min_std == 0.0:
            return self._accelerated(backend)(cond, noise, step_noise)
        with torch.inference_mode():
            x = run(self.grid, self.make_denoiser(cond), noise, step_noise, start=start, min_std=min_std)
        return x.clone()  # an ordinary tensor again, usable in autograd later (e.g. as a stored RL action)

    def _sample_guided(self, cond: torch.Tensor, noise: torch.Tensor, step_noise: Optional[torch.Tensor],
                       generator: Optional[torch.Generator], guide: Any) -> torch.Tensor:
        """RTC: the grid sampler with a guided denoiser (one VJP per evaluation), then the frozen prefix replaced."""
        from genpolicy.policies.realtime import GuidedDenoiser

        if self.cfg.sampler == "adaptive":
            raise ConfigError("RTC guidance needs a fixed grid; policy.sampler=adaptive has none (use euler)")
        if step_noise is None:
            step_noise = draw_step_noise(self.grid, noise, generator)
        # no_grad, not inference_mode: the guidance VJP records a local graph on x, and inference tensors (the cached
        # conditioning) could not be saved for it
        with torch.no_grad():
            den = GuidedDenoiser(self.make_denoiser(cond), self.grid, guide) if guide.guided else self.make_denoiser(cond)
            x = run(self.grid, den, noise, step_noise)
        return guide.replace_prefix(x)

    def _sample_adaptive(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.net_ft is not None:
            raise ConfigError("policy.sampler=adaptive does not combine with a DPPO-fine-tuned policy (ft_steps > 0)")
        step_size = self.grid.eval_d is not None

        def velocity(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            c = cond[rows]
            if step_size:  # the instantaneous velocity: shortcut step size 0
                return self.net(x, t * TIME_SCALE, c, t.new_zeros(t.shape))
            return self.net(x, t * TIME_SCALE, c)

        with torch.inference_mode():
            out = run_adaptive(velocity, noise.clone(), self.cfg.adaptive_tol, self.cfg.steps)
        self.last_nfe = out["nfe"].clone()
        return out["x"].clone()

    def _accelerated(self, backend: str) -> Any:
        if self._accel is None or self._accel.kind != backend:
            from genpolicy.policies.accel import BucketedSampler

            self._accel = BucketedSampler(self, backend)
        return self._accel

    def sample_chain(self, cond: torch.Tensor, noise: Optional[torch.Tensor] = None,
                     step_noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                     start: int = 0, min_std: float = 0.0) -> Chain:
        """Like `sample`, but keeps every chain state with its step means and stds (no gradients)."""
        if self.cfg.sampler == "adaptive":
            raise ConfigError("policy.sampler=adaptive has no fixed chain; use a grid sampler (euler) for the chain view")
        if noise is None:
            noise = self.initial_noise(cond.shape[0], generator)
        if step_noise is None:
            step_noise = draw_step_noise(self.grid, noise, generator, start, min_std)
        with torch.no_grad():
            return run(self.grid, self.make_denoiser(cond), noise, step_noise,  # type: ignore[return-value]
                       keep_chain=True, start=start, min_std=min_std)

    def step_log_prob(self, cond: torch.Tensor, x: torch.Tensor, x_next: torch.Tensor, k: Step,
                      min_std: float = 1e-3) -> torch.Tensor:
        """log p(x_next | x) of grid step k (int or per-row (B,)), summed over (H, Da): (B,). std floored at min_std.

        Old and new log-probs must both come from here, on the same grid (see DESIGN.md).
        """
        mean, std = self.step(x, k, cond)
        std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).clamp_min(min_std).expand_as(mean)
        return gaussian_log_prob(x_next, mean, std).flatten(1).sum(-1)

    # --- deployment ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, torch.Tensor], noise: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None, prev: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw observation window -> action chunk in env units (B, H, Da), starting at the current step.

        With cfg.warm_start_steps > 0 and `prev` (the previous chunk in env units, of which the first Ta actions
        were executed), the chunk starts from the re-noised unexecuted tail and runs only the last warm_start_steps.
        """
        cond = self.encode(obs)
        if self.steer is not None and noise is None:
            return self.unnormalize_actions(self.steered_sample(cond, generator).clamp(-1.0, 1.0))
        warm = self.cfg.warm_start_steps
        if prev is not None and warm > 0:
            ta = self.cfg.n_action_steps
            prev_n = self.normalize_actions(prev.to(cond.device).float())  # (B, H, Da)
            tail = prev_n[:, ta:]  # (B, H-Ta, Da)
            shifted = torch.cat([tail, tail[:, -1:].expand(-1, ta, -1)], dim=1) if tail.shape[1] else \
                prev_n[:, -1:].expand(-1, self.cfg.horizon, -1)
            start = self.cfg.steps - warm
            x = self.sample(cond, noise=self.renoise(shifted, start, generator), generator=generator, start=start)
        else:
            if noise is None and self.cfg.init_noise_scale != 1.0:  # e.g. FPO++'s zero-noise evaluation
                noise = self.initial_noise(cond.shape[0], generator) * self.cfg.init_noise_scale
            x = self.sample(cond, noise=noise, generator=generator)
        return self.unnormalize_actions(x.clamp(-1.0, 1.0))

    @torch.no_grad()
    def steered_sample(self, cond: torch.Tensor, generator: Optional[torch.Generator] = None,
                       explore: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        """The steered policy's normalised chunk (B, H, Da). DSRL: the noise actor's mean (or a sample when exploring)
        through the deterministic sampler. EXPO: the Q-argmax over N base samples and M edits.
        With explore=True returns a dict with the chunk ("actions") and what was chosen ("w" for DSRL)."""
        b, h, da = cond.shape[0], self.cfg.horizon, self.shape.action_dim
        if self.cfg.steer == "dsrl":
            out = self.steer(cond, deterministic=not explore, generator=generator)
            x = self.sample(cond, noise=out["w"].view(b, h, da))
            return {"actions": x, "w": out["w"]} if explore else x
        n = self.steer.n_base
        base = self.sample(cond.repeat_interleave(n, 0), generator=generator).clamp(-1.0, 1.0).view(b, n, h * da)
        pick = self.steer.select(cond, base, deterministic=not explore, generator=generator)
        x = pick["action"].view(b, h, da)
        return {"actions": x, "index": pick["index"]} if explore else x

    def reset(self) -> None:
        """Forget observation history and pending actions (call at every episode start)."""
        self._history.reset()
        self._queue.reset()
        self._prev_chunk: Optional[torch.Tensor] = None

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
            chunk = self.predict_chunk(window, prev=getattr(self, "_prev_chunk", None))  # (B, H, Da)
            self._prev_chunk = chunk
            self._queue.extend(chunk[:, : self.cfg.n_action_steps])
        action = self._queue.pop()
        return action[0] if single else action
