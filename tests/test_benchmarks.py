"""Benchmark-script plumbing that decides what happens to results on disk."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from genpolicy.protocol import resume_or_restart  # noqa: E402


def test_interrupted_row_resumes_only_with_the_same_overrides(tmp_path: Path) -> None:
    run = tmp_path / "row"
    assert resume_or_restart(run, ["algo=fpo", "seed=0"]) is False  # fresh: stamped, nothing to resume
    (run / "checkpoints" / "it_000010").mkdir(parents=True)
    assert resume_or_restart(run, ["algo=fpo", "seed=0"]) is True
    assert (run / "checkpoints" / "it_000010").exists()  # resuming keeps the checkpoint
    assert resume_or_restart(run, ["algo=fpo", "seed=1"]) is False  # other settings: start over, old run removed
    assert not (run / "checkpoints").exists()


def test_a_row_is_never_lengthened(tmp_path: Path) -> None:
    """A larger budget is another row: the run starts over instead of continuing the shorter one (the protocol fixes
    budgets before running; the retired benchmarks' --extend continued a row after it had missed)."""
    run = tmp_path / "row"
    resume_or_restart(run, ["algo=fpo", "ppo.iterations=50"])
    (run / "checkpoints" / "it_000050").mkdir(parents=True)
    assert resume_or_restart(run, ["algo=fpo", "ppo.iterations=100"]) is False
    assert not (run / "checkpoints").exists()


def test_a_run_without_checkpoints_starts_over(tmp_path: Path) -> None:
    run = tmp_path / "row"
    resume_or_restart(run, ["a=1"])
    (run / "metrics.jsonl").write_text("{}\n")  # killed before its first checkpoint
    assert resume_or_restart(run, ["a=1"]) is False
    assert not (run / "metrics.jsonl").exists()


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


def test_an_algorithm_on_another_sampler_gets_its_own_measured_start(toy_bc_ckpts, tmp_path: Path) -> None:
    """Rule 7: ReinFlow fine-tunes the flow checkpoint under its own sampler (Euler-4 here, the checkpoint samples with
    Euler-5), so its start is measured on the test episodes under that sampler and cached; an algorithm on the
    checkpoint's own sampler (FPO) keeps the shared start."""
    import json

    import learning

    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig

    src = {"checkpoint": str(toy_bc_ckpts["flow"]), "test_success_zero_noise": 0.5, "test_success_random_noise": 0.5,
           "test_return_random_noise": 0.5}  # deliberately not the checkpoint's real numbers
    probe = lambda algo: compose("finetune", [f"algo={algo}", "preset=toy", f"ckpt={src['checkpoint']}"], FinetuneConfig)  # noqa: E731
    fpo = learning.algo_start("toy/bimodal-right", "fpo", probe("fpo"), src, tmp_path)
    assert fpo["sampler"] == "euler-5" and fpo["test_success_random_noise"] == 0.5 and fpo["within_0.1"]
    assert not (tmp_path / "algo_starts.json").exists()
    rf = learning.algo_start("toy/bimodal-right", "reinflow", probe("reinflow"), src, tmp_path)
    assert rf["sampler"] == "euler-4"
    cached = json.loads((tmp_path / "algo_starts.json").read_text())
    assert list(cached) == [f"{src['checkpoint']}|euler-4"]
    assert cached[f"{src['checkpoint']}|euler-4"]["test_success_random_noise"] == rf["test_success_random_noise"]
    # measured, not copied: the toy policy goes right about half the time and the right-hand way is rewarded
    from genpolicy.protocol import start_baselines
    from genpolicy.training.checkpoint import load_policy

    b = start_baselines(load_policy(src["checkpoint"]), "toy/bimodal-right", 100, sampler={"sampler": "euler", "steps": 4})
    assert (rf["test_success_zero_noise"], rf["test_success_random_noise"]) == (b.success_zero_noise, b.success_random_noise)
    assert rf["within_0.1"] == (abs(b.success_zero_noise - 0.5) <= 0.1 and abs(b.success_random_noise - 0.5) <= 0.1)
