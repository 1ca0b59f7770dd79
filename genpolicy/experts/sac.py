"""A SAC expert for tasks without a scripted one (gymnasium locomotion): `genpolicy data expert task=gym/hopper-v5`.

D4RL's "medium" data cannot be downloaded here, so the toolkit trains its own: SAC runs until its deterministic
evaluation return reaches `stop_return` (a "medium" policy, well short of the best SAC return) or the step budget
ends. The expert is saved as a directory (actor.safetensors + expert.json with its measured returns), never pickled,
and `make_expert` loads it for `genpolicy data generate` with the usual noise knob.

Shapes: B batch, Ds state dim, Da action dim.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genpolicy.errors import ConfigError
from genpolicy.experts.config import SACExpertConfig
from genpolicy.finetune.offpolicy import QEnsemble, Replay, TanhGaussianActor, Temperature, soft_update, subsample_min


def evaluate_actor(actor: TanhGaussianActor, task: str, episodes: int, seed: int) -> float:
    """Mean undiscounted return of the deterministic actor."""
    from genpolicy.envs.registry import make_env

    env = make_env(task, seed=seed)
    rets = []
    for ep in range(episodes):
        obs, done, ret = env.reset(seed=seed + ep), False, 0.0
        while not done:
            with torch.no_grad():
                a = actor(torch.as_tensor(obs["state"])[None], deterministic=True)["action"][0].numpy()
            obs, r, term, trunc, _ = env.step(a)
            ret += r
            done = term or trunc
        rets.append(ret)
    env.close()
    return float(np.mean(rets))


def train_expert(task: str, out: str | Path, cfg: SACExpertConfig, progress: bool = True) -> dict[str, Any]:
    """Train SAC on `task`; save its best evaluated actor to `out`; return {'return' (that actor's evaluation
    return), 'last_return', 'steps', 'curve'}."""
    from genpolicy.envs.registry import make_env
    from genpolicy.training.runs import progress_bar

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = make_env(task, seed=cfg.seed)
    ds, da = env.spec.state_dim, env.spec.action_dim
    actor = TanhGaussianActor(ds, da, cfg.width)
    critic = QEnsemble(ds, da, n=2, width=cfg.width)
    target = copy.deepcopy(critic).requires_grad_(False)
    temp = Temperature(0.1, target_entropy=-float(da))
    opt_a = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
    opt_t = torch.optim.Adam(temp.parameters(), lr=cfg.lr)
    replay = Replay(ds, da, min(cfg.steps, 1_000_000), torch.device("cpu"))
    obs = env.reset(seed=cfg.seed)["state"]
    curve: list[dict[str, float]] = []
    best = -np.inf
    bar = progress_bar(cfg.steps, f"SAC expert {task}", "step", progress)
    t0 = time.time()
    step = 0
    for step in range(1, cfg.steps + 1):
        if step <= cfg.start_steps:
            a = rng.uniform(-1, 1, da).astype(np.float32)
        else:
            with torch.no_grad():
                a = actor(torch.as_tensor(obs)[None], generator=gen)["action"][0].numpy()
        nxt, r, term, trunc, _ = env.step(a)
        replay.add(torch.as_tensor(obs)[None], torch.as_tensor(a)[None], torch.tensor([r]),
                   torch.as_tensor(nxt["state"])[None], torch.tensor([float(term)]))
        obs = env.reset()["state"] if (term or trunc) else nxt["state"]
        if step > cfg.start_steps:
            b = replay.sample(cfg.batch_size, gen)
            with torch.no_grad():
                nx = actor(b["next_obs"], generator=gen)
                q_next = subsample_min(target(b["next_obs"], nx["action"]), 2) - temp.alpha * nx["log_prob"]
                y = b["reward"] + cfg.gamma * (1 - b["terminated"]) * q_next  # (B,)
            q = critic(b["obs"], b["action"])  # (2, B)
            loss_c = 0.5 * ((q - y) ** 2).sum(0).mean()
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            pi = actor(b["obs"], generator=gen)
            critic.requires_grad_(False)  # the actor's loss flows through Q into the action only
            loss_a = (temp.alpha.detach() * pi["log_prob"] - critic(b["obs"], pi["action"]).min(0).values).mean()
            critic.requires_grad_(True)
            opt_a.zero_grad()
            loss_a.backward()
            opt_a.step()
            loss_t = temp.loss(pi["log_prob"])
            opt_t.zero_grad()
            loss_t.backward()
            opt_t.step()
            soft_update(target, critic, cfg.tau)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ret = evaluate_actor(actor, task, cfg.eval_episodes, seed=cfg.seed + 50_000)
            curve.append({"step": step, "return": ret, "minutes": round((time.time() - t0) / 60, 2)})
            bar.set_postfix(ret=f"{ret:.0f}")
            if ret > best:  # the saved expert is the best evaluated actor, not whatever the last update left
                best, best_state = ret, copy.deepcopy(actor.state_dict())
            if cfg.stop_return and ret >= cfg.stop_return:
                bar.update(step - bar.n)
                break
        if step % 1000 == 0:
            bar.update(1000)
    bar.close()
    env.close()
    if curve:
        actor.load_state_dict(best_state)
        final = best
    else:
        final = evaluate_actor(actor, task, cfg.eval_episodes, seed=cfg.seed + 50_000)
    last = curve[-1]["return"] if curve else final
    save_expert(out, actor, task, {"return": final, "last_return": last, "steps": step, "curve": curve,
                                   "config": asdict(cfg)})
    return {"return": final, "last_return": last, "steps": step, "curve": curve}


def save_expert(out: str | Path, actor: TanhGaussianActor, task: str, info: dict[str, Any]) -> Path:
    from genpolicy.fsutil import replace_dir, temp_sibling

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in actor.state_dict().items()}, str(tmp / "actor.safetensors"))
    meta = {"task": task, "obs_dim": actor.body[0].in_features, "act_dim": actor.mu.out_features,
            "width": actor.mu.in_features, **info}
    (tmp / "expert.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, out)
    return out


class SACExpert:
    """A saved SAC actor as a demonstrator (Expert protocol); `noise` adds Gaussian action noise."""

    def __init__(self, path: str | Path, noise: float = 0.0, seed: int = 0) -> None:
        path = Path(path)
        meta_path = path / "expert.json"
        if not meta_path.exists():
            raise ConfigError(f"{path}: no trained expert here; train one with `genpolicy data expert task=...`")
        self.meta = json.loads(meta_path.read_text())
        self.actor = TanhGaussianActor(self.meta["obs_dim"], self.meta["act_dim"], self.meta["width"])
        self.actor.load_state_dict(load_file(str(path / "actor.safetensors")), strict=True)
        self.actor.eval()
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, env: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            a = self.actor(torch.as_tensor(obs["state"])[None], deterministic=True)["action"][0].numpy()
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, size=a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def default_expert_path(task: str) -> Path:
    return Path("data") / "experts" / task.replace("/", "_")


def load_default_expert(task: str, noise: float, seed: int, path: Optional[str] = None) -> SACExpert:
    return SACExpert(path or default_expert_path(task), noise=noise, seed=seed)
