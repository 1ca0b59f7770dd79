"""EXPO: expressive policy optimisation with an on-the-fly policy (Dong, Li, Sadigh, Finn, 2025), on action chunks.

- The base diffusion/flow policy keeps learning by plain BC on the mixed replay (offline demos + online chunks).
- An edit policy pi_e(delta | s, a) (tanh-Gaussian) proposes a' = clip(a + beta * delta) on the whole chunk:
    L_e = E_{(s,a)~batch, delta~pi_e}[ alpha (log pi_e(delta | s, a) - D log beta) - mean_j Q_j(s, a + beta delta) ].
- The on-the-fly policy draws N base chunks, edits the first M, and takes the argmax of the minimum over a random
  subset of `n_min_q` critic heads. It acts (online heads) and forms the TD backup (target heads):
    y = r + gamma (1 - d) min_{j in S} Qbar_j(s', a*(s')).
Upstream EXPO is single-step; here every action is an H-step chunk of which Ta steps run.

Shapes: B batch, N base samples, D = H * Da (a flattened chunk), Dc conditioning dim, E critic heads.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from genpolicy.finetune.offpolicy import Temperature, soft_update, subsample_min, td_target
from genpolicy.finetune.ppo import policy_for_finetuning


class EXPO:
    def __init__(self, bc: Any, cfg: Any, device: torch.device) -> None:
        c, oc = cfg.expo, cfg.offpolicy
        changes = {"steer": "expo", "steer_scale": c.beta, "steer_width": c.width, "steer_depth": c.depth,
                   "expo_n_base": c.n_base, "expo_n_edit": c.n_edit, "expo_n_q": c.n_q, "expo_min_q": c.n_min_q}
        changes.update({k: v for k, v in (("sampler", c.sampler), ("steps", c.steps)) if v})  # PolicyConfig validates
        self.policy = policy_for_finetuning(bc, "expo", bc.cfg.type, device, **changes)
        self.cfg, self.oc, self.device = c, oc, device
        self.d = self.policy.cfg.horizon * self.policy.shape.action_dim
        self.uses_offline = True
        self.extra_specs: dict[str, tuple[int, ...]] = {}
        steer = self.policy.steer
        self.q_target = copy.deepcopy(steer.q).requires_grad_(False)
        self.temp = Temperature(oc.init_temperature, c.target_entropy * self.d).to(device)
        self.opt_base = torch.optim.AdamW(self.policy.net.parameters(), lr=c.base_lr, weight_decay=0.0)
        self.opt_edit = torch.optim.Adam(steer.edit.parameters(), lr=oc.lr)
        self.opt_q = torch.optim.Adam(steer.q.parameters(), lr=oc.lr)
        self.opt_temp = torch.optim.Adam(self.temp.parameters(), lr=oc.lr)
        self.gen = torch.Generator().manual_seed(cfg.run.seed + 17)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"q_target": self.q_target, "temperature": self.temp}  # base, edit and critic are inside the policy

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"base": self.opt_base, "edit": self.opt_edit, "q": self.opt_q, "temperature": self.opt_temp}

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {"beta": c.beta, "n_base": c.n_base, "n_edit": c.n_edit, "n_q": c.n_q, "n_min_q": c.n_min_q}

    def _base_samples(self, cond: torch.Tensor) -> torch.Tensor:
        b, n = cond.shape[0], self.cfg.n_base
        with torch.no_grad():
            return self.policy.sample(cond.repeat_interleave(n, 0)).clamp(-1.0, 1.0).reshape(b, n, self.d)  # (B, N, D)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], warmup: bool) -> dict[str, torch.Tensor]:
        cond = self.policy.encode(obs)
        b, h, da = cond.shape[0], self.policy.cfg.horizon, self.policy.shape.action_dim
        if warmup:  # the base policy alone
            return {"actions": self.policy.sample(cond).clamp(-1.0, 1.0)}
        pick = self.policy.steer.select(cond, self._base_samples(cond), k=self.cfg.n_min_q, generator=self.gen)
        return {"actions": pick["action"].view(b, h, da)}

    def critic_target(self, batch: dict[str, torch.Tensor], cond_next: torch.Tensor) -> torch.Tensor:
        """y = r + gamma (1 - d) min over a random subset of target heads at the on-the-fly action a*(s')."""
        with torch.no_grad():
            pick = self.policy.steer.select(cond_next, self._base_samples(cond_next), q=self.q_target,
                                            k=self.cfg.n_min_q, generator=self.gen)
            next_q = subsample_min(self.q_target(cond_next, pick["action"]), self.cfg.n_min_q, self.gen)  # (B,)
            return td_target(batch["reward"], batch["terminated"], next_q, self.oc.gamma)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        steer = self.policy.steer
        enc = lambda x: self.policy.encode({"state": x})  # noqa: E731
        with torch.no_grad():
            cond, cond_next = enc(batch["obs"]), enc(batch["next_obs"])
        b = cond.shape[0]
        a = batch["action"].reshape(b, -1)  # (B, D)
        y = self.critic_target(batch, cond_next)
        q = steer.q(cond, a)  # (E, B)
        loss_q = ((q - y) ** 2).mean(1).sum()
        self.opt_q.zero_grad()
        loss_q.backward()
        self.opt_q.step()
        # base: plain BC on the mixed batch (it drifts toward the data the agent collects)
        h, da = self.policy.cfg.horizon, self.policy.shape.action_dim
        bc = self.policy.loss({"obs": {"state": batch["obs"]},
                               "action": self.policy.unnormalize_actions(batch["action"].view(b, h, da)),
                               "action_is_pad": torch.zeros(b, h, dtype=torch.bool)})["loss"]
        self.opt_base.zero_grad()
        bc.backward()
        self.opt_base.step()
        # edit policy on replay actions
        out = steer.edit_actions(cond, a)
        log_p = out["log_prob"] - self.d * math.log(steer.beta)
        loss_e = (self.temp.alpha.detach() * log_p - steer.q(cond, out["action"]).mean(0)).mean()
        self.opt_edit.zero_grad()
        loss_e.backward()
        self.opt_edit.step()
        loss_t = self.temp.loss(log_p)
        self.opt_temp.zero_grad()
        loss_t.backward()
        self.opt_temp.step()
        soft_update(self.q_target, steer.q, self.oc.tau)
        return {"loss_q": loss_q.item(), "q_mean": q.mean().item(), "loss_bc": bc.item(), "loss_edit": loss_e.item(),
                "alpha": self.temp.alpha.item()}
