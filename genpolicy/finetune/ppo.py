"""The shared on-policy core: GAE, the PPO update with a pluggable log-ratio, the value net, and the fine-tuning loop.

An algorithm (dppo.py, fpo.py, reinflow.py) supplies five things (`OnPolicyAlgo`): how to act (normalised chunks plus
per-transition extras), how to expand transitions into PPO samples, how to compute the old statistics once before an
update (same function as the new ones, so the first ratio is exactly 1), the per-minibatch log-ratio and extra loss,
and its trainable parameters. Everything else (rollouts, advantages, clipping, critic, KL stop, schedules, logging,
checkpoints, resume, evaluation) lives here once.

The observation encoder is frozen while fine-tuning: the conditioning of every transition is computed once per
update and shared by the actor terms and the critic.

Shapes: T chunk steps, N envs, B = T*N transitions, S PPO samples (B, or B*K' for DPPO), M minibatch, Dc cond dim.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch import nn

from genpolicy.errors import ConfigError
from genpolicy.finetune.config import FinetuneConfig, PPOConfig
from genpolicy.finetune.rollout import RewardScaler, Rollout, collect
from genpolicy.policies import make_policy
from genpolicy.policies.base import GenerativePolicy
from genpolicy.policies.config import PolicyConfig
from genpolicy.policies.networks.common import layernorm_mlp


class OnPolicyAlgo(Protocol):
    policy: GenerativePolicy  # the policy being fine-tuned; evaluation and checkpoints use exactly this object

    def actor_parameters(self) -> list[nn.Parameter]: ...

    def modules(self) -> dict[str, nn.Module]: ...  # extra trainable modules saved for resume (e.g. a noise net)

    def act(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...  # {"actions": (N,H,Da), extras}

    def samples(self, flat: dict[str, Any]) -> dict[str, torch.Tensor]: ...  # per-sample tensors (S, ...) incl. "adv"

    def prepare(self, samples: dict[str, torch.Tensor]) -> None: ...  # old log-probs / losses, in place, no grad

    def loss(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]: ...  # log_ratio, clip_eps, [adv_weight, aux_loss]

    def describe(self) -> dict[str, Any]: ...  # exploration settings, for the saved config


# --- advantages ----------------------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, final_values: torch.Tensor, next_value: torch.Tensor,
        terminated: torch.Tensor, truncated: torch.Tensor, gamma: float, lam: float) -> dict[str, torch.Tensor]:
    """Generalised advantage estimation over (T, N) chunk transitions.

    A terminated transition has no future; a truncated one bootstraps from the value of its real final observation;
    neither lets the trace run into the next episode. Returns {'adv': (T,N), 'returns': (T,N)}.
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        nv = next_value if t == T - 1 else values[t + 1]
        nv = torch.where(truncated[t] & ~terminated[t], final_values[t], nv)
        delta = rewards[t] + gamma * nv * (~terminated[t]).float() - values[t]
        done = (terminated[t] | truncated[t]).float()
        last = delta + gamma * lam * (1.0 - done) * last
        adv[t] = last
    return {"adv": adv, "returns": adv + values}


class ValueNet(nn.Module):
    """V(s) on the (frozen) observation conditioning: MLP with LayerNorm and Mish."""

    def __init__(self, in_dim: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.net = layernorm_mlp(in_dim, width, depth, nn.Mish, out_dim=1)

    def forward(self, cond: torch.Tensor, obs: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        return self.net(cond).squeeze(-1)  # (B,)


class PixelValueNet(nn.Module):
    """V(s) of a camera policy with encoder_mode=finetuned: its own copy of the BC observation encoder, trained by the
    value loss on random crops (DrQ's shifts), then the MLP. The actor keeps the frozen BC conditioning."""

    def __init__(self, policy: GenerativePolicy, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        from genpolicy.finetune.pixels import CriticFeatures

        self.features = CriticFeatures(policy, "finetuned")
        self.head = ValueNet(policy.obs_encoder.out_dim, width, depth)

    def forward(self, cond: torch.Tensor, obs: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        if obs is None:
            raise ValueError("PixelValueNet reads the observation window (obs=...)")
        return self.head(self.features(obs, cond))


def clip_schedule(k_rel: torch.Tensor, n: int, eps: float, eps_base: float, rate: float) -> torch.Tensor:
    """DPPO's per-denoising-step clip: eps_base at the noisiest fine-tuned step, eps at the last. n = 1 gives eps."""
    if n <= 1:
        return torch.full(k_rel.shape, eps, device=k_rel.device)
    tau = k_rel.float() / (n - 1)
    return eps_base + (eps - eps_base) * (torch.exp(rate * tau) - 1) / (math.exp(rate) - 1)


# --- the update ----------------------------------------------------------------------------------------------------
def policy_objective(log_ratio: torch.Tensor, adv: torch.Tensor, clip_eps: Any, objective: str = "clip") -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate (or FPO++'s asymmetric trust region) for log-ratios (M,) or (M, n) and advantages (M,)."""
    a = adv.view(-1, *([1] * (log_ratio.ndim - 1)))
    eps = clip_eps.view(-1, *([1] * (log_ratio.ndim - 1))) if torch.is_tensor(clip_eps) else clip_eps
    ratio = torch.exp(log_ratio)
    clipped = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
    if objective == "aspo":  # positive advantages: PPO clip; negative: SPO's quadratic penalty
        spo = ratio * a - a.abs() / (2 * eps) * (ratio - 1) ** 2
        clipped = torch.where(a >= 0, clipped, spo)
    with torch.no_grad():
        stats = {"approx_kl": ((ratio - 1) - log_ratio).mean(), "clipfrac": ((ratio - 1).abs() > eps).float().mean(),
                 "ratio_mean": ratio.mean(), "ratio_max_dev": (ratio - 1).abs().max()}
    return {"loss": -clipped.mean(), **stats}


def ppo_update(algo: OnPolicyAlgo, critic: nn.Module, roll: Rollout, cfg: PPOConfig, opt_actor: torch.optim.Optimizer,
               opt_critic: torch.optim.Optimizer, update_actor: bool, generator: torch.Generator) -> dict[str, float]:
    """One PPO update from a rollout; returns mean statistics."""
    policy = algo.policy
    T, N = roll.rewards.shape
    obs = {k: v.flatten(0, 1) for k, v in roll.obs.items()}  # (B, To, ...) windows
    with torch.no_grad():
        cond = policy.encode(obs)  # (B, Dc)
    # a critic with its own encoder (PixelValueNet) reads the windows too; ValueNet ignores them
    sub = lambda idx: {k: v[idx] for k, v in obs.items()} if isinstance(critic, PixelValueNet) else None  # noqa: E731
    g = gae(roll.rewards, roll.values, roll.final_values, roll.next_value, roll.terminated, roll.truncated,
            cfg.gamma, cfg.gae_lambda)
    flat: dict[str, Any] = {"cond": cond, "actions": roll.actions.flatten(0, 1), "adv": g["adv"].flatten(),
                            "returns": g["returns"].flatten(), **{k: v.flatten(0, 1) for k, v in roll.extras.items()}}
    B = cond.shape[0]
    stats: dict[str, list[float]] = {}

    def note(**kw: Any) -> None:
        for k, v in kw.items():
            stats.setdefault(k, []).append(float(v))

    for _ in range(cfg.epochs):  # critic: regression on the GAE returns
        for idx in torch.randperm(B, generator=generator).split(cfg.minibatch_size):
            v = critic(cond[idx], sub(idx))
            loss = 0.5 * (v - flat["returns"][idx]).pow(2).mean()
            opt_critic.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
            opt_critic.step()
            note(value_loss=loss.detach())
    with torch.no_grad():
        ev = 1 - float((flat["returns"] - critic(cond, sub(slice(None)))).var() / flat["returns"].var().clamp_min(1e-8))
    note(explained_variance=ev)
    if not update_actor:
        return {k: float(np.mean(v)) for k, v in stats.items()}

    samples = algo.samples(flat)
    algo.prepare(samples)
    S = samples["adv"].shape[0]
    stop = False
    first = True
    epochs_done = 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(S, generator=generator).split(cfg.minibatch_size):
            mb = {k: v[idx] for k, v in samples.items()}
            out = algo.loss(mb)
            adv = mb["adv"]
            if cfg.norm_adv and adv.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            if "adv_weight" in out:
                adv = adv * out["adv_weight"]
            obj = policy_objective(out["log_ratio"], adv, out["clip_eps"], out.get("objective", "clip"))
            loss = obj["loss"] + out.get("aux_loss", 0.0)
            opt_actor.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(algo.actor_parameters(), cfg.max_grad_norm)
            if first:  # the self-test every update: old and new statistics come from the same function
                note(first_ratio_max_dev=obj["ratio_max_dev"])
                first = False
            opt_actor.step()
            note(policy_loss=obj["loss"].detach(), approx_kl=obj["approx_kl"], clipfrac=obj["clipfrac"],
                 ratio_mean=obj["ratio_mean"], grad_norm=grad_norm, **{k: v for k, v in out.get("stats", {}).items()})
            if cfg.target_kl > 0 and float(obj["approx_kl"]) > cfg.target_kl:
                stop = True
                break
        epochs_done += 1
        if stop:
            break
    note(actor_epochs=epochs_done, kl_stop=float(stop))
    return {k: float(np.mean(v)) for k, v in stats.items()}


# --- the fine-tuning loop ------------------------------------------------------------------------------------------
def _lr(it: int, cfg: PPOConfig, base: float, floor: float) -> float:
    if cfg.warmup_iters and it < cfg.warmup_iters:
        return base * (it + 1) / cfg.warmup_iters
    frac = min(1.0, it / max(1, cfg.iterations))
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * frac))


def make_algo(name: str, policy: GenerativePolicy, cfg: FinetuneConfig, device: torch.device) -> OnPolicyAlgo:
    """The string registry `algo=dppo|fpo|reinflow`."""
    if name == "dppo":
        from genpolicy.finetune.dppo import DPPO

        return DPPO(policy, cfg, device)
    if name == "fpo":
        from genpolicy.finetune.fpo import FPO

        return FPO(policy, cfg, device)
    if name == "reinflow":
        from genpolicy.finetune.reinflow import ReinFlow

        return ReinFlow(policy, cfg, device)
    raise ConfigError(f"unknown algo '{name}'; use dppo, fpo or reinflow")


def steps_to(curve: list[dict[str, Any]], threshold: float = 0.9) -> dict[str, Optional[float]]:
    """First evaluation point at or above `threshold` success: env steps and wall-clock seconds (None if never)."""
    for p in curve:
        if p["success_rate"] >= threshold:
            return {"env_steps": p["env_steps"], "wallclock_s": p["wallclock_s"]}
    return {"env_steps": None, "wallclock_s": None}


def reached_stop(evals: list[dict[str, Any]], target: float, patience: int) -> bool:
    """True when the last `patience` fine-tuning evaluations all reached `target` success (target 0: never)."""
    return target > 0 and len(evals) >= patience and all(p["success_rate"] >= target for p in evals[-patience:])


def finetune(cfg: FinetuneConfig, on_end: Optional[Callable[[GenerativePolicy], None]] = None) -> dict[str, Any]:
    """Fine-tune a BC checkpoint; returns a summary (also written to summary.json). Off-policy algorithms (dsrl, expo)
    run `offpolicy.finetune_offpolicy`, which returns the same summary keys. `on_end` receives the fine-tuned policy
    object as it is at the end (tests compare it with the saved checkpoint)."""
    if cfg.algo in ("dsrl", "expo"):
        from genpolicy.finetune.offpolicy import finetune_offpolicy

        return finetune_offpolicy(cfg, on_end)
    from genpolicy.finetune.common import TestPoints, load_start, make_venv, restore_or_refuse, rng_state, save_rotating
    from genpolicy.training.bc import _StopFlag
    from genpolicy.training.evaluate import evaluate
    from genpolicy.training.runs import MetricsLogger, make_run_dir, progress_bar, slug

    start = load_start(cfg)
    device, task = start["device"], start["task"]
    algo = make_algo(cfg.algo, start["bc"], cfg, device)
    policy = algo.policy.eval()  # eval mode throughout: deterministic crops, no dropout; gradients still flow
    pc = cfg.ppo
    venv = make_venv(cfg, task, policy, pc.n_envs, seed=10_000_000 + 1_000_000 * cfg.run.seed)
    critic: nn.Module = (PixelValueNet(policy, pc.critic_width, pc.critic_depth) if cfg.encoder_mode == "finetuned"
                         else ValueNet(policy.obs_encoder.out_dim, pc.critic_width, pc.critic_depth)).to(device)
    opt_actor = torch.optim.AdamW(algo.actor_parameters(), lr=pc.actor_lr, weight_decay=0.0)
    opt_critic = torch.optim.AdamW(critic.parameters(), lr=pc.critic_lr, weight_decay=0.0)
    scaler = RewardScaler(pc.gamma) if pc.reward_scale else None
    run_dir = make_run_dir(cfg.run, f"finetune-{slug(task)}-{cfg.algo}")
    saved_cfg = {"task": {"name": task, "max_episode_steps": cfg.task.max_episode_steps},
                 "finetune": {**asdict(cfg), "exploration": algo.describe()}, "source_checkpoint": str(cfg.ckpt)}
    modules = {"critic": critic, **algo.modules()}
    optimizers = {"actor": opt_actor, "critic": opt_critic}
    gen = torch.Generator().manual_seed(cfg.run.seed)
    start_it, env_steps, curve, wall0 = 0, 0, [], 0.0
    summary: dict[str, Any] = {}
    st = restore_or_refuse(cfg, run_dir, policy, modules, optimizers, {"loop": gen}, venv)
    if st is not None:
        start_it, env_steps, curve, wall0 = st["iteration"], st["env_steps"], st["curve"], st["wallclock_s"]
        summary = st["summary"]
        if scaler is not None and st.get("scaler"):
            scaler.load(st["scaler"])  # with its running returns: the episodes they sum were rebuilt

    def run_eval(tag: str) -> dict[str, Any]:
        return evaluate(policy, task, n_episodes=cfg.eval.n_episodes, n_envs=cfg.eval.n_envs, seed=cfg.eval.seed,
                        out_dir=run_dir / "eval" / tag, n_videos=cfg.eval.n_videos if tag == "final" else 0,
                        max_episode_steps=cfg.task.max_episode_steps, progress=False)

    logger = MetricsLogger(run_dir, resume_step=start_it)  # a resumed run rewrites the rows after its checkpoint
    nominal = pc.iterations * pc.n_envs * pc.n_steps * policy.cfg.n_action_steps  # env steps if no episode ends early
    tests = TestPoints(cfg, task, pc.iterations, nominal, run_dir, st.get("test_curve") if st else None)
    t_start = time.time() - wall0
    if not curve:
        ev = run_eval("start")
        summary = {"start_success": ev["success_rate"], "start_return": ev["mean_return"]}
        curve.append({"iteration": 0, "env_steps": 0, "wallclock_s": 0.0, "success_rate": ev["success_rate"],
                      "mean_return": ev["mean_return"]})
        logger.log(0, {"eval/success_rate": ev["success_rate"], "eval/mean_return": ev["mean_return"]})
        t_start = time.time()  # wall-clock to threshold counts fine-tuning only, not the start evaluation

    def save(it: int) -> Path:
        state = {"iteration": it, "env_steps": env_steps, "curve": curve, "wallclock_s": time.time() - t_start,
                 "summary": summary, "scaler": scaler.state() if scaler else None, "test_curve": tests.curve,
                 **rng_state({"loop": gen}, venv)}
        return save_rotating(run_dir, it, policy, saved_cfg, state, modules, optimizers)

    bar = progress_bar(pc.iterations, f"{cfg.algo} {task}", "it", cfg.run.progress, initial=start_it)
    last_path: Optional[Path] = None
    with _StopFlag() as stop:
        for it in range(start_it, pc.iterations):
            for group in opt_actor.param_groups:
                group["lr"] = _lr(it, pc, pc.actor_lr, pc.actor_lr_min)
            for group in opt_critic.param_groups:
                group["lr"] = _lr(it, pc, pc.critic_lr, pc.critic_lr)
            t0 = time.time()
            roll = collect(venv, algo.act, lambda o: critic(policy.encode(o), o), policy.unnormalize_actions, pc.n_steps,
                           device, pc.reward_offset, scaler, pc.reward)
            t_roll = time.time() - t0
            st = ppo_update(algo, critic, roll, pc, opt_actor, opt_critic, it >= pc.critic_warmup_iters, gen)
            env_steps += roll.env_steps
            metrics = {f"train/{k}": v for k, v in st.items()}
            if roll.episodes:  # exploration episodes that ended in this rollout
                metrics["train/success_rate"] = float(np.mean([e["success"] for e in roll.episodes]))
                metrics["train/return"] = float(np.mean([e["return"] for e in roll.episodes]))
            metrics.update({"env_steps": env_steps, "time/rollout_s": t_roll, "time/update_s": time.time() - t0 - t_roll,
                            "time/env_s": roll.seconds["env"], "time/inference_s": roll.seconds["inference"],
                            "lr/actor": opt_actor.param_groups[0]["lr"]})
            last = it == pc.iterations - 1
            if (cfg.eval.every and (it + 1) % cfg.eval.every == 0) or last:
                ev = run_eval("final" if last else f"it_{it + 1:06d}")
                curve.append({"iteration": it + 1, "env_steps": env_steps, "wallclock_s": round(time.time() - t_start, 2),
                              "success_rate": ev["success_rate"], "mean_return": ev["mean_return"]})
                metrics.update({"eval/success_rate": ev["success_rate"], "eval/mean_return": ev["mean_return"]})
                if reached_stop(curve[1:], pc.stop_success, pc.stop_patience):
                    last = True  # the target held for `stop_patience` evaluations in a row: no need to spend more
            tests.after_iteration(policy, it + 1, env_steps)
            if (it + 1) % cfg.run.log_every == 0 or last:
                logger.log(it + 1, metrics)
            bar.update(1)
            bar.set_postfix(succ=f"{metrics.get('train/success_rate', float('nan')):.2f}",
                            kl=f"{st.get('approx_kl', 0):.1e}")
            if (it + 1) % cfg.run.ckpt_every == 0 or last or stop.requested:
                last_path = save(it + 1)
            if stop.requested:
                bar.close()
                logger.close()
                venv.close()
                raise KeyboardInterrupt
            if last:
                break
    bar.close()
    logger.close()
    venv.close()
    if on_end is not None:
        on_end(policy)
    final = curve[-1]
    summary["test_curve"] = tests.finish(policy, final["iteration"], env_steps)
    summary.update({"algo": cfg.algo, "task": task, "seed": cfg.run.seed, "final_success": final["success_rate"],
                    "final_return": final["mean_return"], "env_steps": env_steps,
                    "wallclock_s": round(time.time() - t_start, 2), "curve": curve,
                    "env_steps_to_90": steps_to(curve)["env_steps"], "wallclock_s_to_90": steps_to(curve)["wallclock_s"],
                    "stopped_early": len(curve) > 1 and curve[-1]["iteration"] < pc.iterations,
                    "run_dir": str(run_dir), "final_checkpoint": str(last_path) if last_path else None})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def policy_for_finetuning(bc: GenerativePolicy, algo: str, family: str, device: torch.device,
                          **changes: Any) -> GenerativePolicy:
    """The policy an algorithm fine-tunes: the BC weights under `changes` to the config, with the observation encoder
    frozen. Rollouts start from pure noise, so by default evaluation does too (no warm start, unit initial noise).
    Weights the BC checkpoint lacks (DPPO's `net_ft`, DSRL/EXPO's `steer`) are filled in by the caller or start fresh."""
    if bc.cfg.type != family:
        other = "dppo" if family == "flow" else "reinflow or algo=fpo"
        raise ConfigError(f"algo={algo} fine-tunes {family} policies; this checkpoint is a '{bc.cfg.type}' policy "
                          f"(use algo={other})")
    d = asdict(bc.cfg)
    d.update({"warm_start_steps": 0, "init_noise_scale": 1.0, **changes})
    policy = make_policy(PolicyConfig(**d), bc.shape).to(device)  # validates, e.g. shortcut needs 2^n steps
    result = policy.load_state_dict(bc.state_dict(), strict=False)
    extra = [k for k in result.missing_keys if not k.startswith(("net_ft.", "steer."))]
    if extra or result.unexpected_keys:
        raise ConfigError(f"algo={algo}: the checkpoint's weights do not fit ({(extra + result.unexpected_keys)[:3]})")
    policy.obs_encoder.requires_grad_(False)
    return policy


def frozen_copy(policy: GenerativePolicy) -> GenerativePolicy:
    """A detached, gradient-free copy (for BC regularisers)."""
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref
