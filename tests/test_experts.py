"""The SAC expert for locomotion: it learns on the real Hopper-v5, saves without pickle, and generates demonstrations
with its return recorded; the gym adapter follows the Env protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.config import SACExpertConfig
from genpolicy.envs.registry import make_env
from genpolicy.experts.sac import SACExpert, evaluate_actor, train_expert
from genpolicy.finetune.offpolicy import Replay, TanhGaussianActor, subsample_min


def test_gym_adapter_scales_actions_and_reports_no_success() -> None:
    env = make_env("gym/hopper-v5", seed=0)
    obs = env.reset(seed=0)
    assert obs["state"].shape == (env.spec.state_dim,) and env.spec.action_dim == 3
    obs, r, term, trunc, info = env.step(np.zeros(3))
    assert info["success"] is False and np.isfinite(r)
    assert env.spec.success_definition.startswith("none")
    env.close()


def test_tanh_gaussian_log_prob_matches_change_of_variables() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, width=16)
    obs = torch.randn(5, 4)
    out = actor(obs, generator=torch.Generator().manual_seed(0))
    h = actor.body(obs)
    mu, std = actor.mu(h), actor.log_std(h).clamp(-5, 2).exp()
    u = torch.atanh(out["action"].clamp(-1 + 1e-6, 1 - 1e-6))
    ref = torch.distributions.Normal(mu, std).log_prob(u).sum(-1) - torch.log(1 - out["action"] ** 2 + 1e-12).sum(-1)
    assert torch.allclose(out["log_prob"], ref, atol=1e-3)


def test_replay_ring_and_subsampled_min() -> None:
    rb = Replay(3, 2, capacity=5, device=torch.device("cpu"))
    for i in range(7):
        rb.add(torch.full((1, 3), float(i)), torch.zeros(1, 2), torch.tensor([float(i)]), torch.zeros(1, 3), torch.zeros(1))
    assert rb.n == 5 and sorted(rb.reward.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    q = torch.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, 9.0]])
    assert torch.equal(subsample_min(q, 3), torch.tensor([1.0, 0.0]))
    sub = subsample_min(q, 2, torch.Generator().manual_seed(0))
    assert all(float(sub[j]) in q[:, j].tolist() and float(sub[j]) >= float(q[:, j].min()) for j in range(2))


def test_sac_expert_improves_on_hopper_and_generates_demos(tmp_path: Path) -> None:
    torch.manual_seed(0)
    random_ret = evaluate_actor(TanhGaussianActor(11, 3, 64), "gym/hopper-v5", 3, seed=1)  # untrained actor
    cfg = SACExpertConfig(steps=3000, start_steps=1000, batch_size=64, width=64, eval_every=1500, eval_episodes=3)
    res = train_expert("gym/hopper-v5", tmp_path / "expert", cfg, progress=False)
    assert res["return"] > 1.5 * max(random_ret, 1.0), (res["return"], random_ret)
    meta = json.loads((tmp_path / "expert" / "expert.json").read_text())
    assert meta["return"] == res["return"] and (tmp_path / "expert" / "actor.safetensors").exists()
    # the saved actor is the best evaluated one, and re-evaluating it on the same seeds gives its recorded return
    assert len(meta["curve"]) == 2 and meta["return"] == max(c["return"] for c in meta["curve"])
    expert = SACExpert(tmp_path / "expert", noise=0.1)
    assert evaluate_actor(expert.actor, "gym/hopper-v5", 3, seed=cfg.seed + 50_000) == pytest.approx(meta["return"])
    from genpolicy.datasets.collect import generate

    rb = generate("gym/hopper-v5", 2, seed=0, progress=False, expert_path=str(tmp_path / "expert"),
                  max_episode_steps=200)
    assert rb.n_episodes == 2 and rb.attrs["expert_mean_return"] > 0 and expert.meta["task"] == "gym/hopper-v5"
