"""Rollout throughput: env steps/s of chunk rollouts with the local backend, Ray with 1 worker and Ray with 2 workers
(and, for gym/hopper-v5, the batched torch backend on the IsaacLab stand-in), in one process, same seeds.

The policy is a fixed random-chunk policy (chunks drawn once from a seeded generator), so the numbers are the
rollout machinery and the simulator only: per chunk the learner sends N chunks and receives windows, rewards and
flags. Each backend runs `--warmup` chunks, then `--repeats` timed runs of `--chunks` chunks, interleaved across
backends in rounds; the median is reported, with the ratio to the local backend of the same run. Ray start-up and
actor creation are timed separately.

Writes benchmarks/results/rollout_scale.md and rollout_scale.json.

    .venv/bin/python benchmarks/rollout_scale.py                     # drawer-open and hopper, 8 envs
    .venv/bin/python benchmarks/rollout_scale.py --tasks gym/hopper-v5 --chunks 20 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

import genpolicy  # noqa: E402
from genpolicy.finetune.rollout import ChunkEnvs, VecChunkEnv  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TO, H, TA = 2, 8, 4


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "genpolicy": genpolicy.__version__}
    for pkg in ("torch", "numpy", "mujoco", "metaworld", "gymnasium", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "-"
    return out


def machine() -> dict[str, Any]:
    model = "-"
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": model, "logical_cpus": os.cpu_count(),
            "gpu": torch.cuda.is_available()}


def make(task: str, backend: str, n_envs: int, seed: int) -> ChunkEnvs:
    if backend == "local":
        return VecChunkEnv(task, n_envs, TO, TA, seed=seed)
    if backend.startswith("ray"):
        from genpolicy.finetune.ray_rollout import RaySlices

        workers = int(backend.split("-")[1])
        runner = RaySlices(task, list(range(seed, seed + n_envs)), TO, TA, workers=workers)
        return VecChunkEnv(task, n_envs, TO, TA, seed=seed, runner=runner)
    if backend == "torch-standin":
        from genpolicy.finetune.torch_rollout import make_torch_venv

        return make_torch_venv("isaaclab_standin/" + task.split("/", 1)[1], n_envs, TO, TA, seed=seed)
    raise ValueError(backend)


def run_chunks(venv: ChunkEnvs, chunks: torch.Tensor) -> dict[str, Any]:
    """One timed pass over chunks (K, N, H, Da): env steps/s and episodes that ended."""
    steps, episodes, t0 = 0, 0, time.perf_counter()
    for c in chunks:
        venv.batch_obs(torch.device("cpu"))  # what collect() asks for before every chunk
        res = venv.step(c)
        steps += res.env_steps
        episodes += len(res.episodes)
    return {"rate": steps / (time.perf_counter() - t0), "episodes": episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["metaworld/drawer-open-v3", "gym/hopper-v5"])
    ap.add_argument("--n-envs", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--chunks", type=int, default=60, help="chunks per timed run (each env executes Ta=4 steps)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT / "rollout_scale"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ray

    from genpolicy.finetune.ray_rollout import init_ray

    t0 = time.perf_counter()
    # 3 = the ray-1 and ray-2 actors alive at once (the rounds interleave them). Ray's CPU count only schedules actors;
    # the machine still has 2 cores.
    init_ray(num_cpus=3)
    ray_init_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    rows = []
    for task in args.tasks:
        for n_envs in args.n_envs:
            probe = VecChunkEnv(task, 1, TO, TA, seed=0)
            spec_dim = probe.spec.action_dim
            probe.close()
            g = torch.Generator().manual_seed(args.seed)
            chunks = torch.rand(args.chunks, n_envs, H, spec_dim, generator=g) * 2 - 1  # (K, N, H, Da)
            backends = ["local", "ray-1", "ray-2"] + (["torch-standin"] if task.startswith("gym/") else [])
            venvs, setup = {}, {}
            for backend in backends:
                t1 = time.perf_counter()
                venvs[backend] = make(task, backend, n_envs, args.seed)
                setup[backend] = time.perf_counter() - t1
                for k in range(args.warmup):
                    venvs[backend].step(chunks[k % len(chunks)])
            # rounds interleave the backends, so a change in the machine's load hits all of them alike
            runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
            for _ in range(args.repeats):
                for backend in backends:
                    runs[backend].append(run_chunks(venvs[backend], chunks))
            for v in venvs.values():
                v.close()
            local_rate = statistics.median(r["rate"] for r in runs["local"])
            for backend in backends:
                rate = statistics.median(r["rate"] for r in runs[backend])
                row = {"task": task, "backend": backend, "n_envs": n_envs, "steps_per_s": round(rate, 1),
                       "vs_local": round(rate / local_rate, 3), "runs": [round(r["rate"], 1) for r in runs[backend]],
                       "setup_s": round(setup[backend], 2), "episodes_ended": sum(r["episodes"] for r in runs[backend]),
                       "loadavg_1m_after": round(os.getloadavg()[0], 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ray.shutdown()
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "versions": versions(),
            "seed": args.seed, "n_envs": args.n_envs, "chunks_per_run": args.chunks, "repeats": args.repeats,
            "warmup": args.warmup, "To_H_Ta": [TO, H, TA], "ray_init_s": round(ray_init_s, 2),
            "loadavg_before": [round(x, 2) for x in load_before], "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(report(meta, rows))
    print(f"wrote {out.with_suffix('.md')}")


def report(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Rollout throughput: local vs Ray workers",
        "",
        f"Env steps per second of chunk rollouts (fixed random chunks, N = {meta['n_envs']} envs, To/H/Ta = "
        f"{'/'.join(map(str, meta['To_H_Ta']))}), median of {meta['repeats']} runs of {meta['chunks_per_run']} chunks "
        f"after {meta['warmup']} warm-up chunks, the backends' runs interleaved in rounds; `vs local` is the ratio to the local backend in the same run. "
        "`setup` is env (and actor) creation; Ray itself started in "
        f"{meta['ray_init_s']} s (`init_ray(num_cpus=3)`: room for the 1 + 2 actors alive at once; actors at normal "
        "priority).",
        "",
        "| task | N | backend | env steps/s | vs local | runs | setup s | load (1 min) after |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['n_envs']} | {r['backend']} | {r['steps_per_s']:.0f} | {r['vs_local']:.2f} | "
                     f"{', '.join(f'{x:.0f}' for x in r['runs'])} | {r['setup_s']:.1f} | {r['loadavg_1m_after']} |")
    lines += [
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['logical_cpus']} logical CPUs, GPU: "
        f"{meta['machine']['gpu']}; load average before: {meta['loadavg_before']}. The machine has 2 cores shared with "
        "other jobs, so Ray's 2 workers compete with the learner process and with whatever else runs; read the ratios "
        "as this machine's, not as scaling on a real multi-core node or cluster.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}. Seed {meta['seed']}; "
        f"{meta['date_utc']} UTC.",
        "How to read it: the Ray backend costs one round trip per chunk (two when episodes end there: the learner "
        "hands out the reset seeds, which keeps results equal to the local backend), so it pays only when a chunk's "
        "simulation time dominates and there are idle cores for the actors; neither holds on this machine.",
        "`torch-standin` is the batched torch backend (finetune/torch_rollout.py) on the IsaacLab stand-in: the same "
        "MuJoCo Hopper stepped in one process, counted as N*Ta simulated steps per chunk.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
