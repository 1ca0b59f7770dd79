"""Data-parallel training under `torchrun`: who am I, one process group per run, and the few collectives bc.py needs.

Without torchrun's environment (RANK/WORLD_SIZE/LOCAL_RANK) everything here is a no-op for a single process, so the
training loop reads the same either way.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as tdist

from genpolicy.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. A single process is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes run files: checkpoints, metrics, videos, evaluations."""
        return self.rank == 0


def env_info() -> DistInfo:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; a missing WORLD_SIZE means a single process."""
    if "WORLD_SIZE" not in os.environ:
        return DistInfo()
    try:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"distributed environment is incomplete or not integers (RANK, WORLD_SIZE, LOCAL_RANK): {e}") from None
    if not 0 <= info.rank < info.world_size:
        raise ConfigError(f"RANK={info.rank} must be in [0, WORLD_SIZE={info.world_size})")
    return info


def resolve_backend(backend: str, device: torch.device) -> str:
    """auto: nccl for CUDA devices, gloo for the CPU. nccl cannot carry CPU tensors, so it is refused there."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"train.dist_backend=nccl needs a CUDA device, but run.device resolves to '{device}'; use gloo")
    return backend


@contextmanager
def process_group(backend: str, device: torch.device, timeout_s: float) -> Iterator[DistInfo]:
    """Join the job's process group for the duration of the block (a no-op for a single process).

    The timeout bounds every collective: if one rank dies or stalls, the others fail after `timeout_s` instead of
    waiting forever (torchrun usually stops them sooner, when it sees the failed rank exit).
    """
    info = env_info()
    if not info.enabled:
        yield info
        return
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    tdist.init_process_group(resolve_backend(backend, device), timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield info
    finally:
        tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Every rank waits here until all have arrived (e.g. until rank 0 has finished writing a checkpoint)."""
    if info.enabled:
        tdist.barrier()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any: ranks agree on when to stop after a signal."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalars over ranks (same keys on each), so a logged loss is the global batch's, not rank 0's shard."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def broadcast_str(text: str, info: DistInfo, device: torch.device) -> str:
    """Rank 0's `text` on every rank (e.g. the run directory, whose default name holds rank 0's clock time).

    Sent as UTF-8 bytes in a tensor: no pickling, unlike `broadcast_object_list`.
    """
    if not info.enabled:
        return text
    data = text.encode() if info.is_main else b""
    n = torch.tensor([len(data)], dtype=torch.int64, device=device)
    tdist.broadcast(n, src=0)
    buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=device)
    if info.is_main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    tdist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode()
