"""Samplers at equal success: the adaptive flow sampler and warm-started chunks on trained Meta-World policies.

Takes the BC checkpoints that benchmarks/bc_metaworld.py trained (runs/bench_bc/<task>_<policy>_seed<N>) and
evaluates each with several samplers on the same 50 held-out episodes (same env seeds, same noise seed):
  - flow: Euler 10 (the default), Euler 3, the adaptive sampler at two tolerances (network evaluations per chunk
    reported), and Euler 10 warm-started for the last 3 steps from the previous chunk's re-noised tail;
  - diffusion: DDIM 10 cold, and warm-started for the last 3 steps.
Writes benchmarks/results/sampler_quality.md and .json (rows: task, policy, sampler, success_rate, nfe_per_chunk,
infer_ms_per_call). Rows are appended as they finish; a rerun skips rows already present.

    .venv/bin/python benchmarks/sampler_quality.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from genpolicy.training.checkpoint import load_policy  # noqa: E402
from genpolicy.training.evaluate import evaluate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bc_metaworld import versions  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TASKS = ["metaworld/pick-place-v3", "metaworld/push-v3", "metaworld/door-open-v3", "metaworld/assembly-v3"]
SETTINGS = {  # name -> (policy family, set_sampler kwargs)
    "euler10": ("flow", dict(sampler="euler", steps=10)),
    "euler3": ("flow", dict(sampler="euler", steps=3)),
    "adaptive(tol=0.1)": ("flow", dict(sampler="adaptive", steps=10, adaptive_tol=0.1)),
    "adaptive(tol=0.2)": ("flow", dict(sampler="adaptive", steps=10, adaptive_tol=0.2)),
    "adaptive(tol=0.4)": ("flow", dict(sampler="adaptive", steps=10, adaptive_tol=0.4)),
    "euler10 warm 3": ("flow", dict(sampler="euler", steps=10, warm_start_steps=3)),
    "ddim10": ("diffusion", dict(sampler="ddim", steps=10)),
    "ddim10 warm 3": ("diffusion", dict(sampler="ddim", steps=10, warm_start_steps=3)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--seed", type=int, default=0, help="which trained seed's checkpoints")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--work", default="runs/bench_bc")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="only rewrite the markdown from the JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    js = OUT / "sampler_quality.json"
    data = json.loads(js.read_text()) if js.exists() else {"rows": []}
    if not args.report:
        data["meta"] = {"command": ".venv/bin/python " + " ".join(sys.argv), "versions": versions(),
                        "episodes": args.episodes,
                        "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"}
    done = {(r["task"], r["setting"], r["seed"]) for r in data["rows"]}
    for task in ([] if args.report else args.tasks):
        for name in args.settings:
            if (task, name, args.seed) in done:
                continue
            family, kw = SETTINGS[name]
            ckpt = Path(args.work) / f"{task.replace('/', '_')}_{family}_seed{args.seed}" / "checkpoints" / "0002000"
            if not ckpt.exists():
                print(f"[skip] {ckpt} missing (run benchmarks/bc_metaworld.py first)")
                continue
            policy = load_policy(ckpt)
            policy.set_sampler(**kw)
            t0 = time.time()
            ev = evaluate(policy, task, n_episodes=args.episodes, n_envs=10, seed=100000, progress=False)
            row = {"task": task, "policy": family, "setting": name, "seed": args.seed,
                   "prediction": policy.cfg.prediction if family == "diffusion" else None,
                   "success_rate": ev["success_rate"], "n_episodes": ev["n_episodes"],
                   "nfe_per_chunk": ev["nfe_per_chunk"] if ev["nfe_per_chunk"] is not None else _fixed_nfe(policy),
                   "infer_ms_per_call": ev["infer_ms_per_call"], "eval_seconds": round(time.time() - t0, 1)}
            print(f"[sampler] {task} {name}: success {row['success_rate']:.2f}, nfe {row['nfe_per_chunk']}, "
                  f"{row['infer_ms_per_call']} ms/call", flush=True)
            data["rows"].append(row)
            js.write_text(json.dumps(data, indent=2))
    js.write_text(json.dumps(data, indent=2))
    write_markdown(data, OUT / "sampler_quality.md")


def _fixed_nfe(policy) -> float:
    """Network evaluations per chunk of a fixed grid; warm starts count the cold first chunk of an episode too."""
    g = policy.grid
    per = g.n_steps * g.evals_per_step
    return float(policy.cfg.warm_start_steps * g.evals_per_step) if policy.cfg.warm_start_steps else float(per)


def write_markdown(data: dict, path: Path) -> None:
    rows = data["rows"]
    meta = data["meta"]
    tasks = sorted({r["task"] for r in rows})
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    lines = ["# Samplers at equal success (adaptive steps, warm starts)", "",
             f"Command: `{meta['command']}`", f"Machine: {meta['machine']}; versions: "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), "",
             "Checkpoints: the seed-0 BC policies of `bc_metaworld.md` (50 demos, 2000 steps). Each cell: success on "
             f"{meta['episodes']} held-out episodes / network evaluations per chunk (warm starts: per re-planned "
             "chunk; an episode's first chunk is cold) / ms per batched inference call (10 envs). The ms column was "
             "measured while another single-threaded benchmark shared the 2 cores: compare within a row only; "
             "`sampler.md` has the clean speed measurements.", "",
             "| task | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for t in tasks:
        cells = []
        for s in settings:
            r = next((r for r in rows if r["task"] == t and r["setting"] == s), None)
            cells.append("-" if r is None else f"{r['success_rate']:.2f} / {r['nfe_per_chunk']:.1f} / {r['infer_ms_per_call']:.1f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    means = []
    for s in settings:
        rs = [r for r in rows if r["setting"] == s]
        means.append(f"**{sum(r['success_rate'] for r in rs) / len(rs):.2f} / "
                     f"{sum(r['nfe_per_chunk'] for r in rs) / len(rs):.1f} / "
                     f"{sum(r['infer_ms_per_call'] for r in rs) / len(rs):.1f}**")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    lines += ["", "Reading: every flow sampler holds success at 3-4 evaluations per chunk here, so the adaptive sampler's "
              "saving (about 6 evaluations at tol 0.2, 4 at tol 0.4, against Euler 10) is real but no better than a "
              "fixed Euler 3 on these tasks; its per-row bookkeeping also costs wall-clock. Warm-starting diffusion "
              "(re-noise the unexecuted tail, run the last 3 of 10 DDIM steps) holds or raises success at 30% of the "
              "evaluations: 0.98 -> 1.00 with the current clean-chunk-prediction checkpoints, and 0.78 -> 0.87 with "
              "the earlier epsilon-prediction ones (archive/sampler_quality_diffusion_epsilon.json): chunks stay "
              "consistent with the plan already under way.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
