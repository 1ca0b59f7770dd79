"""Off-policy fine-tuning (DSRL, EXPO): TD targets against a plain loop, frozen base weights, the on-the-fly argmax,
and the toy task from the two-way BC policy to >= 90%."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.cli import compose
from genpolicy.config import FinetuneConfig
from genpolicy.finetune.offpolicy import DictReplay, demo_transitions, make_offpolicy_algo, mixed_batch
from genpolicy.finetune.ppo import finetune
from genpolicy.training.checkpoint import load_policy

TOY = "toy/bimodal-right"


def _cfg(algo: str, ckpt: Path, run_dir: Path, *extra: str) -> FinetuneConfig:
    return compose("finetune", [f"algo={algo}", f"ckpt={ckpt}", f"task={TOY}", "preset=toy", f"run.dir={run_dir}",
                                "run.progress=false", *extra], FinetuneConfig)


def _batch(b: int = 16, h: int = 8, da: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"obs": torch.randn(b, 1, 2, generator=g), "next_obs": torch.randn(b, 1, 2, generator=g),
            "action": torch.rand(b, h, da, generator=g) * 2 - 1, "reward": (torch.rand(b, generator=g) < 0.3).float(),
            "terminated": (torch.rand(b, generator=g) < 0.3).float(), "w": torch.randn(b, h * da, generator=g)}


def _perturb(module: torch.nn.Module, seed: int = 11) -> None:
    """Move a critic's weights away from their copy, so a test can tell the two apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("variant", ["sac", "na"])
def test_dsrl_td_target_uses_the_target_critic(toy_bc_ckpts, tmp_path, variant) -> None:
    cfg = _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path, f"dsrl.variant={variant}", "dsrl.backup_entropy=true")
    algo = make_offpolicy_algo("dsrl", load_policy(toy_bc_ckpts["flow"]), cfg, torch.device("cpu"))
    _perturb(algo.q_target)  # the target now differs from the online critic: using the online one must fail below
    batch = _batch()
    cond_next = algo.policy.encode({"state": batch["next_obs"]})
    torch.manual_seed(7)
    y = algo.critic_target(batch, cond_next)
    torch.manual_seed(7)  # the same w' ~ pi_W(s')
    nxt = algo.policy.steer(cond_next)
    alpha, gamma = algo.temp.alpha.item(), cfg.offpolicy.gamma
    for i in range(len(y)):
        w = nxt["w"][i]
        arg = w if variant == "sac" else algo.policy.sample(cond_next[i:i + 1], noise=w.view(1, 8, 2)).clamp(-1, 1).reshape(-1)
        heads = [algo.q_target.qs[j](torch.cat([cond_next[i], arg])).item() for j in range(len(algo.q_target.qs))]
        ref = batch["reward"][i].item() + (0.0 if batch["terminated"][i] else gamma * (min(heads) - alpha * nxt["log_prob"][i].item()))
        assert y[i].item() == pytest.approx(ref, abs=1e-5)


def test_expo_one_selection_rule_and_td_target_on_target_heads(toy_bc_ckpts, tmp_path) -> None:
    """Acting, evaluation and the backup's next action are one rule (argmax of the min over all heads of the policy's
    critic, which is the target critic); the backup's value is the min over a random subset of n_min_q < n_q target
    heads; the online critic is used by neither."""
    cfg = _cfg("expo", toy_bc_ckpts["flow"], tmp_path, "expo.n_min_q=2")  # of 4 heads
    algo = make_offpolicy_algo("expo", load_policy(toy_bc_ckpts["flow"]), cfg, torch.device("cpu"))
    pol, steer = algo.policy, algo.policy.steer
    assert steer.q is algo.q_target and algo.q is not steer.q
    _perturb(algo.q_target)
    _perturb(steer.edit, seed=12)  # an untrained edit is tiny; make edits matter to the argmax
    batch = _batch()
    cond = pol.encode({"state": batch["next_obs"]})
    b, n, m, e = cond.shape[0], cfg.expo.n_base, cfg.expo.n_edit, cfg.expo.n_q

    def plain_scores(cands: torch.Tensor, i: int) -> list[float]:  # min over all heads of the target critic
        return [min(q(torch.cat([cond[i], c])).item() for q in algo.q_target.qs) for c in cands]

    for explore in (False, True):  # evaluation (edit means) and acting (sampled edits) share the scoring rule
        g = torch.Generator().manual_seed(5)
        out = pol.steered_sample(cond, generator=torch.Generator().manual_seed(5), explore=True) if explore else None
        base = pol.sample(cond.repeat_interleave(n, 0), generator=g).clamp(-1, 1).view(b, n, -1)
        edits = steer.edit_actions(cond.repeat_interleave(m, 0), base[:, :m].reshape(b * m, -1),
                                   deterministic=not explore, generator=g)["action"].view(b, m, -1)
        cands = torch.cat([base, edits], 1)
        chosen = out["actions"].reshape(b, -1) if explore else \
            pol.steered_sample(cond, generator=torch.Generator().manual_seed(5)).reshape(b, -1)
        for i in range(b):  # a candidate, with the best score (edits sit within beta of their base: near-ties)
            dist = (cands[i] - chosen[i]).abs().amax(-1)  # the sampler's compiled path may differ in the last bits
            j = int(dist.argmin())
            assert dist[j] < 1e-5
            scores = plain_scores(cands[i], i)
            assert scores[j] == pytest.approx(max(scores), abs=1e-5)
    # the TD target: same draws (algo.gen restored), next action by the rule above, then a random head subset
    g_state = algo.gen.get_state()
    y = algo.critic_target(batch, cond)
    algo.gen.set_state(g_state)
    a_next = pol.steered_sample(cond, generator=algo.gen, explore=True)["actions"].reshape(b, -1)
    heads = torch.randperm(e, generator=algo.gen)[:2].tolist()
    assert len(set(heads)) == 2 < e
    for i in range(b):
        nq = min(algo.q_target.qs[j](torch.cat([cond[i], a_next[i]])).item() for j in heads)
        ref = batch["reward"][i].item() + (0.0 if batch["terminated"][i] else cfg.offpolicy.gamma * nq)
        assert y[i].item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("algo_name", ["dsrl", "expo"])
def test_temperature_settles_within_a_band(toy_bc_ckpts, tmp_path, algo_name) -> None:
    """200 updates on toy transitions: alpha must move toward its target and stay in [1e-3, init]. With EXPO's old
    target (entropy in action units, unreachable at beta 0.05) log alpha rose by ~lr every update."""
    from genpolicy.datasets.collect import generate

    cfg = _cfg(algo_name, toy_bc_ckpts["flow"], tmp_path, "offpolicy.batch_size=32", "dsrl.variant=sac")
    algo = make_offpolicy_algo(algo_name, load_policy(toy_bc_ckpts["flow"]), cfg, torch.device("cpu"))
    pol = algo.policy
    d = demo_transitions(generate("toy/bimodal", 6, seed=1, progress=False), 1, 8, 4, pol.normalize_actions)
    if algo_name == "dsrl":
        d["w"] = torch.randn(len(d["reward"]), 16)
    replay = DictReplay({k: tuple(v.shape[1:]) for k, v in d.items()}, len(d["reward"]))
    replay.add(d)
    g = torch.Generator().manual_seed(0)
    init = algo.temp.alpha.item()
    alphas, ents = [], []
    for _ in range(200):
        st = algo.update(replay.sample(32, g))
        alphas.append(st["alpha"])
        ents.append(st["entropy_per_dim"])
    assert all(1e-3 <= a <= init + 1e-9 for a in alphas), (alphas[0], alphas[-1])
    assert alphas[-1] < 0.95 * init  # it moved: the target is reachable
    assert ents[-1] <= np.log(2) + 1e-6  # a tanh-Gaussian's entropy per dimension (delta / tanh units)


def test_replay_mixing_and_demo_transitions(toy_bc_ckpts) -> None:
    from genpolicy.datasets.collect import generate

    rb = generate("toy/bimodal", 3, seed=0, progress=False)
    p = load_policy(toy_bc_ckpts["flow"])
    d = demo_transitions(rb, n_obs_steps=1, horizon=8, n_action_steps=4, normalize=p.normalize_actions)
    lengths = rb.episode_lengths
    assert len(d["reward"]) == int(sum(-(-lengths // 4)))  # one transition per Ta-step chunk, the last one partial
    assert d["reward"].sum().item() == 3 and torch.equal(d["reward"], d["terminated"])  # the last chunk of each demo
    first = torch.as_tensor(rb.data["action"][:8])
    assert torch.allclose(d["action"][0], p.normalize_actions(first).clamp(-1, 1))
    specs = {k: tuple(v.shape[1:]) for k, v in d.items()}
    on, off = DictReplay(specs, 1000), DictReplay(specs, 1000)
    off.add(d)
    on.add({k: torch.zeros_like(v[:50]) for k, v in d.items()})
    b = mixed_batch(on, off, 64, 0.5, torch.Generator().manual_seed(0))
    assert b["reward"].shape == (64,) and (b["obs"][32:] != 0).any() and (b["obs"][:32] == 0).all()


@pytest.mark.parametrize("algo", ["dsrl", "expo"])
def test_toy_task_reaches_90_percent(toy_bc_ckpts, tmp_path, algo) -> None:
    """From the two-way BC policy (start ~0.4-0.5), within 2,500 env steps; a few seconds (DSRL) to ~20 s (EXPO)."""
    ckpt = toy_bc_ckpts["flow"]
    before = {k: v.clone() for k, v in load_policy(ckpt).net.state_dict().items()}
    res = finetune(_cfg(algo, ckpt, tmp_path / algo))
    assert 0.2 <= res["start_success"] <= 0.7
    assert res["final_success"] >= 0.9, res["curve"]
    tuned = load_policy(res["final_checkpoint"])  # evaluates as fine-tuned: steering head inside the checkpoint
    assert tuned.cfg.steer == algo
    if algo == "dsrl":  # DSRL never changes the base policy's weights
        after = tuned.net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_offpolicy_resume_continues(toy_bc_ckpts, tmp_path) -> None:
    cfg = _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path / "r", "offpolicy.env_steps=800", "run.ckpt_every=1")
    first = finetune(cfg)
    cfg2 = _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path / "r", "offpolicy.env_steps=1400", "run.ckpt_every=1",
                "run.resume=true")
    second = finetune(cfg2)
    assert second["env_steps"] > first["env_steps"] and second["curve"][: len(first["curve"])] == first["curve"]


def test_dsrl_checkpoint_refuses_another_sampler(toy_bc_ckpts, tmp_path) -> None:
    from genpolicy.errors import ConfigError

    cfg = _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path)
    algo = make_offpolicy_algo("dsrl", load_policy(toy_bc_ckpts["flow"]), cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match="steered by DSRL"):
        algo.policy.set_sampler(steps=3)


def test_expo_candidate_sampler_is_the_tuned_policys(toy_bc_ckpts, tmp_path) -> None:
    """expo.sampler/steps set the sampler of every candidate chunk and are saved with the policy (eval matches)."""
    from genpolicy.errors import ConfigError

    bc = load_policy(toy_bc_ckpts["flow"])
    cfg = _cfg("expo", toy_bc_ckpts["flow"], tmp_path, "expo.steps=2")
    algo = make_offpolicy_algo("expo", bc, cfg, torch.device("cpu"))
    assert algo.policy.cfg.steps == 2 != bc.cfg.steps and algo.policy.cfg.sampler == bc.cfg.sampler
    assert algo.policy.grid.n_steps == 2  # the grid every candidate is decoded on
    with pytest.raises(ConfigError, match="shortcut=true"):  # this checkpoint was trained without the shortcut head
        make_offpolicy_algo("expo", bc, _cfg("expo", toy_bc_ckpts["flow"], tmp_path, "expo.sampler=shortcut",
                                             "expo.steps=1"), torch.device("cpu"))


def test_dsrl_base_map_sampler_is_the_steered_policys(toy_bc_ckpts, tmp_path) -> None:
    """dsrl.sampler/steps set the noise -> chunk map (acting and NA's backups), are saved with the policy, and a
    stochastic or wrong-family sampler is refused by name."""
    from genpolicy.errors import ConfigError

    bc = load_policy(toy_bc_ckpts["flow"])
    algo = make_offpolicy_algo("dsrl", bc, _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path, "dsrl.variant=na",
                                                "dsrl.sampler=midpoint", "dsrl.steps=2"), torch.device("cpu"))
    assert (algo.policy.cfg.sampler, algo.policy.grid.n_steps) == ("midpoint", 2) != (bc.cfg.sampler, bc.cfg.steps)
    cond, w = algo.policy.encode({"state": torch.zeros(3, 1, 2)}), torch.randn(3, 16)
    direct = algo.policy.sample(cond, noise=w.view(3, 8, 2)).clamp(-1, 1).reshape(3, -1)
    torch.testing.assert_close(algo._decode(cond, w), direct, rtol=0, atol=1e-5)  # the critic sees the executed map
    with pytest.raises(ConfigError, match="dsrl.sampler"):
        _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path, "dsrl.sampler=ddpm")
    with pytest.raises(ConfigError, match="dsrl.sampler=ddim"):
        make_offpolicy_algo("dsrl", bc, _cfg("dsrl", toy_bc_ckpts["flow"], tmp_path, "dsrl.sampler=ddim"),
                            torch.device("cpu"))


def test_eval_noise_seed_redraws_the_noise_on_the_same_episodes(toy_bc_ckpts) -> None:
    """What scoring a start from zero and from random noise rests on (benchmarks/learning.py): `noise_seed` changes
    only the sampling noise, and from zero initial noise (what DSRL's untrained actor plays) it changes nothing."""
    from genpolicy.finetune.ppo import policy_for_finetuning
    from genpolicy.training.evaluate import evaluate

    bc = load_policy(toy_bc_ckpts["flow"])
    run = lambda p, ns: evaluate(p, TOY, n_episodes=12, n_envs=4, seed=500, progress=False,  # noqa: E731
                                 noise_seed=ns)["episodes"]
    same = run(bc, None)
    assert [e["success"] for e in run(bc, 500)] == [e["success"] for e in same]  # default: noise seeded by `seed`
    draws = [run(bc, 1000 + k) for k in range(3)]
    assert all([e["seed"] for e in d] == [e["seed"] for e in same] for d in draws)  # the same episodes
    # the two-way BC policy goes either way from random noise: other noise, other outcomes
    assert len({tuple(e["success"] for e in d) for d in [same, *draws]}) > 1
    zero = policy_for_finetuning(bc, "dsrl", "flow", torch.device("cpu"), init_noise_scale=0.0)
    outcomes = {tuple(e["success"] for e in run(zero, ns)) for ns in (None, 1000, 1001)}
    assert len(outcomes) == 1
