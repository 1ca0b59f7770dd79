"""On-policy fine-tuning: GAE against a plain loop, ratio = 1 at the first minibatch, gradient scope, checkpoints
that evaluate what was fine-tuned, resume, and learning on the toy task from a 50%-mode BC policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.config import (EvalConfig, FinetuneConfig, PPOConfig, RunConfig,
                              TaskConfig)
from genpolicy.finetune.ppo import ValueNet, finetune, gae, make_algo, ppo_update
from genpolicy.finetune.rollout import VecChunkEnv, collect
from genpolicy.training.checkpoint import load_policy

TOY = "toy/bimodal-right"


# --- GAE ----------------------------------------------------------------------------------------------------------
def _gae_reference(r, v, fv, nv, term, trunc, gamma, lam):
    """Per env, per step, written the long way."""
    T, N = r.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if term[t, n]:
                next_v = 0.0
            elif trunc[t, n]:
                next_v = fv[t, n]
            elif t == T - 1:
                next_v = nv[n]
            else:
                next_v = v[t + 1, n]
            delta = r[t, n] + gamma * next_v - v[t, n]
            if term[t, n] or trunc[t, n]:
                running = delta
            else:
                running = delta + gamma * lam * running
            adv[t, n] = running
    return adv


def test_gae_matches_plain_loop_reference() -> None:
    rng = np.random.default_rng(0)
    T, N = 12, 5
    r, v, fv, nv = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=N)
    term = rng.random((T, N)) < 0.1
    trunc = (rng.random((T, N)) < 0.1) & ~term
    fv = np.where(trunc, fv, 0.0)
    f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    out = gae(f(r), f(v), f(fv), f(nv), torch.as_tensor(term), torch.as_tensor(trunc), 0.97, 0.9)
    ref = _gae_reference(r, v, fv, nv, term, trunc, 0.97, 0.9)
    assert np.allclose(out["adv"].numpy(), ref, atol=1e-10)
    assert np.allclose(out["returns"].numpy(), ref + v, atol=1e-10)


# --- BC starting points -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bc_ckpts(toy_bc_ckpts) -> dict[str, Path]:
    return toy_bc_ckpts


def _ft_cfg(algo: str, ckpt: Path, run_dir: Path, iterations: int = 1, **ppo) -> FinetuneConfig:
    p = dict(n_envs=8, n_steps=4, iterations=iterations, epochs=2, minibatch_size=32, actor_lr=1e-4, actor_lr_min=1e-4,
             clip_eps=0.05, target_kl=0.0, gamma=0.99)
    p.update(ppo)
    cfg = FinetuneConfig(algo=algo, ckpt=str(ckpt), task=TaskConfig(name=TOY), ppo=PPOConfig(**p),
                         eval=EvalConfig(n_episodes=20, n_envs=10, n_videos=0, every=5),
                         run=RunConfig(dir=str(run_dir), progress=False, log_every=1, ckpt_every=1000))
    cfg.dppo.ft_steps = 10  # all steps: the left/right choice is made in the noisy early steps
    cfg.reinflow.steps = 4
    cfg.reinflow.sigma_min, cfg.reinflow.sigma_max = 0.1, 0.3
    cfg.fpo.zero_noise_eval = False  # evaluate the random-noise policy, whose start is the 50% two-way one
    return cfg


ALGOS = [("dppo", "diffusion"), ("fpo", "flow"), ("reinflow", "flow")]


def _one_update(algo_name: str, ckpt: Path, tmp: Path, ft_steps: int = 10, **kw):
    cfg = _ft_cfg(algo_name, ckpt, tmp, **kw)
    cfg.dppo.ft_steps = ft_steps
    torch.manual_seed(0)
    algo = make_algo(algo_name, load_policy(ckpt), cfg, torch.device("cpu"))
    policy = algo.policy.eval()
    venv = VecChunkEnv(TOY, 8, policy.cfg.n_obs_steps, policy.cfg.n_action_steps, seed=0)
    critic = ValueNet(policy.obs_encoder.out_dim)
    roll = collect(venv, algo.act, lambda o: critic(policy.encode(o)), policy.unnormalize_actions, 4, torch.device("cpu"))
    opt_a = torch.optim.AdamW(algo.actor_parameters(), lr=3e-4)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-3)
    return algo, roll, critic, opt_a, opt_c, cfg


@pytest.mark.parametrize("algo_name,ptype", ALGOS)
def test_first_minibatch_ratio_is_one(bc_ckpts, tmp_path, algo_name, ptype) -> None:
    algo, roll, critic, opt_a, opt_c, cfg = _one_update(algo_name, bc_ckpts[ptype], tmp_path)
    assert roll.env_steps > 0 and roll.actions.shape[:2] == (4, 8)
    stats = ppo_update(algo, critic, roll, cfg.ppo, opt_a, opt_c, True, torch.Generator().manual_seed(0))
    assert stats["first_ratio_max_dev"] < 1e-5, stats
    assert np.isfinite(stats["policy_loss"]) and np.isfinite(stats["value_loss"])


@pytest.mark.parametrize("algo_name,ptype", [("dppo", "diffusion"), ("reinflow", "flow")])
def test_rollout_chains_score_as_standard_normal_draws(bc_ckpts, tmp_path, algo_name, ptype) -> None:
    """The chains `act` stored, scored by the step Gaussians the algorithm's own log-prob uses (at the rollout
    weights): every step's z-scores are the clipped standard normal draws that made them (mean ~0, std ~1, max |z|
    at the clip). A rollout scored on another grid, network or noise scale (ReinFlow's upstream bug) fails this,
    which the first-minibatch ratio (one function called twice) cannot see."""
    cfg = _ft_cfg(algo_name, bc_ckpts[ptype], tmp_path)
    cfg.dppo.ft_steps = 10
    cfg.dppo.min_sampling_std = cfg.dppo.min_logprob_std = 0.1  # the same floor for acting and scoring
    torch.manual_seed(0)
    algo = make_algo(algo_name, load_policy(bc_ckpts[ptype]), cfg, torch.device("cpu"))
    with torch.no_grad():  # the NoiseNet starts at mid-range; give sigma some dependence on (s, k)
        for p in (algo.noise.parameters() if algo_name == "reinflow" else []):
            p.add_(0.5 * torch.randn_like(p))
    obs = {"state": torch.rand(256, 1, 2) * 2 - 1}
    out = algo.act(obs)
    chain = out["chain"]  # (N, K'+1, H, Da)
    assert torch.equal(out["actions"], chain[:, -1])
    cond = algo.policy.encode(obs)
    with torch.no_grad():
        if algo_name == "dppo":
            zs = []
            for j in range(algo.Kft):
                jj = torch.full((chain.shape[0],), j)
                mean, std = algo.step_dist(algo.policy, cond, chain[:, j], jj)
                zs.append((chain[:, j + 1] - mean) / std)
            z = torch.stack(zs, 1)  # (N, K', H, Da)
            clip = cfg.dppo.randn_clip
        else:
            mean, sigma = algo.step_dist(cond, chain)
            z = ((chain[:, 1:].flatten(0, 1) - mean) / sigma).view(chain.shape[0], algo.K, *chain.shape[2:])
            clip = cfg.reinflow.randn_clip
    for k in range(z.shape[1]):  # per step
        zk = z[:, k]
        assert abs(zk.mean().item()) < 0.05 and abs(zk.std().item() - 1.0) < 0.05, (k, zk.mean(), zk.std())
        assert zk.abs().max().item() == pytest.approx(clip, abs=1e-3), (k, zk.abs().max())


@pytest.mark.parametrize("algo_name,ptype", ALGOS)
def test_gradients_reach_only_the_fine_tuned_parameters(bc_ckpts, tmp_path, algo_name, ptype) -> None:
    algo, roll, critic, *_ = _one_update(algo_name, bc_ckpts[ptype], tmp_path, ft_steps=3)
    policy = algo.policy
    with torch.no_grad():
        cond = policy.encode({k: v.flatten(0, 1) for k, v in roll.obs.items()})
    flat = {"cond": cond, "actions": roll.actions.flatten(0, 1), "adv": torch.randn(cond.shape[0]),
            **{k: v.flatten(0, 1) for k, v in roll.extras.items()}}
    samples = algo.samples(flat)
    algo.prepare(samples)
    out = algo.loss({k: v[:16] for k, v in samples.items()})
    (out["log_ratio"].sum() + out.get("aux_loss", 0.0)).backward()
    trainable = {id(p) for p in algo.actor_parameters()}
    named = list(policy.named_parameters()) + [(f"extra.{n}", p) for m in algo.modules().values()
                                                for n, p in m.named_parameters()]
    for name, p in named:
        has = p.grad is not None and bool(p.grad.abs().sum() > 0)
        if id(p) in trainable:
            continue
        assert not has, f"{algo_name}: {name} got a gradient but is not fine-tuned"
    got = [n for n, p in named if id(p) in trainable and p.grad is not None and bool(p.grad.abs().sum() > 0)]
    assert got, f"{algo_name}: no fine-tuned parameter got a gradient"
    if algo_name == "fpo":
        assert policy.cfg.init_noise_scale == 1.0 and FinetuneConfig().fpo.zero_noise_eval
    if algo_name == "dppo":
        assert policy.cfg.ft_steps == 3 and all(n.startswith("net_ft.") for n in got)
        assert not any(p.requires_grad for p in policy.net.parameters())  # the frozen steps' network
    if algo_name == "reinflow":
        assert any(n.startswith("extra.") for n in got) and any(n.startswith("net.") for n in got)


def test_dppo_with_one_fine_tuned_step(bc_ckpts, tmp_path) -> None:
    _, _, critic, _, opt_c, cfg = _one_update("dppo", bc_ckpts["diffusion"], tmp_path)
    cfg.dppo.ft_steps = 1
    algo = make_algo("dppo", load_policy(bc_ckpts["diffusion"]), cfg, torch.device("cpu"))
    roll = collect(VecChunkEnv(TOY, 4, 1, 4, seed=0), algo.act, lambda o: critic(algo.policy.encode(o)),
                   algo.policy.unnormalize_actions, 3, torch.device("cpu"))
    opt_a = torch.optim.AdamW(algo.actor_parameters(), lr=3e-4)
    stats = ppo_update(algo, critic, roll, cfg.ppo, opt_a, opt_c, True, torch.Generator().manual_seed(0))
    assert roll.extras["chain"].shape[2] == 2  # (T, N, K'+1, H, Da): x before and after the single fine-tuned step
    assert np.isfinite(stats["policy_loss"]) and stats["first_ratio_max_dev"] < 1e-5


# --- the whole loop -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo_name,ptype", ALGOS)
def test_toy_task_reaches_90_percent_from_the_50_percent_bc_policy(bc_ckpts, tmp_path, algo_name, ptype) -> None:
    cfg = _ft_cfg(algo_name, bc_ckpts[ptype], tmp_path / "run", iterations=30, n_envs=16, n_steps=8,
                  minibatch_size=128, epochs=2)
    res = finetune(cfg)
    assert 0.15 <= res["start_success"] <= 0.85, res["start_success"]  # really a two-way start
    assert res["env_steps_to_90"] is not None, res["curve"]  # reached >= 90% on 20 held-out episodes
    assert res["final_success"] >= 0.8, res["curve"]  # and stayed there (no collapse)
    assert res["env_steps"] > 0 and res["wallclock_s_to_90"] is not None
    # the saved checkpoint evaluates with the sampler it was fine-tuned with
    saved = load_policy(res["final_checkpoint"])
    if algo_name == "dppo":
        assert saved.cfg.ft_steps == 10 and saved.cfg.eta == 0.0
        from genpolicy.errors import ConfigError

        with pytest.raises(ConfigError, match="fine-tuned on the last 10 steps"):
            saved.set_sampler("ddpm")
    if algo_name == "reinflow":
        assert saved.cfg.sampler == "euler" and saved.cfg.steps == 4
    if algo_name == "fpo":
        assert saved.cfg.init_noise_scale == 1.0  # zero_noise_eval=false here; the default (true) is checked below
    summary = json.loads((Path(res["run_dir"]) / "summary.json").read_text())
    assert summary["final_success"] == res["final_success"]


def test_finetune_resumes_from_its_last_checkpoint(bc_ckpts, tmp_path) -> None:
    cfg = _ft_cfg("reinflow", bc_ckpts["flow"], tmp_path / "run", iterations=2)
    cfg.run.ckpt_every = 1
    finetune(cfg)
    from genpolicy.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds fine-tuning checkpoints"):
        finetune(cfg)
    cfg.ppo.iterations = 3
    cfg.run.resume = True
    res = finetune(cfg)
    its = [json.loads(x).get("step") for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert its.count(3) == 1 and res["curve"][-1]["iteration"] == 3


def test_stop_rule_needs_the_target_held_for_patience_evaluations() -> None:
    from genpolicy.finetune.ppo import reached_stop

    evals = [{"success_rate": s} for s in (0.5, 0.95, 0.85, 0.9)]
    assert not reached_stop(evals, 0.9, 2)  # 0.95 then 0.85: the target did not hold
    assert reached_stop(evals + [{"success_rate": 1.0}], 0.9, 2)
    assert reached_stop(evals[:2], 0.9, 1) and not reached_stop(evals[:1], 0.9, 1)
    assert not reached_stop([{"success_rate": 1.0}] * 3, 0.0, 1)  # 0 disables


def test_finetune_stops_early_once_the_target_holds(bc_ckpts, tmp_path) -> None:
    cfg = _ft_cfg("fpo", bc_ckpts["flow"], tmp_path / "run", iterations=6, stop_success=0.01, stop_patience=1)
    cfg.eval.every = 2
    res = finetune(cfg)
    # the first evaluation after fine-tuning starts (iteration 2) reaches 1% success, so the run ends there
    assert res["stopped_early"] and res["curve"][-1]["iteration"] == 2, res["curve"]
    assert res["final_checkpoint"] and Path(res["final_checkpoint"]).name.endswith("2")


def test_per_algorithm_ppo_values_from_the_preset() -> None:
    """One preset per suite: each on-policy algorithm's own `ppo` values (e.g. fpo.clip_eps) fold into `ppo` for that
    algorithm only, so a benchmark passes nothing but preset=, the budget and the seed."""
    from genpolicy.cli import compose
    from genpolicy.errors import ConfigError

    got = {a: compose("finetune", [f"algo={a}", "preset=metaworld", "ckpt=x"], FinetuneConfig).ppo
           for a in ("dppo", "fpo", "reinflow", "dsrl")}
    assert (got["fpo"].clip_eps, got["fpo"].minibatch_size) == (0.05, 500)
    assert (got["dppo"].clip_eps, got["dppo"].minibatch_size) == (0.01, 1500)
    assert (got["reinflow"].clip_eps, got["reinflow"].actor_lr, got["reinflow"].actor_lr_min) == (0.05, 1e-4, 1e-4)
    assert (got["dsrl"].clip_eps, got["dsrl"].minibatch_size, got["dsrl"].actor_lr) == (0.01, 500, 3e-5)  # shared
    with pytest.raises(ConfigError, match="fpo.clip_eps must be > 0"):
        compose("finetune", ["algo=fpo", "ckpt=x", "fpo.clip_eps=-0.1"], FinetuneConfig)


def test_fpo_refuses_a_checkpoint_that_samples_with_the_shortcut_head(tmp_path) -> None:
    """FPO's ratio and gradient come from the d = 0 velocity: acting with the step-size head (sampler=shortcut) would
    act with what it never trains. The same weights on Euler are accepted."""
    from genpolicy.config import PolicyConfig
    from genpolicy.errors import ConfigError
    from genpolicy.finetune.fpo import FPO
    from genpolicy.policies import make_policy
    from genpolicy.policies.base import ShapeMeta

    shape = ShapeMeta(state_dim=2, action_dim=2)
    cfg = _ft_cfg("fpo", Path("unused"), tmp_path)
    short = make_policy(PolicyConfig(type="flow", shortcut=True, sampler="shortcut", steps=1, n_obs_steps=1, horizon=8,
                                     n_action_steps=4, width=32, depth=1, time_dim=16), shape)
    with pytest.raises(ConfigError, match="shortcut head it never trains"):
        FPO(short, cfg, torch.device("cpu"))
    euler = make_policy(PolicyConfig(type="flow", shortcut=True, sampler="euler", steps=4, n_obs_steps=1, horizon=8,
                                     n_action_steps=4, width=32, depth=1, time_dim=16), shape)
    assert FPO(euler, cfg, torch.device("cpu")).policy.cfg.sampler == "euler"
