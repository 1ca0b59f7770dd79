"""Camera env steps/s under chunked execution: rendering every step (before) vs render on demand (after).

Rendering costs per call, not per pixel (Meta-World ~75 camera steps/s vs ~2,700 from state here), and a chunked
policy only looks at the last To of the Ta executed steps, so `ChunkedEnv` renders only those (envs/wrappers.py).
This times random chunks through `ChunkedEnv` both ways, same seeds, one process, and writes
benchmarks/results/render_on_demand.{md,json} plus a marked section in benchmarks/results/envs.md.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/render_on_demand.py [--budget-s 20] [--tasks ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from genpolicy.envs.catalog import machine
from genpolicy.envs.registry import make_env
from genpolicy.envs.wrappers import ChunkedEnv

RESULTS = Path(__file__).parent / "results"
BEGIN, END = "<!-- render_on_demand:begin -->", "<!-- render_on_demand:end -->"


def time_chunked(task: str, every_step: bool, budget_s: float, to: int, ta: int, image_size: int,
                 seed: int = 0) -> dict:
    env = ChunkedEnv(make_env(task, seed=seed, images=True, image_size=image_size), to, ta,
                     render_every_step=every_step)
    spec = env.spec
    rng = np.random.default_rng(seed)
    try:
        env.reset(seed=seed)
        env.step(rng.uniform(spec.action_low, spec.action_high, (ta, spec.action_dim)))  # warm-up: lazy GL contexts
        env.reset(seed=seed + 1)
        env.rendered = 0
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget_s:
            res = env.step(rng.uniform(spec.action_low, spec.action_high, (ta, spec.action_dim)).astype(np.float32))
            n += res.n_steps
            if res.terminated or res.truncated:
                env.reset()
        elapsed = time.perf_counter() - start
        return {"task": task, "mode": "every step" if every_step else "on demand", "To": to, "Ta": ta,
                "image_size": image_size, "env_steps": n, "seconds": round(elapsed, 2),
                "steps_per_s": round(n / elapsed, 1), "renders_per_step": round(env.rendered / max(n, 1), 3)}
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["metaworld/door-open-v3", "metaworld/drawer-open-v3"])
    ap.add_argument("--budget-s", type=float, default=20.0)
    ap.add_argument("--to", type=int, default=2)
    ap.add_argument("--ta", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    rows = []
    for task in args.tasks:
        for every in (True, False):
            r = time_chunked(task, every, args.budget_s, args.to, args.ta, args.image_size)
            print(r, flush=True)
            rows.append(r)
    out = Path(args.out)
    res = {"command": "python benchmarks/render_on_demand.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k != "out"), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "rows": rows}
    (out / "render_on_demand.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [BEGIN, "## Camera steps under chunked execution: render every step vs on demand", "",
             f"`{res['command']}` ({res['date']}, 1-min load average {res['load_avg_1m']} on 2 CPUs shared with "
             f"other jobs). Random chunks through `ChunkedEnv` (To={args.to}, Ta={args.ta}, {args.image_size} px, "
             "one camera); \"on demand\" renders only the last To steps of each chunk (envs/wrappers.py), which "
             "are the only frames a policy window can contain.", "",
             "| task | before: every step (steps/s) | after: on demand (steps/s) | speed-up | renders/step after |",
             "|---|---:|---:|---:|---:|"]
    for task in args.tasks:
        b, a = [r for r in rows if r["task"] == task]
        lines.append(f"| {task} | {b['steps_per_s']:.0f} | {a['steps_per_s']:.0f} | "
                     f"{a['steps_per_s'] / b['steps_per_s']:.1f}x | {a['renders_per_step']:.2f} |")
    lines.append(END)
    block = "\n".join(lines) + "\n"
    (out / "render_on_demand.md").write_text(block.replace(BEGIN + "\n", "").replace(END + "\n", ""))
    envs_md = out / "envs.md"
    if envs_md.exists():  # the section survives here until this script is rerun (`envs measure` rewrites the rest)
        text = envs_md.read_text()
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + text[text.index(END) + len(END) + 1:]
        envs_md.write_text(text.rstrip("\n") + "\n\n" + block)
    print(block)


if __name__ == "__main__":
    main()
