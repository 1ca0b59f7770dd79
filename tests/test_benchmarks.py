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
