"""Load any supported demonstration source, describe it, and convert between formats."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from genpolicy.datasets.lazy import LazyDemos
from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import DataError


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if p.suffix in (".hdf5", ".h5"):
        return "robomimic"
    if (p / "meta" / "info.json").exists():
        return "lerobot"
    if not p.exists():
        from genpolicy.datasets.lazy import resolve_path

        return detect_format(resolve_path(p))  # a LeRobot repo_id in the local cache
    if p.suffix == ".zarr" or (p / ".zgroup").exists():
        return "zarr"
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    raise DataError(f"{p}: unknown dataset format (expected a .zarr store, a robomimic .hdf5 or a LeRobot directory)")


def load_any(path: str | Path, state_keys: Optional[list[str]] = None, fps: float = 0.0) -> ReplayBuffer:
    """Read a zarr store, robomimic HDF5 or LeRobot v3 directory into a ReplayBuffer."""
    fmt = detect_format(path)
    if fmt == "lerobot":
        from genpolicy.datasets.lazy import resolve_path

        path = resolve_path(path)
    if fmt == "zarr":
        return ReplayBuffer.load(path)
    if fmt == "robomimic":
        from genpolicy.datasets.robomimic import import_robomimic

        return import_robomimic(path, state_keys=state_keys, fps=fps)
    from genpolicy.datasets.lerobot import import_lerobot

    return import_lerobot(path, state_keys=state_keys)


def convert(src: str | Path, dst: str | Path, fmt: Optional[str] = None, fps: float = 0.0,
            state_keys: Optional[list[str]] = None) -> Path:
    """Convert src (any readable format) to dst as zarr or LeRobot (chosen by `fmt` or dst's suffix)."""
    rb = load_any(src, state_keys=state_keys, fps=fps)
    dst = Path(dst)
    fmt = fmt or ("zarr" if dst.suffix == ".zarr" else "lerobot")
    if fmt == "zarr":
        return rb.save(dst)
    if fmt == "lerobot":
        from genpolicy.datasets.lerobot import export_lerobot

        return export_lerobot(rb, dst, fps=fps or float(rb.attrs.get("fps", 10.0)))
    raise DataError(f"unknown output format '{fmt}' (use zarr or lerobot)")


def info(path: str | Path, task: str = "") -> str:
    """`genpolicy data info`: a LeRobot dataset's key mapping (read from metadata, no frame decoded) and numeric
    summary; other formats as `describe`. With `task`, the mapping is the one training on that task would use."""
    from genpolicy.datasets.lazy import describe_lerobot, is_lerobot, open_demos, resolve_path

    p = resolve_path(path)
    if detect_format(p) == "zarr":
        return describe(open_demos(p))  # frames stay on disk: only their shapes are read
    if not is_lerobot(p):
        return describe(load_any(p))
    state_dim = None
    if task:
        from genpolicy.envs.registry import task_spec

        state_dim = task_spec(task, images=False).state_dim
    demos = open_demos(p, images=False, state_dim=state_dim)
    lengths = demos.episode_lengths
    act = demos.data["action"]
    lines = [describe_lerobot(p, state_dim),
             f"episode length min/mean/max: {lengths.min()}/{lengths.mean():.1f}/{lengths.max()}",
             "action range per dim (min .. max):"]
    lines += [f"  [{i}] {lo: .4f} .. {hi: .4f}" for i, (lo, hi) in enumerate(zip(act.min(0), act.max(0)))]
    return "\n".join(lines)


def describe(rb: ReplayBuffer | LazyDemos) -> str:
    """Human-readable summary: episodes, lengths, keys, shapes, action ranges."""
    lengths = rb.episode_lengths
    lines = [
        f"dataset: {rb.source}",
        f"episodes: {rb.n_episodes}   steps: {rb.n_steps}   "
        f"length min/mean/max: {lengths.min()}/{lengths.mean():.1f}/{lengths.max()}",
        "keys:",
    ]
    shapes = {k: (str(v.dtype), tuple(v.shape)) for k, v in rb.data.items()}
    for k, src in getattr(rb, "frames", {}).items():  # LazyDemos: frames on disk
        shapes[k] = ("uint8", (rb.n_steps, *src.shape))
    for k, (dtype, shape) in sorted(shapes.items()):
        lines.append(f"  {k:<24} {dtype:<8} {shape}")
    act = rb.data["action"]
    lines.append("action range per dim (min .. max):")
    for i, (lo, hi) in enumerate(zip(act.min(0), act.max(0))):
        lines.append(f"  [{i}] {lo: .4f} .. {hi: .4f}")
    interesting = {k: v for k, v in rb.attrs.items() if not isinstance(v, (list, dict))}
    if interesting:
        lines.append("attributes:")
        for k, v in sorted(interesting.items()):
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


