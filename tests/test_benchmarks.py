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
