"""Learning results under the protocol (genpolicy/protocol.py): held-out test episodes, fixed budgets, every seed.

Stage `bc` (this file's first stage): behaviour cloning in regimes of 5, 10 and 25 clean scripted demonstrations on
Meta-World's hard and very-hard tasks, diffusion (DDIM 10) and flow (Euler 10; its shortcut head also evaluated with
one step), one fixed BC budget for every cell (no network is undertrained to make it weak). Each cell is scored on the
protocol's 100 test episodes from zero and from random initial noise. The regimes are nested (the 5 demos are the
first 5 of the 10, which are the first 10 of the 25), so the 10 and 25 rows are a 5-demo start's `bc_2x_demos` and
`bc_5x_demos` baselines. A cell whose test success from zero and from random noise both lie in [0.1, 0.6] qualifies
as a weak start for the fine-tuning stage.

Writes benchmarks/results/learning_bc.md and learning_bc.json (`rows`: one per task, demos, seed and family; `meta`:
machine, versions, seed ranges, commands). Rows are appended as they finish (atomic, locked); a rerun skips them, so
an interrupted run resumes. Nothing here takes settings beyond the listed flags, and every flag is stored in `meta`.

    .venv/bin/python benchmarks/learning.py --stage bc --seeds 0 --threads 1
    .venv/bin/python benchmarks/learning.py --report
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from genpolicy.config import DataConfig, EvalConfig, OptimConfig, PolicyConfig, RunConfig, TaskConfig, TrainConfig  # noqa: E402
from genpolicy.protocol import SEEDS, _meta, _write_atomic, iqm, start_baselines, weak_start_qualifies  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
HARD = ["metaworld/assembly-v3", "metaworld/pick-place-v3", "metaworld/stick-pull-v3", "metaworld/shelf-place-v3",
        "metaworld/peg-insert-side-v3", "metaworld/disassemble-v3", "metaworld/hammer-v3", "metaworld/pick-place-wall-v3"]
DEMOS = [5, 10, 25]
FAMILIES = ["diffusion", "flow"]
BC_STEPS = 2000  # the suite's fixed BC budget (benchmarks/results/bc_metaworld.md: enough for 50 clean demos)
TEST_EPISODES = 100


def demo_seed(seed: int) -> int:
    """Demonstration episodes of training seed s start at 10_000 * s: disjoint per seed, inside the demos range."""
    s = 10_000 * seed
    assert s + max(DEMOS) * 3 < SEEDS.demos.stop
    return s


def row_key(r: dict) -> tuple:
    return r["task"], r["n_demos"], r["seed"], r["family"]


def load(js: Path) -> dict:
    return json.loads(js.read_text()) if js.exists() else {"rows": []}


def add_rows(js: Path, rows: list[dict], meta_extra: dict) -> None:
    """Append under a lock, atomically (two workers may share the file)."""
    with open(js.with_name(js.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load(js)
        have = {row_key(r) for r in data["rows"]}
        data["rows"] += [r for r in rows if row_key(r) not in have]
        data["meta"] = {**_meta(data.get("meta", {}), None), **meta_extra}
        _write_atomic(js, json.dumps(data, indent=2))


def bc_cell(task: str, n_demos: int, seed: int, family: str, work: Path) -> list[dict]:
    """Train one BC policy and score it on the test split; flow cells also give the one-step (shortcut) rows."""
    from genpolicy.datasets.collect import generate
    from genpolicy.training.bc import train
    from genpolicy.training.checkpoint import load_policy

    name = task.replace("/", "_")
    data = work / f"{name}_d{n_demos}_seed{seed}.zarr"
    if not data.exists():
        tmp = data.with_name(data.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        generate(task, n_demos, seed=demo_seed(seed), progress=False).save(tmp)
        tmp.rename(data)
    run_dir = work / f"{name}_d{n_demos}_{family}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted cell trains again, so its timing is whole
    pol = PolicyConfig(type=family, sampler="ddim" if family == "diffusion" else "euler", steps=10)
    cfg = TrainConfig(task=TaskConfig(name=task), policy=pol, data=DataConfig(path=str(data), seed=seed),
                      train=OptimConfig(steps=BC_STEPS, batch_size=256),
                      eval=EvalConfig(n_episodes=20, n_envs=10, n_videos=0, split="selection"),
                      run=RunConfig(dir=str(run_dir), seed=seed, log_every=500, ckpt_every=10**9, progress=False))
    t0 = time.time()
    res = train(cfg)
    minutes = (time.time() - t0 - res["eval"].get("eval_seconds", 0.0)) / 60
    policy = load_policy(res["final_checkpoint"])
    variants = [(family, policy)]
    if family == "flow":
        one = load_policy(res["final_checkpoint"])
        one.set_sampler("shortcut", 1)
        variants.append(("flow_1step", one))
    rows = []
    for fam, p in variants:
        t1 = time.time()
        b = start_baselines(p, task, TEST_EPISODES, n_envs=10)
        rows.append({"task": task, "n_demos": n_demos, "seed": seed, "family": fam,
                     "test_success_zero_noise": b.success_zero_noise, "test_success_random_noise": b.success_random_noise,
                     "test_return_zero_noise": b.return_zero_noise, "test_return_random_noise": b.return_random_noise,
                     "test_episodes": b.test_episodes, "weak_start": b.qualifies, "bc_steps": BC_STEPS,
                     "demo_seed": demo_seed(seed), "train_minutes": round(minutes, 2),
                     "test_eval_s": round(time.time() - t1, 1), "checkpoint": str(res["final_checkpoint"])})
    return rows


def write_report(js: Path, md: Path) -> None:
    data = load(js)
    rows, meta = data["rows"], data.get("meta", {})
    fams = ["diffusion", "flow", "flow_1step"]
    lines = ["# Behaviour cloning in demonstration regimes (test split)", "",
             f"All success rates: the protocol's {TEST_EPISODES} held-out **test** episodes (seeds from "
             f"{SEEDS.test.start}; no decision saw them), from zero initial noise / from random initial noise. "
             f"Clean scripted demonstrations, nested regimes (5 of 10 of 25), {BC_STEPS} BC steps for every cell "
             "(MLP 512x3, To=2 H=16 Ta=8, EMA, final checkpoint: nothing selected). `weak` marks a cell with both "
             "numbers in [0.1, 0.6] (a weak start for fine-tuning). Mean over seeds; IQM where >= 3 seeds.", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])),
             f"Machine: {meta.get('machine', '?')}, {meta.get('cpu_count', '?')} CPUs; versions: "
             + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
             f"Shared the machine: {meta.get('shared', 'not recorded')}", "",
             "| task | demos | " + " | ".join(f"{f}: zero / random (seeds)" for f in fams) + " |",
             "|---|---|" + "---|" * len(fams)]
    tasks = [t for t in HARD if any(r["task"] == t for r in rows)]
    for t in tasks:
        for d in DEMOS:
            cells = []
            for f in fams:
                rs = [r for r in rows if (r["task"], r["n_demos"], r["family"]) == (t, d, f)]
                if not rs:
                    cells.append("-")
                    continue
                z = np.array([r["test_success_zero_noise"] for r in rs])
                rnd = np.array([r["test_success_random_noise"] for r in rs])
                agg = (lambda a: iqm(a[:, None])) if len(rs) >= 3 else (lambda a: float(a.mean()))  # noqa: E731
                weak = sum(r["weak_start"] for r in rs)
                cells.append(f"{agg(z):.2f} / {agg(rnd):.2f} ({len(rs)}{', weak ' + str(weak) if weak else ''})")
            if any(c != "-" for c in cells):
                lines.append(f"| {t.split('/')[1]} | {d} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", "", "| task | demos | family | seed | zero noise | random noise | weak | train min |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["n_demos"], fams.index(r["family"]), r["seed"])):
        lines.append(f"| {r['task'].split('/')[1]} | {r['n_demos']} | {r['family']} | {r['seed']} | "
                     f"{r['test_success_zero_noise']:.2f} | {r['test_success_random_noise']:.2f} | "
                     f"{'yes' if r['weak_start'] else ''} | {r['train_minutes']} |")
    _write_atomic(md, "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["bc"], default="bc")
    ap.add_argument("--tasks", nargs="+", default=HARD)
    ap.add_argument("--demos", nargs="+", type=int, default=DEMOS)
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="runs/bench_learning")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--shared", default="", help="what else ran on the machine (recorded in the report)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    bad = [d for d in args.demos if d not in DEMOS]
    if bad:
        sys.exit(f"--demos {bad}: the regimes are {DEMOS} (nested, so 10 and 25 are a 5-demo start's 2x and 5x)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "learning_bc.json", out / "learning_bc.md"
    if args.report:
        write_report(js, md)
        print(md)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for d in args.demos:
            for task in args.tasks:
                for fam in args.families:
                    done = {row_key(r) for r in load(js)["rows"]}
                    if (task, d, seed, fam) in done:
                        continue
                    t0 = time.time()
                    rows = bc_cell(task, d, seed, fam, work)
                    add_rows(js, rows, {"shared": args.shared} if args.shared else {})
                    for r in rows:
                        print(f"[bc] {task} d{d} {r['family']} seed {seed}: test {r['test_success_zero_noise']:.2f} "
                              f"(zero noise) / {r['test_success_random_noise']:.2f} (random){' weak' if r['weak_start'] else ''}"
                              f" [{time.time() - t0:.0f} s]", flush=True)
                    write_report(js, md)


if __name__ == "__main__":
    main()
