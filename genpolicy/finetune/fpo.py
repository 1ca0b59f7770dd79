"""FPO (McAllister et al., 2025) and FPO++: PPO for flow policies with a likelihood-free ratio.

The ratio comes from conditional flow-matching losses of the policy's *own sampled chunk*: at rollout time N_mc pairs
(eps_i, t_i) are drawn and stored with the transition; before each update the old losses l_old,i are computed with the
pre-update weights (the same function as the new ones, so the first ratio is exactly 1). Then
  fpo:   log rho = mean_i l_old,i - mean_i l_new,i           (averaged before exp), PPO clip
  fpo++: log rho_i = l_old,i - l_new,i for each pair (per-sample ratios), asymmetric trust region: PPO clip for
         positive advantages, SPO's rho*A - |A|/(2 eps) (rho - 1)^2 for negative ones.
Losses use the executed Ta rows (as DPPO's log-probs do) and are clamped at loss_clamp; log-ratios at log_ratio_clamp.
Any fixed-grid ODE sampler of the velocity (euler, heun, midpoint) may produce the rollout chunks (the ratio never
needs a likelihood); sampler=shortcut is refused, because it acts with the step-size head d = dt while the ratio and
the gradient come from the d = 0 velocity only. The saved checkpoint evaluates from
zero initial noise (FPO++'s zero-noise evaluation) unless fpo.zero_noise_eval=false.

Shapes: N envs, M minibatch, n N_mc pairs, H horizon, Ta executed steps, Da action dim, Dc conditioning dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genpolicy.errors import ConfigError
from genpolicy.finetune.config import FinetuneConfig
from genpolicy.finetune.ppo import policy_for_finetuning
from genpolicy.policies.base import GenerativePolicy


class FPO:
    def __init__(self, bc: GenerativePolicy, cfg: FinetuneConfig, device: torch.device) -> None:
        if bc.cfg.sampler == "adaptive":
            raise ConfigError("algo=fpo needs a fixed-grid rollout sampler; set the checkpoint's sampler (e.g. euler)")
        if bc.cfg.sampler == "shortcut":  # it would act with the step-size head (d = dt) but train only d = 0
            raise ConfigError("algo=fpo trains the flow-matching velocity (shortcut step size 0) and would act with the "
                              "shortcut head it never trains; this checkpoint samples with sampler=shortcut: use a "
                              "checkpoint whose sampler is euler|heun|midpoint (the same weights with policy.sampler=euler)")
        self.c = cfg.fpo
        self.policy = policy_for_finetuning(bc, "fpo", "flow", device,
                                            init_noise_scale=0.0 if self.c.zero_noise_eval else 1.0)
        policy = self.policy
        self.Ta, self.eps = policy.cfg.n_action_steps, cfg.ppo.clip_eps

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.policy.net.parameters())

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"rollout_sampler": f"{self.policy.cfg.sampler} {self.policy.cfg.steps}", "variant": self.c.variant,
                "n_mc": self.c.n_mc, "action_noise": self.c.action_noise}

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cond = self.policy.encode(obs)
        actions = self.policy.sample(cond, noise=self.policy.initial_noise(cond.shape[0]))  # (N, H, Da), from random x0
        if self.c.action_noise > 0:
            actions = (actions + self.c.action_noise * torch.randn_like(actions)).clamp(-1.0, 1.0)
        n = actions.shape[0]
        eps = torch.randn((n, self.c.n_mc, *actions.shape[1:]), device=actions.device)  # (N, n, H, Da)
        t = torch.rand((n, self.c.n_mc), device=actions.device)  # (N, n) flow time, uniform
        return {"actions": actions, "fpo_eps": eps, "fpo_t": t}

    def samples(self, flat: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"cond": flat["cond"], "actions": flat["actions"], "eps": flat["fpo_eps"], "t": flat["fpo_t"],
                "adv": flat["adv"]}

    def _cfm_losses(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """l_i (M, n): flow-matching error of the stored chunk under each stored (eps_i, t_i), executed rows."""
        m, n = mb["t"].shape
        cond = mb["cond"].repeat_interleave(n, 0)  # (M*n, Dc)
        actions = mb["actions"].repeat_interleave(n, 0)  # (M*n, H, Da)
        err = self.policy.per_sample_loss(cond, actions, mb["eps"].flatten(0, 1), mb["t"].flatten())  # (M*n, H, Da)
        return err[:, : self.Ta].mean((1, 2)).view(m, n).clamp_max(self.c.loss_clamp)

    @torch.no_grad()
    def prepare(self, samples: dict[str, torch.Tensor]) -> None:
        idx = torch.arange(samples["adv"].shape[0]).split(1024)
        samples["old_loss"] = torch.cat([self._cfm_losses({k: v[i] for k, v in samples.items()}) for i in idx])

    def loss(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]:
        new = self._cfm_losses(mb)  # (M, n)
        if self.c.variant == "fpo":
            log_ratio = mb["old_loss"].mean(1) - new.mean(1)  # (M,) averaged before exp
            objective = "clip"
        else:
            log_ratio = mb["old_loss"] - new  # (M, n) per-sample ratios
            objective = "aspo"
        # clamp the value but keep the gradient (straight-through): a clamped sample with a negative advantage
        # must still feel the asymmetric penalty pulling its ratio back
        c = self.c.log_ratio_clamp
        log_ratio = log_ratio + (log_ratio.clamp(-c, c) - log_ratio).detach()
        return {"log_ratio": log_ratio, "clip_eps": self.eps, "objective": objective,
                "stats": {"cfm_loss": new.mean().detach()}}
