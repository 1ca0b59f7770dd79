"""DPPO (Ren et al., 2025): PPO over the denoising MDP of a diffusion policy.

Each env step samples a chunk through K Gaussian denoising steps; the last K' of them form the fine-tuned part of an
inner MDP (a trainable copy `net_ft` of the network drives them, the frozen network drives the rest). Every stored
transition (x_k -> x_{k+1}) of those K' steps is one PPO sample, with the env step's advantage discounted by
denoise_gamma^(K-1-k). Exploration floors every step's std at min_sampling_std and clips the normal draws at
randn_clip; log-probs floor the std at min_logprob_std, keep only the executed Ta rows of the chunk, clamp per element
and average (DPPO's recipe). The clip grows from clip_eps_base at the noisiest fine-tuned step to ppo.clip_eps at the
last; with K' = 1 the single step gets ppo.clip_eps (the reference divides by K'-1 = 0 there).

The saved checkpoint is a diffusion policy with `ft_steps = K'` on the fine-tuning grid and DDIM eta = eval_eta, so
evaluating it always uses the fine-tuned network on the steps it was fine-tuned for.

Shapes: N envs, S samples (transitions x K'), M minibatch, K grid steps, K' fine-tuned steps, H horizon, Ta executed
steps, Da action dim, Dc conditioning dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genpolicy.errors import ConfigError
from genpolicy.finetune.config import FinetuneConfig
from genpolicy.finetune.ppo import clip_schedule, frozen_copy, policy_for_finetuning
from genpolicy.policies.base import GenerativePolicy
from genpolicy.policies.samplers import diffusion_grid, gaussian_log_prob, grid_step, run


class DPPO:
    def __init__(self, bc: GenerativePolicy, cfg: FinetuneConfig, device: torch.device) -> None:
        c = self.c = cfg.dppo
        if bc.net_ft is not None:
            raise ConfigError("this checkpoint is already DPPO-fine-tuned (ft_steps > 0); fine-tune from its BC checkpoint")
        steps = c.steps or bc.cfg.steps
        if c.ft_steps > steps:
            raise ConfigError(f"dppo.ft_steps ({c.ft_steps}) must be <= the number of grid steps ({steps})")
        policy = policy_for_finetuning(bc, "dppo", "diffusion", device, sampler=c.sampler or bc.cfg.sampler,
                                       steps=steps, eta=c.eval_eta, ft_steps=c.ft_steps)
        policy.net_ft.load_state_dict(policy.net.state_dict())  # type: ignore[union-attr]
        self.policy = policy
        self.K, self.Kft, self.Ta = policy.cfg.steps, c.ft_steps, policy.cfg.n_action_steps
        self.first_ft = self.K - self.Kft  # grid index of the first fine-tuned step
        pc = policy.cfg  # the exploration grid: same timesteps, DDIM eta = c.eta (DDPM ignores eta)
        self.grid = diffusion_grid(policy.alphas_cumprod, pc.sampler, pc.steps, pc.timestep_spacing, c.eta,
                                   pc.prediction, pc.clip_sample)
        self.ppo_eps = cfg.ppo.clip_eps
        self.ref = frozen_copy(policy) if c.bc_coef > 0 else None

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.policy.net_ft.parameters())  # type: ignore[union-attr]

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"grid": f"{self.grid.method} {self.K} (eta {self.c.eta} while fine-tuning)", "ft_steps": self.Kft,
                "min_sampling_std": self.c.min_sampling_std}

    # --- acting ------------------------------------------------------------------------------------------------
    def _chain(self, policy: GenerativePolicy, cond: torch.Tensor) -> torch.Tensor:
        """Explore: a chain on the eta grid with floored std and clipped draws; (N, K+1, H, Da)."""
        noise = policy.initial_noise(cond.shape[0])
        z = torch.randn((self.K, *noise.shape), device=noise.device).clamp(-self.c.randn_clip, self.c.randn_clip)
        return run(self.grid, policy.make_denoiser(cond), noise, z, keep_chain=True,  # type: ignore[union-attr]
                   min_std=self.c.min_sampling_std).chain

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        chain = self._chain(self.policy, self.policy.encode(obs))
        return {"actions": chain[:, -1], "chain": chain[:, self.first_ft:]}  # chain: (N, K'+1, H, Da)

    # --- learning ----------------------------------------------------------------------------------------------
    def samples(self, flat: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One sample per (transition, fine-tuned step)."""
        chain = flat["chain"]  # (B, K'+1, H, Da)
        B = chain.shape[0]
        j = torch.arange(self.Kft, device=chain.device).repeat(B)  # (S,) fine-tuned step index 0..K'-1
        t = torch.arange(B, device=chain.device).repeat_interleave(self.Kft)  # (S,) transition index
        return {"cond": flat["cond"][t], "x": chain[t, j], "x_next": chain[t, j + 1], "j": j, "adv": flat["adv"][t]}

    def step_dist(self, policy: GenerativePolicy, cond: torch.Tensor, x: torch.Tensor,
                  j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian the log-prob scores fine-tuned step j under: mean and std (M, H, Da), std floored at
        min_logprob_std (the exploration grid and network of `act`)."""
        k = j + self.first_ft
        mean, std = grid_step(self.grid, k, x, policy.make_denoiser(cond, cached=False))
        return mean, torch.as_tensor(std, device=mean.device).clamp_min(self.c.min_logprob_std).expand_as(mean)

    def _log_prob(self, policy: GenerativePolicy, cond: torch.Tensor, x: torch.Tensor, x_next: torch.Tensor,
                  j: torch.Tensor) -> torch.Tensor:
        """Per-sample log-prob (M,): executed rows, std floored, clamped per element, averaged over (Ta, Da)."""
        mean, std = self.step_dist(policy, cond, x, j)
        lp = gaussian_log_prob(x_next, mean, std)[:, : self.Ta]  # (M, Ta, Da)
        return lp.clamp(self.c.logprob_min, self.c.logprob_max).mean((1, 2))

    @torch.no_grad()
    def prepare(self, samples: dict[str, torch.Tensor]) -> None:
        out = [self._log_prob(self.policy, samples["cond"][i], samples["x"][i], samples["x_next"][i], samples["j"][i])
               for i in torch.arange(samples["j"].shape[0]).split(4096)]
        samples["old_logp"] = torch.cat(out)

    def loss(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]:
        logp = self._log_prob(self.policy, mb["cond"], mb["x"], mb["x_next"], mb["j"])  # (M,)
        out: dict[str, Any] = {
            "log_ratio": logp - mb["old_logp"],
            "adv_weight": self.c.denoise_gamma ** (self.Kft - 1 - mb["j"]).float(),  # last step weight 1
            "clip_eps": clip_schedule(mb["j"], self.Kft, self.ppo_eps, self.c.clip_eps_base, self.c.clip_rate),
            "stats": {"logp_min": logp.min().detach(), "logp_max": logp.max().detach()},
        }
        if self.ref is not None:  # BC regulariser: frozen-policy chains should stay likely under the fine-tuned one
            with torch.no_grad():
                ref_chain = self._chain(self.ref, mb["cond"])[:, self.first_ft:]  # (M, K'+1, H, Da)
            jr = torch.randint(0, self.Kft, (mb["cond"].shape[0],), device=ref_chain.device)
            rows = torch.arange(jr.shape[0], device=jr.device)
            bc_lp = self._log_prob(self.policy, mb["cond"], ref_chain[rows, jr], ref_chain[rows, jr + 1], jr)
            out["aux_loss"] = -self.c.bc_coef * bc_lp.mean()
        return out
