"""`genpolicy envs list` and `genpolicy envs measure`: every task's spec, and simulator speed on this machine.

Measuring every env on each `list` would take minutes, so `measure` times one representative per suite (or every
task with ``all_tasks=true``, within ``total_budget_s``) and writes ``benchmarks/results/envs.{json,md}``;
`list` reads that file and prints "not measured" for the rest. Steps/s counts env steps under uniformly random
actions in the spec's box, resets included, after the env is built and warmed up; one process, one thread.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genpolicy.envs.base import EnvSpec
from genpolicy.envs.registry import SUITES, make_env, missing_packages, task_spec
from genpolicy.errors import ConfigError

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PACKAGES = ("mujoco", "gymnasium", "gymnasium-robotics", "dm-control", "metaworld", "robosuite", "gym-pusht", "pymunk",
            "numpy")


@dataclass
class EnvsMeasureConfig:
    """`genpolicy envs measure [key=value ...]`."""

    out: str = str(RESULTS_DIR)  # writes envs.json and envs.md here
    budget_s: float = 3.0  # timed window per (task, mode)
    all_tasks: bool = False  # every listed task instead of one representative per suite
    images: bool = True  # also time each suite's representative with camera observations
    suites: list[str] = field(default_factory=list)  # empty = every suite
    total_budget_s: float = 900.0  # stop starting new measurements after this much wall time
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            raise ConfigError(f"envs measure: unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
        if self.budget_s <= 0:
            raise ConfigError(f"envs measure: budget_s must be > 0, got {self.budget_s}")


@dataclass
class Measurement:
    """One timed (task, mode) run."""

    task: str
    images: bool
    steps_per_s: float | None  # None when not measured (see status)
    n_steps: int
    build_s: float
    status: str  # "ok", "needs <packages>", "error: ...", "skipped: total budget"


def machine() -> dict[str, Any]:
    """Platform, CPU count and versions of the simulator packages (no torch import)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                            "mujoco_gl": os.environ.get("MUJOCO_GL", "unset")}
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "-"
    info["versions"] = versions
    return info


def time_env(task: str, images: bool, budget_s: float, seed: int = 0) -> Measurement:
    """Build `task`, warm up, then step random actions for `budget_s` seconds."""
    suite = task.split("/", 1)[0]
    missing = missing_packages(suite)
    if missing:
        return Measurement(task, images, None, 0, 0.0, f"needs {', '.join(missing)}")
    t0 = time.perf_counter()
    try:
        env = make_env(task, seed=seed, images=images)
    except Exception as e:  # noqa: BLE001 -- a broken simulator is a result to report, not a crash of the table
        return Measurement(task, images, None, 0, time.perf_counter() - t0, f"error: {type(e).__name__}: {e}")
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    low, high = env.spec.action_low.astype(np.float64), env.spec.action_high.astype(np.float64)
    try:
        env.reset(seed=seed)
        for _ in range(3):  # warm-up: lazy renderers and caches
            env.step(rng.uniform(low, high))
        env.reset(seed=seed + 1)
        n, start = 0, time.perf_counter()
        while True:
            _, _, term, trunc, _ = env.step(rng.uniform(low, high))
            n += 1
            if term or trunc:
                env.reset()
            if n % 5 == 0 and time.perf_counter() - start >= budget_s:
                break
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return Measurement(task, images, n / elapsed, n, build_s, "ok")


def measure(cfg: EnvsMeasureConfig, command: str = "genpolicy envs measure") -> dict[str, Any]:
    """Time the selected tasks, write envs.json and envs.md under cfg.out, and return the JSON dict."""
    jobs: list[tuple[str, bool]] = []
    for suite in cfg.suites or list(SUITES):
        s = SUITES[suite]
        rep = f"{suite}/{s.representative}"
        tasks = [f"{suite}/{t}" for t in s.tasks] if cfg.all_tasks else [rep]
        jobs += [(t, False) for t in tasks]
        if cfg.images and s.images:
            jobs.append((rep, True))
    start = time.perf_counter()
    rows = []
    for task, images in jobs:
        if time.perf_counter() - start > cfg.total_budget_s:
            rows.append(Measurement(task, images, None, 0, 0.0, "skipped: total budget"))
            continue
        m = time_env(task, images, cfg.budget_s, cfg.seed)
        print(f"{task:45s} {'images' if images else 'state ':6s} "
              + (f"{m.steps_per_s:9.1f} steps/s" if m.steps_per_s else m.status), flush=True)
        rows.append(m)
    res = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
           "config": asdict(cfg), "rows": [asdict(r) for r in rows]}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "envs.json", json.dumps(res, indent=1) + "\n")
    _atomic_write(out / "envs.md", _markdown(res))
    return res


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Simulator speed", "",
             f"Command: `{res['command']}` ({res['date']}). Machine: {m['platform']}, {m['cpus']} CPUs, "
             f"OMP_NUM_THREADS={m['omp_threads']}, MUJOCO_GL={m['mujoco_gl']}, Python {m['python']}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
             "Steps/s: env steps under uniformly random actions in the spec's box, resets included, after build and "
             "warm-up; one process on a machine shared with other jobs, so treat the numbers as +-30%.", "",
             "| task | obs | steps/s | steps timed | build s | status |", "|---|---|---:|---:|---:|---|"]
    for r in res["rows"]:
        sps = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:.0f}"
        lines.append(f"| {r['task']} | {'images' if r['images'] else 'state'} | {sps} | {r['n_steps']} | "
                     f"{r['build_s']:.2f} | {r['status']} |")
    return "\n".join(lines) + "\n"


def load_measured(path: Path | None = None) -> dict[tuple[str, bool], float]:
    """{(task, images): steps/s} from envs.json; empty when nothing was measured."""
    path = path or RESULTS_DIR / "envs.json"
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not an envs measurement file ({e}); rerun `genpolicy envs measure`") from None
    return {(r["task"], bool(r["images"])): float(r["steps_per_s"]) for r in rows if r.get("steps_per_s")}


def _fmt_speed(measured: dict[tuple[str, bool], float], task: str, images: bool) -> str:
    v = measured.get((task, images))
    return "not measured" if v is None else f"{v:.0f}"


def _fmt_action(spec: EnvSpec) -> str:
    """Action dim, plus the box when it is not the usual [-1, 1] (PushT takes pixel targets)."""
    lo, hi = float(spec.action_low.min()), float(spec.action_high.max())
    if lo == -1.0 and hi == 1.0:
        return str(spec.action_dim)
    return f"{spec.action_dim} [{lo:g},{hi:g}]"


def describe_all(results: Path | None = None) -> str:
    """The `genpolicy envs list` text: one table per suite, then each task's success definition."""
    measured = load_measured(results)
    out = ["steps/s measured by `genpolicy envs measure` (benchmarks/results/envs.md); "
           "state dims are with images=false / images=true", ""]
    for suite, s in SUITES.items():
        names = [f"{suite}/{t}" for t in s.tasks]
        missing = missing_packages(suite)
        if missing:
            out += [f"[{suite}] needs {', '.join(missing)} (not installed): " + " ".join(names), ""]
            continue
        out.append(f"[{suite}] {len(names)} task(s)")
        out.append(f"  {'task':44s} {'state':>7s}  {'cameras (images=true)':34s} {'act':>11s} {'T':>5s} {'fps':>6s}  "
                   f"steps/s state | images")
        specs: dict[str, EnvSpec] = {}
        for name in names:
            spec, spec_img = task_spec(name), task_spec(name, images=True)
            specs[name] = spec
            dims = str(spec.state_dim)
            if spec_img.state_dim != spec.state_dim:
                dims += f"/{spec_img.state_dim}"
            cams = ",".join(spec_img.cameras) if s.images else "none (state only)"
            out.append(f"  {name:44s} {dims:>7s}  {cams:34s} {_fmt_action(spec):>11s} {spec.max_episode_steps:>5d} "
                       f"{spec.fps:>6.1f}  {_fmt_speed(measured, name, False)} | {_fmt_speed(measured, name, True)}")
        defs = {sp.success_definition for sp in specs.values()}
        if len(defs) == 1:
            out.append(f"  success (every {suite} task): {defs.pop()}")
        else:
            out += [f"  success {name}: {sp.success_definition}" for name, sp in specs.items()]
        out.append("")
    return "\n".join(out)
