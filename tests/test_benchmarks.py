"""Benchmark-script plumbing that decides what happens to results on disk."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from finetune_onpolicy import resume_or_restart  # noqa: E402


def test_interrupted_row_resumes_only_with_the_same_overrides(tmp_path: Path) -> None:
    run = tmp_path / "row"
    assert resume_or_restart(run, ["algo=fpo", "seed=0"]) == []  # fresh: stamped, nothing to resume
    (run / "checkpoints" / "it_000010").mkdir(parents=True)
    assert resume_or_restart(run, ["algo=fpo", "seed=0"]) == ["run.resume=true"]
    assert (run / "checkpoints" / "it_000010").exists()  # resuming keeps the checkpoint
    assert resume_or_restart(run, ["algo=fpo", "seed=1"]) == []  # other settings: start over, old run removed
    assert not (run / "checkpoints").exists()


def test_a_run_without_checkpoints_starts_over(tmp_path: Path) -> None:
    run = tmp_path / "row"
    resume_or_restart(run, ["a=1"])
    (run / "metrics.jsonl").write_text("{}\n")  # killed before its first checkpoint
    assert resume_or_restart(run, ["a=1"]) == []
    assert not (run / "metrics.jsonl").exists()


def test_a_larger_iteration_budget_extends_the_same_run(tmp_path: Path) -> None:
    from finetune_onpolicy import stamped_iterations

    run = tmp_path / "row"
    resume_or_restart(run, ["algo=fpo", "ppo.iterations=50", "seed=0"])
    (run / "checkpoints" / "it_000050").mkdir(parents=True)
    assert stamped_iterations(run) == 50
    assert resume_or_restart(run, ["algo=fpo", "ppo.iterations=100", "seed=0"]) == ["run.resume=true"]
    assert stamped_iterations(run) == 100 and (run / "checkpoints" / "it_000050").exists()
    assert resume_or_restart(run, ["algo=fpo", "ppo.iterations=100", "seed=1"]) == []  # anything else: start over
    assert stamped_iterations(run) == 100 and not (run / "checkpoints").exists()


def test_an_extended_row_replaces_the_shorter_one(tmp_path: Path) -> None:
    from finetune_onpolicy import append_row

    js = tmp_path / "r.json"
    append_row(js, {"algo": "fpo", "seed": 0, "env_steps": 10}, {})
    append_row(js, {"algo": "fpo", "seed": 1, "env_steps": 10}, {})
    append_row(js, {"algo": "fpo", "seed": 0, "env_steps": 20}, {}, replaces=lambda r: r["seed"] == 0)
    import json

    rows = json.loads(js.read_text())["rows"]
    assert sorted((r["seed"], r["env_steps"]) for r in rows) == [(0, 20), (1, 10)]


def test_off_policy_rows_are_compared_with_every_on_policy_run_on_the_same_demos() -> None:
    from finetune_offpolicy import comparison

    def row(algo: str, recipe: str, seed: int, to90: int | None, tag: str = "") -> dict:
        return {"task": "metaworld/t", "algo": algo, "seed": seed, "bc_recipe": recipe, "tag": tag,
                "env_steps": 500_000, "env_steps_to_90": to90, "env_steps_budget": 50_000}

    on = [row("fpo", "d3_n1.0_t0.3_s300", s, 300_000) for s in range(3)]
    on += [row("dppo", "d3_n1.0_t0.3_s60", s, 120_000, tag="std20") for s in range(3)]  # diffusion ckpt, same demos
    on += [row("reinflow", "d10_n1.0_t0.3_s120", s, 1_000) for s in range(3)]  # other demos: not a candidate
    on += [row("reinflow", "d3_n1.0_t0.3_s300", s, t) for s, t in [(0, 50_000), (1, None), (2, None)]]  # 1 of 3 seeds
    off = [row("dsrl", "3 demos, noise 1.0, detour 0.3, 300 BC steps", s, t) for s, t in [(0, 20_000), (1, 40_000), (2, None)]]
    lines = [ln for ln in comparison(off, on, {}) if ln.startswith("| metaworld/t")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    # median of the two seeds that got there; the best candidate is DPPO on its diffusion checkpoint (3/3), not
    # ReinFlow's one seed of three at 50k
    assert cells[3:] == ["30000", "2/3", "dppo [std20] (diffusion d3_n1.0_t0.3_s60) (3/3)", "120000", "4.0x"]


def test_off_policy_rows_from_a_diffusion_checkpoint_get_their_own_comparison() -> None:
    from finetune_offpolicy import comparison, on_policy_groups

    def row(algo: str, recipe: str, seed: int, to90: int | None, **extra) -> dict:
        return {"task": "metaworld/t", "algo": algo, "seed": seed, "bc_recipe": recipe, "tag": "",
                "env_steps": 500_000, "env_steps_to_90": to90, "env_steps_budget": 50_000, **extra}

    on = [row("fpo", "d10_n1.0_t0.3_s120", s, 200_000) for s in range(3)]
    on += [row("dppo", "d10_n1.0_t0.3_s60", s, 300_000) for s in range(3)]
    flow = "10 demos, noise 1.0, detour 0.3, 120 BC steps"
    diff = "10 demos, noise 1.0, detour 0.3, 60 BC steps"
    first = [{"env_steps": 0, "success_rate": 0.5}, {"env_steps": 4_000, "success_rate": 0.95}]
    off = [row("dsrl", flow, 0, 4_000, curve=first), row("dsrl", diff, 0, 40_000, family="diffusion", curve=first),
           row("dsrl", diff, 1, 60_000, family="diffusion")]
    lines = [[c.strip() for c in ln.strip("|").split("|")] for ln in comparison(off, on, {}) if ln.startswith("| metaworld/t")]
    # the flow row and the two diffusion rows are not pooled: each checkpoint has its own median; the flow seed that
    # was at 90% at its first evaluation (before any update) is counted apart and is not a result
    assert [(c[1], c[3], c[4]) for c in lines] == [("d10_n1.0_t0.3_s120", "-", "0/1 (+1 at first eval)"),
                                                    ("diffusion d10_n1.0_t0.3_s60", "50000", "2/2")]
    assert lines[1][5:] == ["fpo (flow d10_n1.0_t0.3_s120) (3/3)", "200000", "4.0x"]
    # from the diffusion checkpoint's side, DPPO on that same checkpoint is named bare and FPO's flow one in brackets
    assert sorted(on_policy_groups(on, "metaworld/t", "diffusion d10_n1.0_t0.3_s60")) == [
        "dppo", "fpo (flow d10_n1.0_t0.3_s120)"]
    assert sorted(on_policy_groups(on, "metaworld/t", "d10_n1.0_t0.3_s120")) == [
        "dppo (diffusion d10_n1.0_t0.3_s60)", "fpo"]


def test_learning_finetune_stage_writes_protocol_rows(toy_bc_ckpts, tmp_path: Path, monkeypatch) -> None:
    """benchmarks/learning.py --stage finetune on the toy suite: the start is picked from the BC cells, the row runs
    the preset with only budget and seed, and its test curve sits at the budget's fixed points on 100 test episodes;
    the baselines share the table; a rerun skips the finished row."""
    import json

    import learning

    out = tmp_path / "results"
    out.mkdir()
    cell = lambda d, fam, z, r: {"task": "toy/bimodal-right", "n_demos": d, "seed": 0, "family": fam,  # noqa: E731
                                 "test_success_zero_noise": z, "test_success_random_noise": r, "test_return_zero_noise": z,
                                 "test_return_random_noise": r, "test_episodes": 100, "weak_start": 0.1 <= min(z, r) and max(z, r) <= 0.6,
                                 "checkpoint": str(toy_bc_ckpts["flow" if fam != "diffusion" else "diffusion"])}
    cells = [cell(5, "flow", 0.9, 0.9), cell(10, "flow", 0.5, 0.45), cell(10, "diffusion", 0.5, 0.5),
             cell(20, "flow", 0.7, 0.7)]  # 5 demos too strong: the start is the 10-demo cell; 20 = its 2x
    (out / "learning_bc.json").write_text(json.dumps({"rows": cells}))
    argv = ["learning.py", "--stage", "finetune", "--tasks", "toy/bimodal-right", "--algos", "dsrl", "--seeds", "0",
            "--out", str(out), "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    learning.main()
    data = json.loads((out / "learning.json").read_text())
    rows = {r["algo"]: r for r in data["rows"]}
    assert set(rows) == {"dsrl", "bc_zero_noise", "bc_random_noise", "bc_2x_demos"}  # no 50-demo cell: no 5x row
    r = rows["dsrl"]
    assert r["n_demos"] == 10 and r["test_episodes"] == 100 and r["env_steps_budget"] == 1200
    assert [p for p, _ in r["test_curve"]] == [300, 600, 1200] and r["test_success"] == r["test_curve"][-1][1]
    assert r["config_diff"]["algo"] == "dsrl" and r["config_diff"]["offpolicy.env_steps"] == 1200
    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig
    from genpolicy.protocol import config_diff

    preset = config_diff(compose("finetune", ["algo=dsrl", "preset=toy"], FinetuneConfig), FinetuneConfig())
    allowed = set(preset) | {"ckpt", "task.name", "offpolicy.env_steps", "test.episodes", "run.seed", "run.dir",
                             "run.progress"}
    assert set(r["config_diff"]) <= allowed, set(r["config_diff"]) - allowed  # nothing beyond preset, budget and seed
    assert rows["bc_2x_demos"]["test_success"] == 0.7 and (out / "learning.md").exists()
    learning.main()  # finished: nothing runs again
    assert len(json.loads((out / "learning.json").read_text())["rows"]) == 4
