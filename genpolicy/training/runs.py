"""Run directories, metrics.jsonl + TensorBoard logging, device choice."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from genpolicy.config import RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def make_run_dir(run: RunConfig, default_name: str) -> Path:
    """runs/<date>-<name>/ unless run.dir is given; resuming needs the explicit directory."""
    if run.dir:
        path = Path(run.dir)
    else:
        path = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(run.name or default_name)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class MetricsLogger:
    """Appends one JSON object per logging step to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
                self.tb = None

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
