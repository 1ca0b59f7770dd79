"""The evaluation protocol (genpolicy/protocol.py): seed splits, budgets, config diffs, statistics, rows, report and
`genpolicy eval eval.split=...`."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy import protocol as P
from genpolicy.errors import ConfigError, DataError
from tests.conftest import fitted_tiny_policy

TOY = "toy/bimodal-right"


def test_seed_ranges_are_disjoint_and_split_sizes_are_refused_outside_the_protocol() -> None:
    ranges = list(P.SEEDS.as_dict().values())
    assert all(max(a.start, b.start) >= min(a.stop, b.stop) for i, a in enumerate(ranges) for b in ranges[i + 1:])
    # the seeds already in use elsewhere fall in their own ranges
    from genpolicy.config import EvalConfig

    assert 777 in P.SEEDS.demos and 1000 * 99 in P.SEEDS.demos and EvalConfig().seed in P.SEEDS.legacy_eval
    assert 10_000_000 + 1_000_000 * 9 in P.SEEDS.finetune_rollouts and 20_000_000 + 1_000_000 * 9 in P.SEEDS.finetune_rollouts
    with pytest.raises(ConfigError, match="'selection' .* and 'test' .* overlap"):
        P.SeedRanges(test=range(1_999_990, 3_000_000))
    with pytest.raises(ConfigError, match="overlap"):
        P.SeedRanges(demos=range(0, 100_001))  # one seed into the legacy evaluation range
    assert P.selection_seeds(20) == range(1_000_000, 1_000_020) and P.test_seeds(100) == range(2_000_000, 2_000_100)
    for bad in (lambda: P.selection_seeds(21), lambda: P.selection_seeds(0), lambda: P.test_seeds(99),
                lambda: P.split_seeds("train")):
        with pytest.raises(ConfigError):
            bad()
    assert P.split_seeds("test") == P.test_seeds() and P.split_seeds("selection", 5) == P.selection_seeds(5)


def test_budget_points_and_weak_start_boundaries() -> None:
    assert P.budget_points(1_000_000) == [250_000, 500_000, 1_000_000]
    assert P.budget_points(60_000, (0.5, 1.0)) == [30_000, 60_000]
    for budget, fr in ((0, (0.25, 0.5, 1.0)), (100, (0.5, 0.25, 1.0)), (100, (0.25, 0.5)), (2, (0.25, 0.5, 1.0))):
        with pytest.raises(ConfigError):
            P.budget_points(budget, fr)
    q = P.weak_start_qualifies
    assert q(0.1, 0.6) and q(0.6, 0.1) and q(0.35, 0.35)  # both bounds are inclusive
    assert not q(0.09, 0.3) and not q(0.3, 0.61) and not q(0.1, 0.65) and not q(0.7, 0.3) and not q(0.0, 1.0)
    assert q(0.05, 0.05, lo=0.0, hi=0.1) and not q(0.3, 0.3, lo=0.0, hi=0.2)
    with pytest.raises(ConfigError):
        q(0.3, 0.3, lo=0.6, hi=0.1)


def test_config_diff_finds_exactly_the_keys_a_preset_and_overrides_change() -> None:
    from omegaconf import OmegaConf

    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig

    default = FinetuneConfig()
    assert P.config_diff(FinetuneConfig(), default) == {}
    cfg = compose("finetune", ["preset=metaworld", "algo=fpo", "ppo.clip_eps=0.05"], FinetuneConfig)
    diff = P.config_diff(cfg, default)

    def flat(d: dict, pre: str = "") -> dict:
        return {k2: v2 for k, v in d.items() for k2, v2 in (flat(v, f"{pre}{k}.") if isinstance(v, dict) else {pre + k: v}).items()}

    def get(obj, dotted: str):
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    preset = flat(OmegaConf.to_container(OmegaConf.load(P.PRESET_DIR / "metaworld.yaml")))
    expected = {k: v for k, v in preset.items() if get(default, k) != v}
    expected.update({"algo": "fpo", "ppo.clip_eps": 0.05})  # the command line wins over the preset's 0.01
    assert diff == expected
    assert "eval.n_episodes" not in diff  # the preset sets 20, FinetuneConfig's own default
    with pytest.raises(ConfigError):
        P.config_diff(cfg, default.ppo)


def test_iqm_and_stratified_bootstrap_against_hand_computations() -> None:
    s = np.array([[0.0, 0.5], [0.2, 0.6], [0.3, 1.0], [0.4, 0.9]])  # 8 runs: 0, .2, .3, .4, .5, .6, .9, 1
    assert P.iqm(s) == pytest.approx((0.3 + 0.4 + 0.5 + 0.6) / 4)  # the middle 50%
    agg = P.aggregate({"a": s}, reps=500)["a"]
    assert agg.iqm == pytest.approx(0.45) and agg.mean == pytest.approx(3.9 / 8) and (agg.n_seeds, agg.n_tasks) == (4, 2)
    assert agg.iqm_ci[0] <= 0.45 <= agg.iqm_ci[1]
    prof = P.performance_profile({"a": s}, taus=[0.0, 0.45, 0.95], reps=200)["a"]
    assert prof.fraction == pytest.approx([7 / 8, 4 / 8, 1 / 8])  # P(score > tau)
    # one task with runs 0, 0, 1, 1: a resample holds K ~ Binomial(4, 1/2) ones and its IQM (mean of the middle
    # two) is 0 for K <= 1, 0.5 for K = 2, 1 for K >= 3: probabilities 5/16, 6/16, 5/16
    boot = P.bootstrap(np.array([[0.0], [0.0], [1.0], [1.0]]), P.iqm, reps=20_000, seed=1)
    assert [np.mean(boot == v) for v in (0.0, 0.5, 1.0)] == pytest.approx([5 / 16, 6 / 16, 5 / 16], abs=0.015)
    assert P.aggregate({"a": np.array([[0.0], [0.0], [1.0], [1.0]])}, reps=2000)["a"].iqm_ci == (0.0, 1.0)
    # stratified: runs are redrawn within each task, so a task of zeros and a task of ones always give 4 + 4
    tasks = np.array([[0.0, 1.0]] * 4)
    assert P.aggregate({"a": tasks}, reps=500)["a"].iqm_ci == (0.5, 0.5)
    with pytest.raises(DataError, match="n_seeds >= 3"):
        P.aggregate({"two seeds": s[:2]})


def _row(**kw) -> P.LearningRow:
    base = dict(algo="fpo", task=TOY, n_demos=10, seed=0, preset="toy", config_diff={"algo": "fpo"},
                env_steps_budget=4000, test_episodes=100, test_success=0.8,
                test_curve=[[1000, 0.5], [2000, 0.7], [4000, 0.8]], test_return=0.8, start_test_return=0.4,
                start_test_success_zero_noise=0.3, start_test_success_random_noise=0.4, wallclock_s=12.0)
    base.update(kw)
    return P.LearningRow(**base)


def test_rows_are_validated_and_append_row_is_atomic_and_skips_finished_rows(tmp_path: Path, monkeypatch) -> None:
    js = tmp_path / "learning.json"
    row = _row(extra={"note": "x"})
    assert P.LearningRow.from_dict(row.to_dict()) == row and row.to_dict()["note"] == "x"
    assert P.append_row(js, row, command="bench") and not P.row_done(js, _row(seed=1).key) and P.row_done(js, row.key)
    assert not P.append_row(js, _row(test_success=0.9, test_curve=[[1000, 0.5], [2000, 0.7], [4000, 0.9]]))  # same key
    assert P.append_row(js, _row(variant="lr1e-4"))  # the variant is part of the key
    data = json.loads(js.read_text())
    assert len(data["rows"]) == 2 and data["rows"][0]["test_success"] == 0.8 and data["meta"]["commands"][0] == "bench"
    assert not any(p.suffix == ".tmp" for p in tmp_path.iterdir())
    before = js.read_text()
    real = pathlib.Path.write_text

    def crash_halfway(self, text, *a, **k):  # the process dies halfway through writing
        real(self, text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        P.append_row(js, _row(seed=2))
    monkeypatch.undo()
    assert js.read_text() == before and len(P.load_rows(js)) == 2  # the previous file is whole
    for bad in (dict(test_episodes=50), dict(test_curve=[[1000, 0.5], [4000, 0.8]]), dict(test_success=0.9),
                dict(algo="ppo"), dict(preset="nosuch"), dict(start_test_success_zero_noise=1.5)):
        with pytest.raises(DataError):
            _row(**bad)
    assert _row(algo="bc_5x_demos", test_curve=[]).test_curve == []  # baselines have no curve


def test_write_report_tables_every_seed_baselines_and_iqm_on_test_episodes(tmp_path: Path) -> None:
    rows = [_row(algo=a, task=t, seed=s, test_success=v, test_curve=[[1000, 0.1], [2000, 0.2], [4000, v]])
            for a in ("fpo", "dsrl") for t in (TOY, "toy/bimodal") for s, v in zip(range(3), (0.6, 0.7, 0.9))]
    rows += [_row(algo=b, task=t, seed=s, test_success=0.3, test_curve=[]) for b in P.BASELINES for t in (TOY, "toy/bimodal")
             for s in range(3)]
    # where the run's iterations put its test points: 1% past the first point (not marked), 30% past the second
    pts = [{"env_steps": 1010}, {"env_steps": 2600}, {"env_steps": 4000}]
    rows += [_row(algo="reinflow", task=TOY, seed=0, test_success=0.95, test_curve=[[1000, 0.9], [2000, 0.9], [4000, 0.95]],
                  extra={"test_points": pts})]
    md = tmp_path / "learning.md"
    written = P.write_report(rows, md, command="benchmarks/learning.py", reps=200)
    assert written == [md, md.with_suffix(".json"), md.with_suffix(".png")] and all(p.exists() for p in written)
    text = md.read_text()
    assert "Every success rate below is test success: 100 held-out test episodes" in text
    assert text.count("test success on 100 held-out test episodes") == 2  # each task's table says so too
    assert "| fpo | 10 | 2 | toy | - | 0.30 | 0.40 | yes | 0.10 | 0.20 | 0.90 |" in text  # every seed, every point
    assert "| bc_2x_demos | 10 | 0 | toy | - | 0.30 | 0.40 | yes | - | - | 0.30 |" in text
    # targets: IQM 0.73 over the better start baseline 0.30 (+0.43, CI above it), first reached at the full budget;
    # an algorithm with one seed so far is pending, not judged
    assert "Targets (better start baseline 0.30; +0.30 = 0.60)" in text
    assert "| fpo | 3 | 0.73 [0.60, 0.90] | +0.43 | yes | 4000 |" in text
    assert "| reinflow | 1 | pending (fewer than 3 seeds) |" in text
    assert "| yes | 0.90 | 0.90 (at 3k) | 0.95 |" in text  # a test point run past its budget point says where
    assert "Not yet on all of these tasks: reinflow (d10)." in text  # the across-task IQM is not dropped for it
    assert "| 12 | D1 |" in text and "- D1: `algo=fpo`" in text  # each row's config diff, spelled out once
    assert "| fpo | 10 | 0,1,2 | 0.73 [" in text and "## Across tasks (toy/bimodal, toy/bimodal-right)" in text
    meta = json.loads(md.with_suffix(".json").read_text())["meta"]
    assert meta["cpu_count"] >= 1 and meta["versions"]["numpy"] and meta["commands"] == ["benchmarks/learning.py"]
    assert meta["seed_ranges"]["test"] == [2_000_000, 3_000_000]
    with pytest.raises(DataError, match="different budgets"):
        P.write_report(rows + [_row(seed=7, env_steps_budget=8000, test_curve=[[2000, 0.1], [4000, 0.2], [8000, 0.8]])], md)
    with pytest.raises(DataError, match="same test episodes"):
        P.write_report(rows + [_row(seed=7, test_episodes=150)], md)


def test_targets_use_the_better_start_baseline_the_ci_and_the_fixed_budget_points() -> None:
    pts = [1000, 2000, 4000]
    rows = [_row(algo="bc_zero_noise", seed=0, test_success=0.1, test_curve=[]),
            _row(algo="bc_random_noise", seed=0, test_success=0.3, test_curve=[])]  # the better one: 0.30
    # fpo: IQM 0.73 at the full budget, already 0.67 >= 0.60 at the half budget
    rows += [_row(algo="fpo", seed=s, test_success=v, test_curve=[[1000, 0.2], [2000, h], [4000, v]])
             for s, (h, v) in enumerate([(0.6, 0.6), (0.7, 0.7), (0.7, 0.9)])]
    # dsrl: IQM 0.63 >= 0.60, but one seed stayed at 0: the CI's lower bound is not above 0.30, so not met
    rows += [_row(algo="dsrl", seed=s, test_success=v, test_curve=[[1000, 0.0], [2000, 0.0], [4000, v]])
             for s, v in enumerate([0.0, 0.95, 0.95])]
    text = "\n".join(P.target_lines(rows, pts, reps=400))
    assert "better start baseline 0.30; +0.30 = 0.60" in text
    assert "| fpo | 3 | 0.73 [0.60, 0.90] | +0.43 | yes | 2000 |" in text
    assert "| dsrl | 3 | 0.63 [0.00, 0.95] | +0.33 | no | 4000 |" in text
    assert P.target_lines([r for r in rows if r.algo not in P.BASELINES], pts) == []  # no baselines: nothing to judge


def test_evaluate_split_uses_the_test_seeds_and_the_start_baselines_change_only_the_noise() -> None:
    policy = fitted_tiny_policy(state_dim=2, action_dim=2, type="flow", sampler="euler", steps=2)
    test = P.evaluate_split(policy, TOY, "test", n_envs=10)
    sel = P.evaluate_split(policy, TOY, "selection", n_envs=10)
    test_seeds = [e["seed"] for e in test["episodes"]]
    assert test_seeds == list(P.test_seeds()) and test["split"] == "test" and test["n_episodes"] == 100
    assert [e["seed"] for e in sel["episodes"]] == list(P.selection_seeds()) and set(test_seeds).isdisjoint(P.selection_seeds())
    with pytest.raises(ConfigError):
        P.evaluate_split(policy, TOY, "test", n_episodes=20)
    # the start policies: zero initial noise ignores the generator, random noise does not
    obs = {"state": torch.zeros(3, 2, 2)}
    chunk = lambda p, s: p.predict_chunk(obs, generator=torch.Generator().manual_seed(s))  # noqa: E731
    zero, rand = P.start_policy(policy, "zero"), P.start_policy(policy, "random")
    assert zero.cfg.init_noise_scale == 0.0 and torch.equal(chunk(zero, 0), chunk(zero, 1))
    assert not torch.equal(chunk(rand, 0), chunk(rand, 1))
    base = P.start_baselines(policy, TOY, n_envs=10)
    assert base.test_episodes == 100 and 0.0 <= base.success_zero_noise <= 1.0
    assert base.qualifies == P.weak_start_qualifies(base.success_zero_noise, base.success_random_noise)


def test_genpolicy_eval_split_option(tmp_path: Path) -> None:
    from genpolicy.cli import compose, main
    from genpolicy.config import FinetuneConfig, TrainConfig
    from genpolicy.training.checkpoint import save_checkpoint

    ck = save_checkpoint(tmp_path / "ck", fitted_tiny_policy(state_dim=2, action_dim=2), {"task": {"name": TOY}}, step=0)
    common = [f"ckpt={ck}", "eval.n_videos=0", "run.progress=false"]
    assert main(["eval", *common, "eval.split=test", f"run.dir={tmp_path / 'ev'}"]) == 0
    ev = json.loads((tmp_path / "ev" / "eval" / "eval.json").read_text())
    assert ev["split"] == "test" and [e["seed"] for e in ev["episodes"]] == list(P.test_seeds(100))
    assert main(["eval", *common, "eval.split=selection", "eval.n_episodes=4", f"run.dir={tmp_path / 'sel'}"]) == 0
    ev = json.loads((tmp_path / "sel" / "eval" / "eval.json").read_text())
    assert [e["seed"] for e in ev["episodes"]] == list(P.selection_seeds(4))
    assert main(["eval", *common, "eval.n_episodes=2", f"run.dir={tmp_path / 'old'}"]) == 0  # default: as before
    ev = json.loads((tmp_path / "old" / "eval" / "eval.json").read_text())
    assert "split" not in ev and [e["seed"] for e in ev["episodes"]] == [100_000, 100_001]
    for bad in (["eval.split=test", "eval.n_episodes=50"], ["eval.split=test", "eval.seed=5"], ["eval.split=train"]):
        assert main(["eval", *common, *bad, f"run.dir={tmp_path / 'bad'}"]) == 2
    # during a run only the selection split: test episodes choose nothing
    for name, schema in (("train", TrainConfig), ("finetune", FinetuneConfig)):
        with pytest.raises(ConfigError, match="never seen during a run"):
            compose(name, ["eval.split=test", "eval.n_episodes=100"], schema)
        with pytest.raises(ConfigError, match="never seen during a run"):  # nor by a custom seed inside the range
            compose(name, ["eval.split=custom", "eval.seed=1999990", "eval.n_episodes=20"], schema)
        assert compose(name, ["eval.split=selection", "eval.n_episodes=20"], schema).eval.seed == 1_000_000
