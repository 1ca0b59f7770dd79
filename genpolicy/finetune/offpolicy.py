"""Shared off-policy machinery: replays (plain and chunk-level, with RLPD-style offline mixing), Q ensembles with
LayerNorm, REDQ-style subsampled minimum, Polyak target updates, an auto-tuned temperature, TD targets, and the
fine-tuning loop shared by DSRL and EXPO (collection with env steps counted chunk size included, a base-policy
warm-up, a configurable update-to-data ratio, evaluation, checkpoints with the replay, resume).
Used by the SAC expert trainer (experts/sac.py) too.

Shapes: B batch, E ensemble size, Ds state (or conditioning) dim, Da action dim (a flattened chunk counts as one action).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol

import numpy as np

import torch
from torch import nn

from genpolicy.policies.networks.rl import QEnsemble, TanhGaussianActor, subsample_min  # noqa: F401  (re-exported)


class Replay:
    """A ring buffer of (obs, action, reward, next_obs, terminated) on one device."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device) -> None:
        self.capacity, self.device, self.n, self.i = capacity, device, 0, 0
        z = lambda *s: torch.zeros(capacity, *s, device=device)  # noqa: E731
        self.obs, self.next_obs, self.action = z(obs_dim), z(obs_dim), z(act_dim)
        self.reward, self.terminated = z(), z()

    def add(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
            terminated: torch.Tensor) -> None:
        """Add a batch of transitions (N, ...); the oldest rows are overwritten when full."""
        n = obs.shape[0]
        k = (self.i + torch.arange(n, device=self.device)) % self.capacity
        self.obs[k], self.action[k], self.reward[k] = obs.to(self.device), action.to(self.device), reward.to(self.device).float()
        self.next_obs[k], self.terminated[k] = next_obs.to(self.device), terminated.to(self.device).float()
        self.i = (self.i + n) % self.capacity
        self.n = min(self.n + n, self.capacity)

    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.n, (batch,), generator=generator).to(self.device)
        return {"obs": self.obs[idx], "action": self.action[idx], "reward": self.reward[idx],
                "next_obs": self.next_obs[idx], "terminated": self.terminated[idx]}


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)


class Temperature(nn.Module):
    """SAC's alpha, tuned so the policy's entropy tracks `target_entropy`."""

    def __init__(self, init: float = 0.1, target_entropy: float = 0.0) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init)))
        self.target_entropy = target_entropy

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()




# ----------------------------------------------------------------------------------------------------------------------
# chunk-level replay, demonstrations, TD targets and the fine-tuning loop (DSRL, EXPO)
# ----------------------------------------------------------------------------------------------------------------------
class DictReplay(nn.Module):
    """A ring buffer of named tensors (chunk transitions). Its storage is module buffers, so checkpoints save it and
    an interrupted run resumes with its data. Keys: obs (To, Ds), next_obs, action (H, Da) normalised, reward,
    terminated, plus what an algorithm adds (DSRL's noise w)."""

    def __init__(self, specs: dict[str, tuple[int, ...]], capacity: int) -> None:
        super().__init__()
        self.keys, self.capacity = list(specs), int(capacity)
        for k, shape in specs.items():
            self.register_buffer(f"buf_{k}", torch.zeros(capacity, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # rows written so far
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(min(self.count.item(), self.capacity))

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        n = next(iter(batch.values())).shape[0]
        idx = (self.cursor + torch.arange(n)) % self.capacity
        for k in self.keys:
            getattr(self, f"buf_{k}")[idx] = batch[k].detach().to(self.count.device).float()
        self.cursor.copy_((self.cursor + n) % self.capacity)
        self.count += n

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self), (n,), generator=generator)
        return {k: getattr(self, f"buf_{k}")[idx] for k in self.keys}


def mixed_batch(online: DictReplay, offline: Optional[DictReplay], n: int, offline_ratio: float,
                generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """RLPD-style: round(n * offline_ratio) rows from the demonstrations, the rest from online data."""
    n_off = int(round(n * offline_ratio)) if offline is not None and len(offline) else 0
    on = online.sample(n - n_off, generator)
    if n_off == 0:
        return on
    off = offline.sample(n_off, generator)
    return {k: torch.cat([on[k], off[k]]) for k in on if k in off}


def demo_transitions(rb: Any, n_obs_steps: int, horizon: int, n_action_steps: int,
                     normalize: Any) -> dict[str, torch.Tensor]:
    """Demonstrations -> chunk transitions at stride Ta: obs window at t, the H actions from t (edge-padded,
    normalised), reward 1 and terminated on the last chunk of each episode (demos end in success), next window at t+Ta."""
    obs, nxt, act, rew, term = [], [], [], [], []
    states, actions = rb.data["state"].astype(np.float32), rb.data["action"].astype(np.float32)
    start = 0
    for end in rb.episode_ends.tolist():
        for t in range(start, end, n_action_steps):
            win = np.clip(np.arange(t - n_obs_steps + 1, t + 1), start, end - 1)
            t2 = t + n_action_steps
            win2 = np.clip(np.arange(t2 - n_obs_steps + 1, t2 + 1), start, end - 1)
            obs.append(states[win])
            nxt.append(states[win2])
            act.append(actions[np.clip(np.arange(t, t + horizon), start, end - 1)])
            last = t2 >= end
            rew.append(float(last))
            term.append(float(last))
        start = end
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return {"obs": f(obs), "next_obs": f(nxt), "action": normalize(f(act)).clamp(-1.0, 1.0), "reward": f(rew),
            "terminated": f(term)}


def td_target(reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * Q(s', a'): one chunk is one step (gamma per chunk); truncation bootstraps."""
    return reward + gamma * (1.0 - terminated) * next_q


class OffPolicyAlgo(Protocol):
    policy: Any  # the steered GenerativePolicy; evaluation and checkpoints use exactly this object
    uses_offline: bool  # whether demonstrations are mixed into its batches
    extra_specs: dict[str, tuple[int, ...]]  # replay keys beyond obs/next_obs/action/reward/terminated

    def modules(self) -> dict[str, nn.Module]: ...  # critics, targets, temperatures (saved for resume)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def act(self, obs: dict[str, torch.Tensor], warmup: bool) -> dict[str, torch.Tensor]: ...  # {"actions": (N,H,Da)}

    def update(self, batch: dict[str, torch.Tensor], update_actor: bool = True) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]: ...


def make_offpolicy_algo(name: str, bc: Any, cfg: Any, device: torch.device) -> OffPolicyAlgo:
    if name == "dsrl":
        from genpolicy.finetune.dsrl import DSRL

        return DSRL(bc, cfg, device)
    if name == "expo":
        from genpolicy.finetune.expo import EXPO

        return EXPO(bc, cfg, device)
    from genpolicy.errors import ConfigError

    raise ConfigError(f"unknown off-policy algo '{name}'; use dsrl or expo")


def finetune_offpolicy(cfg: Any, on_end: Optional[Any] = None) -> dict[str, Any]:
    """Fine-tune a BC checkpoint with DSRL or EXPO; returns the same summary as the on-policy loop.

    Each collected vector step makes round(utd * n_envs) critic updates; the actor side (DSRL's noise actor, EXPO's
    base, edit and temperature) updates on every round(utd)-th of them, i.e. once per collected transition, as
    upstream RLPD-style code does (`update_actor`). Logged train/* values are means over the iteration's updates."""
    import json
    import time
    from dataclasses import asdict
    from pathlib import Path

    from genpolicy.datasets.replay_buffer import ReplayBuffer
    from genpolicy.errors import ConfigError, DataError
    from genpolicy.finetune.ppo import steps_to
    from genpolicy.finetune.common import TestPoints, load_start, make_venv, restore_or_refuse, rng_state, save_rotating
    from genpolicy.finetune.rollout import step_chunks
    from genpolicy.training.bc import _StopFlag
    from genpolicy.training.evaluate import evaluate
    from genpolicy.training.runs import MetricsLogger, make_run_dir, progress_bar, slug

    start = load_start(cfg)
    device, task, source, bc = start["device"], start["task"], start["source"], start["bc"]
    oc = cfg.offpolicy
    algo = make_offpolicy_algo(cfg.algo, bc, cfg, device)
    if oc.interventions and not (algo.uses_offline and oc.offline_ratio > 0):  # never ignore the corrections silently
        raise ConfigError(f"offpolicy.interventions needs offline mixing: an algorithm that uses offline data (expo, "
                          f"dsrl.variant=na) and offpolicy.offline_ratio > 0 (got {cfg.algo}, ratio {oc.offline_ratio})")
    policy = algo.policy
    pc = policy.cfg
    venv = make_venv(cfg, task, policy, oc.n_envs, seed=20_000_000 + 1_000_000 * cfg.run.seed)
    if not venv.final_obs:  # replay stores next_obs for the TD target: a post-reset window would corrupt it
        venv.close()
        raise ConfigError(f"task '{task}' resets inside step and returns no final observation; off-policy fine-tuning "
                          "needs it for truncated transitions: use an on-policy algo (dppo, fpo, reinflow)")
    specs = {"obs": (pc.n_obs_steps, policy.shape.state_dim), "next_obs": (pc.n_obs_steps, policy.shape.state_dim),
             "action": (pc.horizon, policy.shape.action_dim), "reward": (), "terminated": (), **algo.extra_specs}
    cams = list(policy.shape.cameras)
    # a frozen image encoder gives each window one conditioning for ever: computed once when stored (centre crop),
    # so updates never run the image encoder (finetune/pixels.py)
    cached = bool(cams) and cfg.encoder_mode == "frozen"
    if cached:
        from genpolicy.finetune.pixels import frozen_encode

        dc = policy.obs_encoder.out_dim
        specs = {**specs, "cond": (dc,), "next_cond": (dc,)}
    if cams:  # frames once, uint8, windows by index (finetune/pixels.py); a CPU-side ring however big
        from genpolicy.finetune.pixels import FrameReplay, demo_frame_transitions

        online: Any = FrameReplay(specs, cams, policy.shape.image_size, pc.n_obs_steps, oc.capacity, oc.n_envs)
    else:
        online = DictReplay(specs, oc.capacity).to(device)
    if cams and oc.interventions:
        raise ConfigError("offpolicy.interventions takes state-only recordings for now; this checkpoint sees cameras "
                          f"{cams} (set offpolicy.interventions='')")
    offline: Any = None
    if algo.uses_offline and oc.offline_ratio > 0 and (oc.offline_data != "none" or oc.interventions):
        if oc.reward != "success":
            raise ConfigError("demonstrations carry no env rewards: offline mixing needs offpolicy.reward=success "
                              "(or offpolicy.offline_data=none)")
        path = oc.offline_data or source.get("data", {}).get("path", "")
        if oc.offline_data != "none" and (not path or not Path(path).exists()):
            raise DataError(f"offline data '{path}' not found: set offpolicy.offline_data=<zarr> or offpolicy.offline_data=none")
        if cams:
            rb = ReplayBuffer.load(path, keys=["action", "state", *[f"image.{c}" for c in cams]])
            offline = demo_frame_transitions(rb, pc.n_obs_steps, pc.horizon, pc.n_action_steps,
                                             policy.normalize_actions, cams, policy.shape.image_size,
                                             encode=(lambda o: frozen_encode(policy, o)) if cached else None)
            offline.buf_reward += oc.reward_offset  # the same reward as online transitions
        else:
            parts = []
            if oc.offline_data != "none":
                parts.append(demo_transitions(ReplayBuffer.load(path, keys=["action", "state"]), pc.n_obs_steps,
                                              pc.horizon, pc.n_action_steps, policy.normalize_actions))
            if oc.interventions:  # deployment corrections (and the RLIF takeover penalty) join the demonstrations
                from genpolicy.finetune.interventions import intervention_transitions

                parts.append(intervention_transitions(oc.interventions, pc.n_obs_steps, pc.horizon, pc.n_action_steps,
                                                      policy.normalize_actions, oc.rlif, oc.rlif_penalty))
            demo = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            demo["reward"] = demo["reward"] + oc.reward_offset  # the same reward as online transitions
            offline = DictReplay({k: specs[k] for k in demo}, len(demo["reward"])).to(device)
            offline.add(demo)
    run_dir = make_run_dir(cfg.run, f"finetune-{slug(task)}-{cfg.algo}")
    saved_cfg = {"task": {"name": task, "max_episode_steps": cfg.task.max_episode_steps},
                 "finetune": {**asdict(cfg), "exploration": algo.describe()}, "source_checkpoint": str(cfg.ckpt)}
    modules = {"replay": online, **algo.modules()}
    optimizers = algo.optimizers()
    gen = torch.Generator().manual_seed(cfg.run.seed)
    gens = {"loop": gen, **({"algo": algo.gen} if hasattr(algo, "gen") else {})}  # all saved: resume is exact
    actor_every = max(1, int(round(oc.utd)))
    per_iter = oc.chunk_steps_per_iter
    n_iters = max(1, math.ceil(oc.env_steps / (per_iter * oc.n_envs * pc.n_action_steps)))
    start_it, env_steps, curve, wall0, summary, n_updates = 0, 0, [], 0.0, {}, 0
    st = restore_or_refuse(cfg, run_dir, policy, modules, optimizers, gens, venv)
    if st is not None:
        start_it, env_steps, curve, wall0 = st["iteration"], st["env_steps"], st["curve"], st["wallclock_s"]
        summary, n_updates = st["summary"], st["updates"]
    elif cams:  # the first windows' frames (a resumed replay holds the indices of the rebuilt episodes' windows)
        online.start(list(range(oc.n_envs)), venv.batch_obs(torch.device("cpu")))

    def run_eval(tag: str) -> dict[str, Any]:
        return evaluate(policy, task, n_episodes=cfg.eval.n_episodes, n_envs=cfg.eval.n_envs, seed=cfg.eval.seed,
                        out_dir=run_dir / "eval" / tag, n_videos=cfg.eval.n_videos if tag == "final" else 0,
                        max_episode_steps=cfg.task.max_episode_steps, progress=False)

    logger = MetricsLogger(run_dir, resume_step=start_it)  # a resumed run rewrites the rows after its checkpoint
    tests = TestPoints(cfg, task, n_iters, oc.env_steps, run_dir, st.get("test_curve") if st else None)
    t_start = time.time() - wall0
    if not curve:  # the start is the BC checkpoint itself (a fresh steering head is not the starting policy)
        ev = evaluate(bc, task, n_episodes=cfg.eval.n_episodes, n_envs=cfg.eval.n_envs, seed=cfg.eval.seed,
                      out_dir=run_dir / "eval" / "start", max_episode_steps=cfg.task.max_episode_steps, progress=False)
        summary = {"start_success": ev["success_rate"], "start_return": ev["mean_return"]}
        curve.append({"iteration": 0, "env_steps": 0, "wallclock_s": 0.0, "success_rate": ev["success_rate"],
                      "mean_return": ev["mean_return"]})
        t_start = time.time()

    def save(it: int) -> Path:
        state = {"iteration": it, "env_steps": env_steps, "curve": curve, "wallclock_s": time.time() - t_start,
                 "summary": summary, "updates": n_updates, "test_curve": tests.curve, **rng_state(gens, venv)}
        return save_rotating(run_dir, it, policy, saved_cfg, state, modules, optimizers)

    bar = progress_bar(n_iters, f"{cfg.algo} {task}", "it", cfg.run.progress, initial=start_it)
    last_path = None
    with _StopFlag() as stop:
        for it in range(start_it, n_iters):
            t0, t_upd, episodes, sums = time.time(), 0.0, [], {}
            for _ in range(per_iter):
                obs = venv.batch_obs(device)
                warm = env_steps < oc.warmup_env_steps
                out = algo.act(obs, warmup=warm)
                chunks = policy.unnormalize_actions(out["actions"].clamp(-1.0, 1.0))  # (N, H, Da) env units
                res = step_chunks(venv, chunks, oc.reward)
                env_steps += res.env_steps
                episodes += res.episodes
                row = {"obs": obs["state"].float(), "next_obs": res.next_obs["state"].to(device).float(),
                       "action": out["actions"], "reward": (res.rewards + oc.reward_offset).float(),
                       "terminated": res.terminated.float()}
                row.update({k: out[k] for k in algo.extra_specs})
                if cached:
                    row["cond"] = frozen_encode(policy, obs)
                    row["next_cond"] = frozen_encode(policy, {k: v.to(device) for k, v in res.next_obs.items()})
                if cams:
                    online.add(row, res.next_obs, res.n_steps, res.terminated | res.truncated,
                               venv.batch_obs(torch.device("cpu")))
                else:
                    online.add(row)
                if not warm:
                    t1 = time.time()
                    n_up = max(1, int(round(oc.utd * oc.n_envs)))
                    for _ in range(n_up):
                        batch = mixed_batch(online, offline if algo.uses_offline else None, oc.batch_size,
                                            oc.offline_ratio, gen)
                        n_updates += 1
                        for k, v in algo.update(batch, update_actor=n_updates % actor_every == 0).items():
                            tot = sums.setdefault(k, [0.0, 0])
                            tot[0], tot[1] = tot[0] + v, tot[1] + 1
                    t_upd += time.time() - t1
            metrics = {f"train/{k}": v / n for k, (v, n) in sums.items()}
            if episodes:
                metrics["train/success_rate"] = float(np.mean([e["success"] for e in episodes]))
                metrics["train/return"] = float(np.mean([e["return"] for e in episodes]))
            metrics.update({"env_steps": env_steps, "updates": n_updates, "time/iter_s": time.time() - t0,
                            "time/update_s": t_upd})
            last = it == n_iters - 1
            if (cfg.eval.every and (it + 1) % cfg.eval.every == 0) or last:
                ev = run_eval("final" if last else f"it_{it + 1:06d}")
                curve.append({"iteration": it + 1, "env_steps": env_steps, "wallclock_s": round(time.time() - t_start, 2),
                              "success_rate": ev["success_rate"], "mean_return": ev["mean_return"]})
                metrics.update({"eval/success_rate": ev["success_rate"], "eval/mean_return": ev["mean_return"]})
            tests.after_iteration(policy, it + 1, env_steps)
            if (it + 1) % cfg.run.log_every == 0 or last:
                logger.log(it + 1, metrics)
            bar.update(1)
            bar.set_postfix(succ=f"{metrics.get('train/success_rate', float('nan')):.2f}", steps=env_steps)
            if (it + 1) % cfg.run.ckpt_every == 0 or last or stop.requested:
                last_path = save(it + 1)
            if stop.requested:
                bar.close()
                logger.close()
                venv.close()
                raise KeyboardInterrupt
    bar.close()
    logger.close()
    venv.close()
    if on_end is not None:
        on_end(policy)
    final = curve[-1]
    summary["test_curve"] = tests.finish(policy, final["iteration"], env_steps)
    to90 = steps_to(curve)
    summary.update({"algo": cfg.algo, "task": task, "seed": cfg.run.seed, "final_success": final["success_rate"],
                    "final_return": final["mean_return"], "env_steps": env_steps, "updates": n_updates,
                    "wallclock_s": round(time.time() - t_start, 2), "curve": curve,
                    "env_steps_to_90": to90["env_steps"], "wallclock_s_to_90": to90["wallclock_s"],
                    "run_dir": str(run_dir), "final_checkpoint": str(last_path) if last_path else None})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
