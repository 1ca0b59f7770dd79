"""EXPO: expressive policy optimisation with an on-the-fly policy (Dong, Li, Sadigh, Finn, 2025), on action chunks.

- The base diffusion/flow policy keeps learning by plain BC on the mixed replay (offline demos + online chunks).
- An edit policy pi_e(delta | s, a) (tanh-Gaussian, delta in [-1, 1]^D) proposes a' = clip(a + beta * delta) on the
  whole chunk:  L_e = E_{(s,a)~batch, delta~pi_e}[ alpha log pi_e(delta | s, a) - mean_j Q_j(s, a + beta delta) ].
- The temperature tracks the edit's entropy in delta units, -E log pi_e(delta), against expo.target_entropy * D.
  That entropy is at most D log 2, so the -D/2 target is reachable and alpha settles. (Upstream and our first version
  used log pi_e - D log beta, the density in action units: at beta = 0.05 its entropy is at most (0.69 - 3.0) D, always
  below -D/2, so alpha climbed by ~lr every update for ever.) For the edit loss the two differ by a constant.
- The on-the-fly policy (one rule for acting, evaluation and the backup's next action, `EditSteer.select`): N base
  chunks, edits of the first M, the argmax of the minimum over all heads of the policy's critic. Acting and the backup
  draw stochastic edits; evaluation takes the edit's mean (as SAC evaluates its mean).
- The networks follow the paper: the policy object (what acts, evaluates and is saved) holds an EMA of the base
  (tau = expo.base_ema) and the *target* critic; the online base and critic are trained here. Critic updates run at
  every call; base, edit and temperature once per `offpolicy.utd` critic updates (the loop's `update_actor`).
- TD backup: y = r + gamma (1 - d) min_{j in S} Qbar_j(s', a*(s')), S a random subset of `n_min_q` target heads (REDQ).
Upstream EXPO is single-step; here every action is an H-step chunk of which Ta steps run.

Shapes: B batch, N base samples, D = H * Da (a flattened chunk), Dc conditioning dim, E critic heads.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from genpolicy.finetune.offpolicy import Temperature, soft_update, subsample_min, td_target
from genpolicy.finetune.pixels import window
from genpolicy.finetune.ppo import policy_for_finetuning


class EXPO:
    def __init__(self, bc: Any, cfg: Any, device: torch.device) -> None:
        c, oc = cfg.expo, cfg.offpolicy
        if cfg.encoder_mode != "frozen":
            from genpolicy.errors import ConfigError

            raise ConfigError("algo=expo acts by the argmax of its critic inside the policy, so the critic reads the "
                              "policy's own image features: use encoder_mode=frozen")
        changes = {"steer": "expo", "steer_scale": c.beta, "steer_width": c.width, "steer_depth": c.depth,
                   "expo_n_base": c.n_base, "expo_n_edit": c.n_edit, "expo_n_q": c.n_q, "expo_min_q": c.n_min_q}
        changes.update({k: v for k, v in (("sampler", c.sampler), ("steps", c.steps)) if v})  # PolicyConfig validates
        self.policy = policy_for_finetuning(bc, "expo", bc.cfg.type, device, **changes)  # acts: EMA base, target critic
        self.cfg, self.oc, self.device = c, oc, device
        self.d = self.policy.cfg.horizon * self.policy.shape.action_dim
        self.uses_offline = True
        self.extra_specs: dict[str, tuple[int, ...]] = {}
        steer = self.policy.steer
        self.learner = copy.deepcopy(self.policy)  # its net is the online base (BC-trained); its steer is unused
        self.learner.steer = None
        self.q = copy.deepcopy(steer.q)  # the online critic
        self.policy.net.requires_grad_(False)
        steer.q.requires_grad_(False)  # the target critic: Polyak-averaged from self.q
        self.temp = Temperature(oc.init_temperature, c.target_entropy * self.d).to(device)
        self.opt_base = torch.optim.AdamW(self.learner.net.parameters(), lr=c.base_lr, weight_decay=0.0)
        self.opt_edit = torch.optim.Adam(steer.edit.parameters(), lr=oc.lr)
        self.opt_q = torch.optim.Adam(self.q.parameters(), lr=oc.lr)
        self.opt_temp = torch.optim.Adam(self.temp.parameters(), lr=oc.lr)
        self.gen = torch.Generator().manual_seed(cfg.run.seed + 17)  # saved with checkpoints (exact resume)

    @property
    def q_target(self) -> torch.nn.Module:
        return self.policy.steer.q

    def modules(self) -> dict[str, torch.nn.Module]:
        # the EMA base, the edit policy and the target critic are inside the policy
        return {"q": self.q, "base_online": self.learner.net, "temperature": self.temp}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"base": self.opt_base, "edit": self.opt_edit, "q": self.opt_q, "temperature": self.opt_temp}

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {"beta": c.beta, "n_base": c.n_base, "n_edit": c.n_edit, "n_q": c.n_q, "n_min_q": c.n_min_q,
                "base_ema": c.base_ema, "acting": "EMA base, target critic, min over all heads"}

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], warmup: bool) -> dict[str, torch.Tensor]:
        cond = self.policy.encode(obs)
        if warmup:  # the base policy alone
            return {"actions": self.policy.sample(cond).clamp(-1.0, 1.0)}
        return {"actions": self.policy.steered_sample(cond, generator=self.gen, explore=True)["actions"]}

    def critic_target(self, batch: dict[str, torch.Tensor], cond_next: torch.Tensor) -> torch.Tensor:
        """y = r + gamma (1 - d) min over a random subset of target heads at the on-the-fly action a*(s')."""
        with torch.no_grad():
            b = cond_next.shape[0]
            a_next = self.policy.steered_sample(cond_next, generator=self.gen, explore=True)["actions"].reshape(b, -1)
            next_q = subsample_min(self.q_target(cond_next, a_next), self.cfg.n_min_q, self.gen)  # (B,)
            return td_target(batch["reward"], batch["terminated"], next_q, self.oc.gamma)

    def update(self, batch: dict[str, torch.Tensor], update_actor: bool = True) -> dict[str, float]:
        steer = self.policy.steer
        obs = window(batch, "obs")  # state (+ camera) windows
        with torch.no_grad():  # frozen encoder: one pass serves base, edit policy and critics
            if "cond" in batch:  # camera replay: computed when stored
                cond, cond_next = batch["cond"], batch["next_cond"]
            else:
                cond, cond_next = self.policy.encode(obs), self.policy.encode(window(batch, "next_obs"))
        b = cond.shape[0]
        a = batch["action"].reshape(b, -1)  # (B, D)
        y = self.critic_target(batch, cond_next)
        q = self.q(cond, a)  # (E, B)
        loss_q = ((q - y) ** 2).mean(1).sum()
        self.opt_q.zero_grad()
        loss_q.backward()
        self.opt_q.step()
        soft_update(self.q_target, self.q, self.oc.tau)
        stats = {"loss_q": loss_q.item(), "q_mean": q.mean().item()}
        if not update_actor:
            return stats
        # base: plain BC on the mixed batch (it drifts toward the data the agent collects); acting uses its EMA
        h, da = self.policy.cfg.horizon, self.policy.shape.action_dim
        bc = self.learner.loss({"obs": obs,
                                "action": self.learner.unnormalize_actions(batch["action"].view(b, h, da)),
                                "action_is_pad": torch.zeros(b, h, dtype=torch.bool)})["loss"]
        self.opt_base.zero_grad()
        bc.backward()
        self.opt_base.step()
        soft_update(self.policy.net, self.learner.net, self.cfg.base_ema)
        # edit policy on replay actions, against the online critic
        out = steer.edit_actions(cond, a)
        log_p = out["log_prob"]  # (B,) log pi_e(delta | s, a) in delta units
        loss_e = (self.temp.alpha.detach() * log_p - self.q(cond, out["action"]).mean(0)).mean()
        self.opt_edit.zero_grad()
        loss_e.backward()
        self.opt_edit.step()
        loss_t = self.temp.loss(log_p)
        self.opt_temp.zero_grad()
        loss_t.backward()
        self.opt_temp.step()
        return stats | {"loss_bc": bc.item(), "loss_edit": loss_e.item(), "alpha": self.temp.alpha.item(),
                        "entropy_per_dim": -log_p.mean().item() / self.d}
