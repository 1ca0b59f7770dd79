"""DSRL: steer a frozen diffusion/flow policy by RL over its initial noise (Wagenmaker et al., 2025).

The base policy is a deterministic map w -> chunk (DDIM eta=0 or Euler); its weights never change. A tanh-Gaussian
noise actor pi_W(w | s) in [-m, m]^D (m = action_magnitude, respected by both variants) is trained by:
  sac: SAC on Q(s, w), the env seen through the noise space;
  na:  noise-aliased. Q^A(s, a) on executed chunks (offline demonstrations too),
       y = r + gamma (1 - d) [min_j Qbar^A_j(s', pi_dp(s', w')) - alpha log pi_W(w' | s')],  w' ~ pi_W(s')
       (the entropy term only with dsrl.backup_entropy=true: the pi0 repos drop it, and 0/1 rewards drown in it);
       Q^W(s, w) distilled from Q^A on fresh w ~ N(0, I) clipped to [-m, m]:  sum_j (Q^W_j(s, w) - Q^A_j(s, pi_dp(s, w)))^2;
       the actor minimises alpha log pi_W(w | s) - min_j Q^W_j(s, w).
Base-policy calls inside the updates go through the policy's fast sampler (no autograd, cached conditioning).
The temperature tracks the actor's entropy on its tanh-space density (before the scaling by m, as upstream measures
it) against dsrl.target_entropy per dimension. The default, -1.405 (= SAC's -1 per dimension on the w-space density
at m = 1.5, our earlier rule), was kept by measurement against upstream's 0 (benchmarks/results/rl_correctness.md:
door-open, DSRL-SAC, 3 seeds, 40k env steps, final checkpoints on 100 test episodes: 0.90, 0.73, 0.58 vs 0.34, 0.85,
0.65). Neither target bound there: the entropy stayed at 0.27-0.36 nats per dimension, above both, so alpha decayed in
both (to 0.028 and 0.031) and the difference is within seed noise.

Shapes: B batch, D = H * Da (a flattened chunk or noise), Dc conditioning dim, E critic heads.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from genpolicy.errors import ConfigError
from genpolicy.finetune.config import DSRL_FLOW_SAMPLERS
from genpolicy.finetune.offpolicy import QEnsemble, Temperature, soft_update, td_target
from genpolicy.finetune.pixels import CriticFeatures, window
from genpolicy.finetune.ppo import policy_for_finetuning


def base_map(bc_cfg: Any, c: Any) -> dict[str, Any]:
    """The policy-config changes that make a BC checkpoint the deterministic map w -> chunk DSRL steers: DDIM eta=0
    for diffusion, an ODE sampler for flow, then `dsrl.sampler`/`dsrl.steps` when set (PolicyConfig validates them)."""
    changes: dict[str, Any] = {}
    if bc_cfg.type == "diffusion":
        changes.update(sampler="ddim", eta=0.0)
    elif bc_cfg.sampler not in DSRL_FLOW_SAMPLERS:
        changes["sampler"] = "euler"
    if c.sampler and (c.sampler == "ddim") != (bc_cfg.type == "diffusion"):
        raise ConfigError(f"dsrl.sampler={c.sampler} does not fit this '{bc_cfg.type}' checkpoint "
                          f"({'ddim' if bc_cfg.type == 'diffusion' else '|'.join(DSRL_FLOW_SAMPLERS)})")
    changes.update({k: v for k, v in (("sampler", c.sampler), ("steps", c.steps)) if v})
    return changes


class DSRL:
    def __init__(self, bc: Any, cfg: Any, device: torch.device) -> None:
        c, oc = cfg.dsrl, cfg.offpolicy
        changes: dict[str, Any] = {"steer": "dsrl", "steer_scale": c.action_magnitude, "steer_width": c.width,
                                   "steer_depth": c.depth, **base_map(bc.cfg, c)}
        self.policy = policy_for_finetuning(bc, "dsrl", bc.cfg.type, device, **changes)
        self.policy.requires_grad_(False)
        self.policy.steer.requires_grad_(True)  # the only trainable part: the base weights never change
        self.cfg, self.oc, self.device = c, oc, device
        self.variant = c.variant
        dc, d = self.policy.obs_encoder.out_dim, self.policy.cfg.horizon * self.policy.shape.action_dim
        self.d = d
        self.uses_offline = c.variant == "na"  # Q^A is action-space: demonstrations fit it
        self.extra_specs = {"w": (d,)}
        w, depth = oc.critic_width, oc.critic_depth
        if c.variant == "sac":
            self.q = QEnsemble(dc, d, c.n_q, w, depth).to(device)  # Q(s, w)
        else:
            self.q = QEnsemble(dc, d, c.n_q, w, depth).to(device)  # Q^A(s, a)
            self.qw = QEnsemble(dc, d, c.n_q, w, depth).to(device)  # Q^W(s, w)
            self.opt_qw = torch.optim.Adam(self.qw.parameters(), lr=oc.lr)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        # what the critics read: the policy's features (frozen) or their own DrQ-trained encoder (finetune/pixels.py)
        self.qfeat = CriticFeatures(self.policy, cfg.encoder_mode).to(device)
        self.temp = Temperature(oc.init_temperature, c.target_entropy * d).to(device)  # on tanh-space log-probs
        self.log_m = d * math.log(c.action_magnitude)  # w = m * u: log p_w(w) = log p_u(u) - D log m
        self.opt_actor = torch.optim.Adam(self.policy.steer.parameters(), lr=oc.lr)
        self.opt_q = torch.optim.Adam([*self.q.parameters(), *self.qfeat.trainable()], lr=oc.lr)
        self.opt_temp = torch.optim.Adam(self.temp.parameters(), lr=oc.lr)

    def modules(self) -> dict[str, torch.nn.Module]:
        m = {"q": self.q, "q_target": self.q_target, "temperature": self.temp}
        m |= {"critic_encoder": self.qfeat} if self.qfeat.encoder is not None else {}
        return m | ({"qw": self.qw} if self.variant == "na" else {})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o = {"actor": self.opt_actor, "q": self.opt_q, "temperature": self.opt_temp}
        return o | ({"qw": self.opt_qw} if self.variant == "na" else {})

    def describe(self) -> dict[str, Any]:
        return {"variant": self.variant, "action_magnitude": self.cfg.action_magnitude, "noise_dim": self.d,
                "sampler": self.policy.cfg.sampler, "steps": self.policy.cfg.steps}

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], warmup: bool) -> dict[str, torch.Tensor]:
        cond = self.policy.encode(obs)
        b, h, da = cond.shape[0], self.policy.cfg.horizon, self.policy.shape.action_dim
        if warmup:  # the base policy itself: w ~ N(0, I)
            w = torch.randn(b, self.d, device=cond.device)
            return {"actions": self.policy.sample(cond, noise=w.view(b, h, da)).clamp(-1.0, 1.0), "w": w}
        out = self.policy.steered_sample(cond, explore=True)
        return {"actions": out["actions"].clamp(-1.0, 1.0), "w": out["w"]}

    def _decode(self, cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The base policy as a map: (B, Dc), (B, D) noise -> (B, D) normalised chunk (fast path, no gradients)."""
        b, h, da = cond.shape[0], self.policy.cfg.horizon, self.policy.shape.action_dim
        with torch.no_grad():
            return self.policy.sample(cond, noise=w.view(b, h, da)).clamp(-1.0, 1.0).reshape(b, -1)

    def critic_target(self, batch: dict[str, torch.Tensor], cond_next: torch.Tensor,
                      qf_next: torch.Tensor | None = None) -> torch.Tensor:
        """The TD target of the critic this variant trains (sac: Q(s, w); na: Q^A(s, a)). The actor and the base read
        the policy's conditioning `cond_next`; the critic reads `qf_next` (the same, unless encoder_mode=finetuned)."""
        qf_next = cond_next if qf_next is None else qf_next
        with torch.no_grad():
            nxt = self.policy.steer(cond_next)
            arg = nxt["w"] if self.variant == "sac" else self._decode(cond_next, nxt["w"])
            next_q = self.q_target(qf_next, arg).min(0).values  # (B,)
            if self.cfg.backup_entropy:
                next_q = next_q - self.temp.alpha * nxt["log_prob"]
            return td_target(batch["reward"], batch["terminated"], next_q, self.oc.gamma)

    def update(self, batch: dict[str, torch.Tensor], update_actor: bool = True) -> dict[str, float]:
        obs, obs_next = window(batch, "obs"), window(batch, "next_obs")  # state (+ camera) windows
        with torch.no_grad():  # the policy's encoder is frozen: one pass serves base, actor and (frozen) critics
            if "cond" in batch:  # camera replay with a frozen encoder: computed when stored
                cond, cond_next = batch["cond"], batch["next_cond"]
            else:
                cond, cond_next = self.policy.encode(obs), self.policy.encode(obs_next)
            qf_next = self.qfeat(obs_next, cond_next)
        qf = self.qfeat(obs, cond)  # with gradients into the critic encoder when encoder_mode=finetuned
        b = cond.shape[0]
        y = self.critic_target(batch, cond_next, qf_next)  # (B,)
        arg = batch["w"] if self.variant == "sac" else batch["action"].reshape(b, -1)
        q = self.q(qf, arg)  # (E, B)
        loss_q = ((q - y) ** 2).mean(1).sum()
        self.opt_q.zero_grad()
        loss_q.backward()
        self.opt_q.step()
        stats = {"loss_q": loss_q.item(), "q_mean": q.mean().item()}
        qf = qf.detach()
        if self.variant == "na":
            m = self.cfg.action_magnitude
            for _ in range(self.cfg.qw_steps):
                w = torch.randn(b, self.d, device=cond.device).clamp(-m, m)  # fresh noise, inside the actor's bound
                with torch.no_grad():
                    target = self.q(qf, self._decode(cond, w))  # (E, B) Q^A_j(s, pi_dp(s, w))
                loss_w = ((self.qw(qf, w) - target) ** 2).mean(1).sum()
                self.opt_qw.zero_grad()
                loss_w.backward()
                self.opt_qw.step()
            stats["loss_qw"] = loss_w.item()
        if not update_actor:
            soft_update(self.q_target, self.q, self.oc.tau)
            return stats
        out = self.policy.steer(cond)
        critic = self.q if self.variant == "sac" else self.qw
        q_pi = critic(qf, out["w"])  # (E, B)
        loss_pi = (self.temp.alpha.detach() * out["log_prob"] - q_pi.min(0).values).mean()
        self.opt_actor.zero_grad()
        loss_pi.backward()
        self.opt_actor.step()
        loss_t = self.temp.loss(out["log_prob"] + self.log_m)  # tanh-space density, as upstream measures it
        self.opt_temp.zero_grad()
        loss_t.backward()
        self.opt_temp.step()
        soft_update(self.q_target, self.q, self.oc.tau)
        return stats | {"loss_pi": loss_pi.item(), "alpha": self.temp.alpha.item(),
                        "entropy_per_dim": -(out["log_prob"].mean().item() + self.log_m) / self.d}  # tanh space
