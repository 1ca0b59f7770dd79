"""On-policy fine-tuning benchmark: DPPO, FPO and ReinFlow from weak BC checkpoints, Meta-World and locomotion.

Locomotion tasks (gym/hopper-v5, gym/walker2d-v5) need their SAC expert first (`genpolicy data expert`).

For each task: a weak BC policy per family (few, noisy scripted demonstrations; diffusion for DPPO, flow for FPO and
ReinFlow), then `finetune()` per algorithm and seed with the `metaworld` preset (configs/preset/metaworld.yaml).
Writes benchmarks/results/finetune_onpolicy.md, .json (a list `rows`, one per algorithm, task and seed) and
finetune_onpolicy.png (success or return versus env steps, one line per seed). Rows are appended as they finish; a rerun skips
rows already present, so several workers (one per seed, --threads 1) can share the file. A row whose run was
interrupted (Ctrl-C, SIGTERM: fine-tuning saves a checkpoint first) resumes from its last checkpoint on the next
invocation with the same settings.

    .venv/bin/python benchmarks/finetune_onpolicy.py --seeds 0 --threads 1
    .venv/bin/python benchmarks/finetune_onpolicy.py --report
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
from typing import Callable, Optional

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genpolicy.cli import compose  # noqa: E402
from genpolicy.config import (DataConfig, EvalConfig, FinetuneConfig, OptimConfig, PolicyConfig, RunConfig,  # noqa: E402
                              TaskConfig, TrainConfig)
from genpolicy.datasets.collect import generate  # noqa: E402
from genpolicy.finetune.ppo import finetune  # noqa: E402
from genpolicy.training.bc import train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bc_metaworld import versions  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TASKS = ["metaworld/drawer-open-v3", "metaworld/button-press-topdown-v3", "metaworld/door-open-v3"]
FAMILY = {"dppo": "diffusion", "fpo": "flow", "reinflow": "flow"}


def is_locomotion(task: str) -> bool:
    return task.startswith("gym/")


def bc_recipe(task: str, family: str, args: argparse.Namespace) -> str:
    """The name of the BC checkpoint a row of this task and family starts from under `args` (also its cache key).

    Meta-World: d<demos>_n<noise>_t<detour>_s<BC steps>. Locomotion: sac<expert return>_e<episodes>_n<noise>_s<steps>."""
    if is_locomotion(task):
        from genpolicy.experts.sac import default_expert_path

        meta = default_expert_path(task) / "expert.json"
        if not meta.exists():
            sys.exit(f"{task}: no SAC expert at {meta.parent}; train it first: "
                     f"genpolicy data expert task={task} expert.stop_return=<medium return>")
        ret = json.loads(meta.read_text()).get("return", 0)
        return f"sac{ret:.0f}_e{args.loco_demos}_n{args.loco_noise}_s{args.loco_bc_steps}"
    steps = args.bc_steps_diffusion if family == "diffusion" and args.bc_steps_diffusion else args.bc_steps
    return f"d{args.demos}_n{args.demo_noise}_t{args.detour}_s{steps}"


def bc_info_path(task: str, family: str, recipe: str, work: Path) -> Path:
    """Where weak_bc caches a checkpoint's info ({ckpt, success, ...}); its run directory is the same path without
    `.json`. The cache key is the whole recipe."""
    return work / f"{task.replace('/', '_')}_{family}_{recipe}.json"


def weak_bc(task: str, family: str, args: argparse.Namespace, work: Path) -> dict:
    """Train (once) the weak BC checkpoint of a task and family; returns {ckpt, success, return, recipe, minutes}.

    Meta-World: a few noisy scripted demonstrations. Locomotion: episodes of the SAC "medium" expert
    (`genpolicy data expert`, data/experts/<task>), chunks of 4 from one observation as DPPO does on Gym."""
    recipe = bc_recipe(task, family, args)
    info_path = bc_info_path(task, family, recipe, work)
    if info_path.exists():
        return json.loads(info_path.read_text())
    loco = is_locomotion(task)
    data = work / f"{task.replace('/', '_')}_{'' if loco else 'weak_'}{recipe.rsplit('_s', 1)[0]}.zarr"
    with open(work / ".lock", "w") as lock:  # two workers must not write the same demonstrations
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not data.exists():
            demos = (generate(task, args.loco_demos, seed=777, noise=args.loco_noise, progress=False) if loco else
                     generate(task, args.demos, seed=777, noise=args.demo_noise, detour_prob=args.detour, progress=False))
            demos.save(data)
    run_dir = info_path.with_suffix("")
    shutil.rmtree(run_dir, ignore_errors=True)
    chunking = dict(n_obs_steps=1, horizon=4, n_action_steps=4) if loco else {}
    pol = PolicyConfig(type=family, sampler="ddim" if family == "diffusion" else "euler", steps=10, **chunking)
    cfg = TrainConfig(task=TaskConfig(name=task), policy=pol, data=DataConfig(path=str(data), seed=0),
                      train=OptimConfig(steps=int(recipe.rsplit("_s", 1)[1]), batch_size=256),
                      eval=EvalConfig(n_episodes=10 if loco else 50, n_envs=10, n_videos=0),
                      run=RunConfig(dir=str(run_dir), progress=False, log_every=500, ckpt_every=10**9))
    t0 = time.time()
    res = train(cfg)
    info = {"ckpt": res["final_checkpoint"], "success": res["eval"]["success_rate"], "return": res["eval"]["mean_return"],
            "recipe": recipe, "minutes": round((time.time() - t0) / 60, 2)}
    info_path.write_text(json.dumps(info))
    return info


BUDGET = "ppo.iterations="  # the one setting a run keeps when it changes: a larger budget extends the same run


def resume_or_restart(run_dir: Path, overrides: list[str]) -> list[str]:
    """A row missing from the JSON had its run interrupted (or, with --extend, ran out of iterations): resume it from
    its last checkpoint when it was started with the same overrides, the iteration budget aside (fine-tuning resumes
    exactly: weights, optimisers, RNGs, curve, wall-clock), else start over. Returns the extra override for `compose`."""
    stamp = run_dir / "bench_overrides.json"
    same = lambda a, b: [o for o in a if not o.startswith(BUDGET)] == [o for o in b if not o.startswith(BUDGET)]  # noqa: E731
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob("it_*")) and stamp.exists() \
            and same(json.loads(stamp.read_text()), overrides):
        print(f"[bench]   resuming {run_dir}", flush=True)
        stamp.write_text(json.dumps(overrides))
        return ["run.resume=true"]
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stamp.write_text(json.dumps(overrides))
    return []


def stamped_iterations(run_dir: Path) -> int:
    """The iteration budget a benchmark run was last started with (0 if unknown)."""
    stamp = run_dir / "bench_overrides.json"
    found = [o for o in (json.loads(stamp.read_text()) if stamp.exists() else []) if o.startswith(BUDGET)]
    return int(found[-1][len(BUDGET):]) if found else 0


def row_dir(task: str, algo: str, seed: int, recipe: str, args: argparse.Namespace, work: Path) -> Path:
    tag = f"_{args.tag}" if args.tag else ""
    return work / f"{task.replace('/', '_')}_{algo}_{recipe}{tag}_seed{seed}"  # one directory per row


def run_one(task: str, algo: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    bc = weak_bc(task, FAMILY[algo], args, work)
    run_dir = row_dir(task, algo, seed, bc["recipe"], args, work)
    if is_locomotion(task):
        preset, per_algo = "locomotion", []
    else:
        preset, per_algo = "metaworld", []  # the per-algorithm values these rows used now live in the preset
    overrides = [f"algo={algo}", f"ckpt={bc['ckpt']}", f"task={task}", f"preset={preset}", *per_algo,
                 f"run.dir={run_dir}", f"run.seed={seed}", "run.progress=false",
                 *([f"ppo.iterations={args.iterations}"] if args.iterations else []), *args.overrides]
    cfg = compose("finetune", overrides + resume_or_restart(run_dir, overrides), FinetuneConfig)
    res = finetune(cfg)
    return {"algo": algo, "task": task, "seed": seed, "bc_success_50ep": bc["success"], "bc_recipe": bc["recipe"],
            "start_success": res["start_success"], "final_success": res["final_success"],
            "start_return": res["start_return"], "final_return": res["final_return"], "env_steps": res["env_steps"],
            "wallclock_s": res["wallclock_s"], "env_steps_to_90": res["env_steps_to_90"],
            "wallclock_s_to_90": res["wallclock_s_to_90"], "curve": res["curve"], "stopped_early": res["stopped_early"],
            "overrides": list(args.overrides), "tag": args.tag,
            "eval_episodes": cfg.eval.n_episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--algos", nargs="+", default=list(FAMILY))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=0, help="0: the preset's")
    ap.add_argument("--demos", type=int, default=10)
    ap.add_argument("--demo-noise", type=float, default=1.0)
    ap.add_argument("--detour", type=float, default=0.3)
    ap.add_argument("--bc-steps", type=int, default=120)
    ap.add_argument("--bc-steps-diffusion", type=int, default=0,
                    help="BC steps of the diffusion (DPPO) checkpoints; 0: --bc-steps. Diffusion BC learns faster, so "
                         "the same steps can give a checkpoint above the weak range")
    ap.add_argument("--loco-demos", type=int, default=20, help="locomotion: expert episodes")
    ap.add_argument("--loco-noise", type=float, default=0.1, help="locomotion: expert action-noise std")
    ap.add_argument("--loco-bc-steps", type=int, default=3000)
    ap.add_argument("--work", default="runs/bench_ft")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(OUT), help="results directory")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--tag", default="", help="label for a variant (rows run with other overrides): part of the row's "
                    "key and run directory, so it sits next to the default row instead of being skipped")
    ap.add_argument("--extend", action="store_true",
                    help="rerun rows whose run was started with fewer than --iterations: it resumes from its last "
                         "checkpoint and the longer run replaces the row")
    ap.add_argument("overrides", nargs="*", help="extra finetune overrides, e.g. ppo.n_envs=8")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    js = out / "finetune_onpolicy.json"
    for task in ([] if args.report else args.tasks):
        for algo in args.algos:
            for seed in args.seeds:
                data = json.loads(js.read_text()) if js.exists() else {"rows": []}
                recipe = bc_recipe(task, FAMILY[algo], args)
                key = (task, algo, seed, recipe, args.tag)
                row_key = lambda r: (r["task"], r["algo"], r["seed"], r["bc_recipe"], r.get("tag", ""))  # noqa: E731
                if any(row_key(r) == key for r in data["rows"]) and not (
                        args.extend and 0 < stamped_iterations(row_dir(*key[:3], recipe, args, work)) < args.iterations):
                    continue
                print(f"[bench] {task} {algo} seed {seed}", flush=True)
                row = run_one(task, algo, seed, args, work)
                print(f"[bench]   success {row['start_success']:.2f} -> {row['final_success']:.2f}, return "
                      f"{row['start_return']:.0f} -> {row['final_return']:.0f}, to 90%: {row['env_steps_to_90']} env steps",
                      flush=True)
                append_row(js, row, vars(args) | {"overrides": args.overrides}, replaces=lambda r: row_key(r) == key)
    if js.exists():
        data = json.loads(js.read_text())
        write_report(data, out)


def append_row(js: Path, row: dict, setup: dict, keep_first_setup: bool = False,
               replaces: Optional[Callable[[dict], bool]] = None) -> None:
    """Add one row to a results JSON under a file lock (several workers share it), recording the command, versions,
    machine and setup; rows matching `replaces` (the shorter run an extended one supersedes) are dropped. Written to a
    temporary file and renamed, so the JSON is never half-written."""
    with open(js.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(js.read_text()) if js.exists() else {"rows": []}
        data["rows"] = [r for r in data["rows"] if not (replaces and replaces(r))] + [row]
        meta = data.setdefault("meta", {})
        cmd = ".venv/bin/python " + " ".join(sys.argv)
        if cmd not in meta.setdefault("commands", []):
            meta["commands"].append(cmd)
        meta.update(versions=versions(), machine=f"{os.uname().machine}, {os.cpu_count()} CPUs")
        if not (keep_first_setup and "setup" in meta):
            meta["setup"] = setup
        tmp = js.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(js)


def _name(row: dict) -> str:
    """The algorithm, with the variant tag of rows run with other settings."""
    return row["algo"] + (f" [{row['tag']}]" if row.get("tag") else "")


def summary(rows: list[dict]) -> list[str]:
    """Per task, algorithm variant and BC checkpoint: how many seeds reached the target, and how fast.

    Meta-World: 90% success, with the median (min-max) env steps and seconds to it. Locomotion: a +30% return gain."""
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (is_locomotion(r["task"]), r["task"], _name(r), r.get("bc_recipe", ""), r["seed"])):
        groups.setdefault((r["task"], _name(r), r.get("bc_recipe", "-")), []).append(r)
    out = ["", "## Summary per algorithm variant and checkpoint", "",
           "Meta-World target: 90% success; locomotion target: final return >= 1.3x the BC policy's. Medians over "
           "the seeds that reached the target.", "",
           "| task | algo | BC recipe | seeds | reached target | start | final | to 90%: env steps, median (min-max) | to 90%: s, median | gains |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for (task, name, recipe), rs in groups.items():
        seeds = ",".join(str(r["seed"]) for r in rs)
        if is_locomotion(task):
            gains = [r["final_return"] / r["start_return"] - 1 for r in rs]
            out.append(f"| {task} | {name} | {recipe} | {seeds} | {sum(g >= 0.3 for g in gains)}/{len(rs)} | "
                       f"{np.mean([r['start_return'] for r in rs]):.0f} | {np.mean([r['final_return'] for r in rs]):.0f} | - | - | "
                       + ", ".join(f"{g:+.0%}" for g in gains) + " |")
            continue
        hit = [r for r in rs if r["env_steps_to_90"] is not None]
        steps = sorted(r["env_steps_to_90"] for r in hit)
        span = f"{int(np.median(steps))} ({steps[0]}-{steps[-1]})" if steps else "-"
        secs = f"{np.median([r['wallclock_s_to_90'] for r in hit]):.0f}" if hit else "-"
        out.append(f"| {task} | {name} | {recipe} | {seeds} | {len(hit)}/{len(rs)} | "
                   f"{np.mean([r['start_success'] for r in rs]):.2f} | {np.mean([r['final_success'] for r in rs]):.2f} | "
                   f"{span} | {secs} | - |")
    return out


def _plot_label(r: dict) -> str:
    """'fpo [clip05_mc8]', with the BC recipe when it is not the suite's usual one (10 demos, or the SAC expert's)."""
    other = r.get("bc_recipe") and not str(r["bc_recipe"]).startswith(("d10_", "sac"))
    return _name(r) + (f" ({r['bc_recipe']})" if other else "")


def _dash(v: object) -> str:
    return "-" if v is None else str(v)  # 0 env steps to 90% is a value, not a miss


def write_report(data: dict, out: Path) -> None:
    rows, meta = data["rows"], data.get("meta", {})
    lines = ["# On-policy RL fine-tuning on Meta-World and MuJoCo locomotion (DPPO, FPO, ReinFlow)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])),
             f"Machine: {meta.get('machine', '-')}; versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
             "", "Start: weak BC checkpoints named by their recipe `d<demos>_n<demo noise>_t<detour prob>_s<BC steps>` "
             "(noisy scripted demonstrations; BC steps chosen per family so that BC success is in 20-60%); diffusion for "
             "DPPO, flow for FPO and ReinFlow; `BC success` on 50 episodes. Reward: 1 for the chunk in which Meta-World "
             "reports success (episodes end there), `preset=metaworld` (+ FPO clip 0.05, ReinFlow clip 0.05 and actor lr "
             "1e-4, DPPO minibatch 1500). Success: 20 held-out episodes of the policy being fine-tuned, sampled as it is "
             "saved (seeded random initial noise). `overrides`: the row's extra command-line overrides "
             "(`ppo.stop_success=0.9` ends a run once two evaluations in a row reach 90%).", "",
             "| task | algo | seed | BC recipe | BC success | start | final | env steps | to 90% (env steps) | to 90% (s) | wall s | overrides |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mw = [r for r in rows if not is_locomotion(r["task"])]
    for r in sorted(mw, key=lambda r: (r["task"], r["algo"], r.get("tag", ""), r["seed"])):
        lines.append(f"| {r['task']} | {_name(r)} | {r['seed']} | {r.get('bc_recipe', '-')} | {r['bc_success_50ep']:.2f} | "
                     f"{r['start_success']:.2f} | "
                     f"{r['final_success']:.2f} | {r['env_steps']} | {_dash(r['env_steps_to_90'])} | "
                     f"{_dash(r['wallclock_s_to_90'])} | {r['wallclock_s']:.0f} | {' '.join(r.get('overrides', [])) or '-'} |")
    lines += summary(rows)
    loco = [r for r in rows if is_locomotion(r["task"])]
    if loco:
        lines += ["", "## Locomotion (return; `preset=locomotion`)", "",
                  "Start: BC on episodes of the toolkit's SAC \"medium\" expert (`genpolicy data expert`; recipe in the "
                  "JSON). Return: mean undiscounted return over the evaluation episodes; gain = final / start - 1. "
                  "s/iteration: wall-clock per fine-tuning iteration (rollout + update; evaluations included).", "",
                  "| task | algo | seed | start return | final return | gain | best return | env steps | s/iteration | wall s | overrides |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(loco, key=lambda r: (r["task"], r["algo"], r.get("tag", ""), r["seed"])):
            best = max(p["mean_return"] for p in r["curve"])
            lines.append(f"| {r['task']} | {_name(r)} | {r['seed']} | {r['start_return']:.0f} | {r['final_return']:.0f} | "
                         f"{r['final_return'] / r['start_return'] - 1:+.0%} | {best:.0f} | {r['env_steps']} | "
                         f"{r['wallclock_s'] / max(1, r['curve'][-1]['iteration']):.1f} | {r['wallclock_s']:.0f} | "
                         f"{' '.join(r.get('overrides', [])) or '-'} |")
        for task in sorted({r["task"] for r in loco}):
            per = {a: [r["wallclock_s"] / max(1, r["curve"][-1]["iteration"]) for r in loco
                       if r["task"] == task and r["algo"] == a and not r.get("tag")] for a in ("reinflow", "dppo")}
            if per["reinflow"] and per["dppo"]:
                ratio = (sum(per["reinflow"]) / len(per["reinflow"])) / (sum(per["dppo"]) / len(per["dppo"]))
                lines.append(f"\n{task}: ReinFlow's wall-clock per iteration is {ratio:.2f}x DPPO's in the same run "
                             f"({1 - ratio:.0%} less; the ReinFlow paper reports 82.6% less on Gym, against DPPO with 20 DDPM "
                             f"steps of which 10 are fine-tuned; DPPO here: DDIM-10, last 5 fine-tuned; ReinFlow: Euler-4).")
    lines += ["", "![success vs env steps](finetune_onpolicy.png)", ""]
    (out / "finetune_onpolicy.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    # one row of panels per suite; one colour per algorithm variant and checkpoint, one line style per seed
    suites = [sorted({r["task"] for r in rows if is_locomotion(r["task"]) == loco}) for loco in (False, True)]
    suites = [ts for ts in suites if ts]
    ncol = max([1] + [len(ts) for ts in suites])
    fig, axes = plt.subplots(max(1, len(suites)), ncol, figsize=(5.5 * ncol, 4.2 * max(1, len(suites))), squeeze=False)
    labels = sorted({_plot_label(r) for r in rows})  # the same colour for a label in every panel
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, task in [(axes[i][j], t) for i, ts in enumerate(suites) for j, t in enumerate(ts)]:
        ax.set_visible(True)
        groups: dict[str, list[dict]] = {}
        for r in sorted([r for r in rows if r["task"] == task], key=lambda r: (r["algo"], r.get("tag", ""), r["bc_recipe"], r["seed"])):
            groups.setdefault(_plot_label(r), []).append(r)
        key = "mean_return" if is_locomotion(task) else "success_rate"
        for label, rs in groups.items():
            for j, r in enumerate(rs):
                ax.plot([p["env_steps"] for p in r["curve"]], [p[key] for p in r["curve"]], alpha=0.8,
                        color=f"C{labels.index(label) % 10}", ls=["-", "--", ":"][r["seed"] % 3],
                        label=f"{label}, n={len(rs)}" if j == 0 else None)
        ax.set_title(task.split("/")[-1])
        ax.set_xlabel("env steps")
        if is_locomotion(task):
            ax.set_ylabel("return")
        else:
            ax.axhline(0.9, color="gray", ls="--", lw=0.8)
            ax.set_ylabel("success")
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "finetune_onpolicy.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
