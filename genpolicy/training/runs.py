"""Run directories, metrics.jsonl + TensorBoard logging, device choice."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import torch

from genpolicy.fsutil import sweep_temporaries
from genpolicy.training.config import RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def make_run_dir(run: RunConfig, default_name: str) -> Path:
    """runs/<date>-<name>/ unless run.dir is given; resuming needs the explicit directory.

    Call it once the command's inputs are checked, so that a refused command leaves no empty directory behind. It
    also removes the temporaries that killed saves left in the run directory and its checkpoints/ (nothing else
    can be saving there while a run starts)."""
    if run.dir:
        path = Path(run.dir)
    else:
        path = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(run.name or default_name)}"
    path.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path, path / "checkpoints")
    return path


class MetricsLogger:
    """Appends one JSON object per logging step to metrics.jsonl and mirrors scalars to TensorBoard.

    `resume_step`: the step the run (re)starts from. Rows after it were written by a run that was killed before
    its next checkpoint; the resumed run writes them again, so they are dropped first (and purged from TensorBoard),
    as is a line torn by the kill."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: Optional[int] = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
            except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
                self.tb = None

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be cut short
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text("".join(x + "\n" for x in kept))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0):
    """tqdm bar with rate and ETA; refreshes rarely when stderr is not a terminal (logs stay readable)."""
    import sys

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                mininterval=0.2 if tty else 15.0)
