"""Fine-tuning camera policies under the protocol (genpolicy/protocol.py): all five algorithms from weak camera BC starts.

Stage `bc`: camera BC (Meta-World `corner` camera, To=2 stacked frames + proprioception only, so object and goal come
from the pixels) on nested regimes of clean scripted demonstrations, one fixed BC budget, the conv trunk and ResNet-18
(`--encoders`) on the same data and budget (the bc_images rerun). Each cell is scored on the protocol's 100 test
episodes from zero and from random initial noise; a cell with both in [0.1, 0.6] is a weak start.

Stage `finetune`: from each task's weak start (the fewest demos whose seed-0 cell of `--start-encoder` qualifies),
each algorithm runs with the suite's shipped preset, a fixed env-step budget (the same for every algorithm of a suite,
fixed here before running), `finetune.encoder_mode` and a seed: nothing else. Test success on the same 100 test
episodes at 1/4, 1/2 and all of the budget. Rows (one per algo, task, seed, encoder mode) carry algo, task, seed,
encoder, encoder_mode, env_steps, test_episodes, start_test_success (zero / random noise), test_success, test_curve,
env_steps_per_s and wallclock_s; a finished row is never run again, an interrupted one resumes only with the same
overrides (protocol.resume_or_restart).

Writes benchmarks/results/finetune_pixels.md/.json/.png (`--quick`: toy/bimodal-right with its top view, tiny
budgets, to /tmp/finetune_pixels_quick.*).

    python benchmarks/finetune_pixels.py --stage bc --seeds 0                 # camera BC cells (both encoders)
    python benchmarks/finetune_pixels.py --stage finetune --seeds 0 1 2       # five algorithms, frozen encoder
    python benchmarks/finetune_pixels.py --stage finetune --algos dsrl --encoder-modes finetuned --seeds 0 1 2
    python benchmarks/finetune_pixels.py --report
    python benchmarks/finetune_pixels.py --quick                              # the whole pipeline on the toy, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from genpolicy.protocol import SEEDS, append_dict_rows, budget_points  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
ALGOS = ["dsrl", "expo", "reinflow", "fpo", "dppo"]
PROPRIO = {"metaworld": [0, 1, 2, 3, 18, 19, 20, 21], "toy": []}  # hand xyz + gripper, now and one frame back
# per suite: tasks, demo regimes, BC budget, frame size, preset and the env-step budget of every fine-tuning row
SUITES = {
    "metaworld": {"tasks": ["metaworld/drawer-open-v3", "metaworld/button-press-topdown-v3"], "demos": [3, 5, 10],
                  "bc_steps": 2500, "image_size": 64, "preset": "metaworld", "budget": 100_000, "test_episodes": 100,
                  "bc_batch": 32},
    # --quick: the pipeline end to end on the toy (a check of the script, not a result)
    "toy": {"tasks": ["toy/bimodal-right"], "demos": [40], "bc_steps": 300, "image_size": 24, "preset": "toy",
            "budget": 4_096, "test_episodes": 100, "bc_batch": 64},
}


def suite_of(task: str) -> str:
    return task.split("/", 1)[0]


def bc_key(r: dict) -> tuple:
    return r["kind"], r["task"], r["n_demos"], r["seed"], r["encoder"], r["family"]


def ft_key(r: dict) -> tuple:
    return r["kind"], r["task"], r["algo"], r["seed"], r["encoder"], r["encoder_mode"], r["env_steps_budget"]


def load(js: Path) -> dict:
    return json.loads(js.read_text()) if js.exists() else {"rows": []}


def bc_cell(task: str, n_demos: int, seed: int, encoder: str, family: str, work: Path) -> dict:
    """Camera BC on rendered demos (shared by both encoders: same data and budget), scored on the test split."""
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, PolicyConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.protocol import start_baselines
    from genpolicy.training.bc import train
    from genpolicy.training.checkpoint import load_policy

    s = SUITES[suite_of(task)]
    name = task.replace("/", "_")
    src = "toy/bimodal" if task == "toy/bimodal-right" else task  # the toy's demos go both ways (a two-way start)
    data = work / f"{name}_px{s['image_size']}_d{n_demos}_seed{seed}.zarr"
    if not data.exists():
        tmp = data.with_name(data.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        generate(src, n_demos, seed=SEEDS.demos.start + 10_000 * seed, images=True, image_size=s["image_size"],
                 progress=False).save(tmp)
        tmp.rename(data)
    run_dir = work / f"{name}_d{n_demos}_{encoder}_{family}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted cell trains again, so its timing is whole
    pol = PolicyConfig(type=family, sampler="euler" if family == "flow" else "ddim", steps=10 if suite_of(task) == "metaworld" else 5, n_obs_steps=2,
                       horizon=16 if suite_of(task) == "metaworld" else 8,
                       n_action_steps=8 if suite_of(task) == "metaworld" else 4, image_size=s["image_size"],
                       state_indices=PROPRIO[suite_of(task)], image_encoder=encoder,
                       **({} if suite_of(task) == "metaworld" else {"width": 128, "depth": 2, "time_dim": 32,
                                                                     "shortcut": False, "image_feature_dim": 16}))
    cfg = TrainConfig(task=TaskConfig(name=src, images=True), policy=pol, data=DataConfig(path=str(data), seed=seed),
                      train=OptimConfig(steps=s["bc_steps"], batch_size=s["bc_batch"]),
                      eval=EvalConfig(n_episodes=4, n_envs=4, n_videos=0, every=0),
                      run=RunConfig(dir=str(run_dir), seed=seed, log_every=500, ckpt_every=10**9, progress=False))
    t0 = time.time()
    res = train(cfg)
    minutes = (time.time() - t0 - res["eval"].get("eval_seconds", 0.0)) / 60
    t1 = time.time()
    b = start_baselines(load_policy(res["final_checkpoint"]), task, s["test_episodes"], n_envs=10)
    return {"kind": "bc", "task": task, "n_demos": n_demos, "seed": seed, "encoder": encoder, "family": family,
            "image_size": s["image_size"], "bc_steps": s["bc_steps"], "batch_size": s["bc_batch"],
            "test_success_zero_noise": b.success_zero_noise, "test_success_random_noise": b.success_random_noise,
            "test_episodes": b.test_episodes, "weak_start": b.qualifies, "train_minutes": round(minutes, 2),
            "test_eval_s": round(time.time() - t1, 1), "checkpoint": str(res["final_checkpoint"])}


def pick_start(task: str, rows: list[dict], encoder: str, family: str) -> dict:
    """The fewest demos whose seed-0 flow cell qualifies; DPPO's start is the diffusion cell on the same demos."""
    cells = sorted((r for r in rows if r["kind"] == "bc" and r["task"] == task and r["seed"] == 0
                    and r["encoder"] == encoder and r["family"] == "flow"), key=lambda r: r["n_demos"])
    for r in cells:
        if r["weak_start"] or suite_of(task) == "toy":  # the toy's two-way start is weak by construction (~0.5)
            if family == "flow":
                return r
            twin = next((t for t in rows if t["kind"] == "bc" and bc_key(t) == bc_key({**r, "family": family})), None)
            if twin is None:
                raise SystemExit(f"{task}: no {family} camera cell with {r['n_demos']} demos: run --stage bc")
            return twin
    raise SystemExit(f"{task}: no weak {encoder} camera start among {[r['n_demos'] for r in cells]} demos: "
                     "run --stage bc first (or with more regimes)")


def finetune_row(task: str, algo: str, seed: int, mode: str, start: dict, work: Path) -> dict:
    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig
    from genpolicy.finetune.ppo import finetune
    from genpolicy.protocol import resume_or_restart
    from genpolicy.training.checkpoint import read_config

    s = SUITES[suite_of(task)]
    run_dir = work / f"{task.replace('/', '_')}_{algo}_{start['encoder']}_{mode}_b{s['budget']}_seed{seed}"
    base = [f"algo={algo}", f"ckpt={start['checkpoint']}", f"task={task}", f"preset={s['preset']}",
            f"run.seed={seed}", f"run.dir={run_dir}", "run.progress=false", f"test.episodes={s['test_episodes']}",
            f"encoder_mode={mode}"]
    if algo in ("dsrl", "expo"):
        budget = [f"offpolicy.env_steps={s['budget']}"]
    else:  # iterations that cover the budget; test points at the same fractions of it
        probe = compose("finetune", base, FinetuneConfig)
        ta = read_config(start["checkpoint"])["policy"]["config"]["n_action_steps"]
        budget = [f"ppo.iterations={-(-s['budget'] // (probe.ppo.n_envs * probe.ppo.n_steps * ta))}"]
    overrides = base + budget
    resume = resume_or_restart(run_dir, overrides)
    res = finetune(compose("finetune", overrides + (["run.resume=true"] if resume else []), FinetuneConfig))
    pts = res["test_curve"]
    return {"kind": "finetune", "task": task, "algo": algo, "seed": seed, "encoder": start["encoder"],
            "encoder_mode": mode, "env_steps_budget": s["budget"], "env_steps": res["env_steps"],
            "test_episodes": pts[-1]["test_episodes"], "n_demos": start["n_demos"],
            "start_test_success": {"zero_noise": start["test_success_zero_noise"],
                                   "random_noise": start["test_success_random_noise"]},
            "test_success": pts[-1]["test_success"],
            "test_curve": [[p, c["test_success"]] for p, c in zip(budget_points(s["budget"]), pts)],
            "env_steps_per_s": round(res["env_steps"] / max(res["wallclock_s"], 1e-9), 2),
            "wallclock_s": res["wallclock_s"], "preset": s["preset"], "overrides": overrides,
            "start_checkpoint": start["checkpoint"], "run_dir": str(run_dir)}


def write_report(js: Path, md: Path) -> None:
    data = load(js)
    rows, meta = data["rows"], data.get("meta", {})
    bc = [r for r in rows if r["kind"] == "bc"]
    ft = [r for r in rows if r["kind"] == "finetune"]
    lines = ["# Fine-tuning camera policies (test split)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])), "",
             f"Success: the protocol's held-out test episodes (seeds from {SEEDS.test.start}); starts from zero / "
             "random initial noise. Camera + proprioception only (Meta-World: `corner` camera, hand and gripper now "
             "and one frame back). Frames rendered on demand (envs/wrappers.py).", "",
             "## Camera BC cells", "",
             "| task | demos | family | encoder | seed | zero noise | random noise | weak | train min |",
             "|---|---:|---|---|---:|---:|---:|---|---:|"]
    for r in sorted(bc, key=bc_key):
        lines.append(f"| {r['task']} | {r['n_demos']} | {r['family']} | {r['encoder']} | {r['seed']} | "
                     f"{r['test_success_zero_noise']:.2f} "
                     f"| {r['test_success_random_noise']:.2f} | {'yes' if r['weak_start'] else 'no'} | "
                     f"{r['train_minutes']:.1f} |")
    lines += ["", "## Fine-tuning rows", "",
              "| task | algo | encoder | mode | seed | start (zero/random) | test success | gain vs random | curve | "
              "env steps | steps/s | wall s |", "|---|---|---|---|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in sorted(ft, key=ft_key):
        st = r["start_test_success"]
        curve = ", ".join(f"{p:,}: {v:.2f}" for p, v in r["test_curve"])
        lines.append(f"| {r['task']} | {r['algo']} | {r['encoder']} | {r['encoder_mode']} | {r['seed']} | "
                     f"{st['zero_noise']:.2f}/{st['random_noise']:.2f} | {r['test_success']:.2f} | "
                     f"{r['test_success'] - st['random_noise']:+.2f} | {curve} | {r['env_steps']} | "
                     f"{r['env_steps_per_s']:.0f} | {r['wallclock_s']:.0f} |")
    md.write_text("\n".join(lines) + "\n")
    if ft:
        _plot(ft, md.with_suffix(".png"))


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r["task"] == task):
            xs = [0] + [p for p, _ in r["test_curve"]]
            ys = [r["start_test_success"]["random_noise"]] + [v for _, v in r["test_curve"]]
            ax.plot(xs, ys, marker="o", label=f"{r['algo']} {r['encoder_mode']} s{r['seed']}")
        ax.set(title=task, xlabel="env steps", ylabel="test success", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["bc", "finetune", "all"], default="all")
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--algos", nargs="+", default=ALGOS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--encoders", nargs="+", default=["conv", "resnet18"], help="BC cells' image trunks")
    ap.add_argument("--start-encoder", default="conv", help="the trunk of the starts fine-tuning uses")
    ap.add_argument("--encoder-modes", nargs="+", default=["frozen"], choices=["frozen", "finetuned"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="toy/bimodal-right, tiny budgets, outputs under /tmp")
    ap.add_argument("--work", default="runs/bench_finetune_pixels")
    ap.add_argument("--out", default=str(OUT / "finetune_pixels"))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(args.threads, 1))
    if args.quick:
        args.tasks = args.tasks or SUITES["toy"]["tasks"]
        args.encoders, args.algos = ["conv"], [a for a in args.algos if a in ("dsrl", "reinflow")]
        args.work, args.out = "/tmp/finetune_pixels_quick/work", "/tmp/finetune_pixels_quick/finetune_pixels"
    tasks = args.tasks or SUITES["metaworld"]["tasks"]
    js, md = Path(args.out + ".json"), Path(args.out + ".md")
    if args.report:
        write_report(js, md)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/finetune_pixels.py " + " ".join(sys.argv[1:])
    meta = {"commands": sorted(set(load(js).get("meta", {}).get("commands", []) + [command]))}
    if args.stage in ("bc", "all"):
        for task in tasks:
            for n in SUITES[suite_of(task)]["demos"]:
                # both trunks for flow (the bc_images rerun); the diffusion twin (DPPO's start) with the start trunk
                cells = [(e, "flow") for e in args.encoders] + ([(args.start_encoder, "diffusion")]
                                                                if "dppo" in args.algos else [])
                for enc, fam in cells:
                    seed = 0  # starts are seed-0 cells (the protocol's one start per task)
                    if any(bc_key(r) == ("bc", task, n, seed, enc, fam) for r in load(js)["rows"]):
                        continue
                    print(f"[bc] {task} demos {n} {enc} {fam}", flush=True)
                    append_dict_rows(js, [bc_cell(task, n, seed, enc, fam, work)], bc_key, meta)
                    write_report(js, md)
    if args.stage in ("finetune", "all"):
        for task in tasks:
            for mode in args.encoder_modes:
                for algo in args.algos:
                    start = pick_start(task, load(js)["rows"], args.start_encoder,
                                       "diffusion" if algo == "dppo" else "flow")
                    for seed in args.seeds:
                        key = ("finetune", task, algo, seed, start["encoder"], mode, SUITES[suite_of(task)]["budget"])
                        if any(ft_key(r) == key for r in load(js)["rows"]):
                            continue
                        print(f"[ft] {task} {algo} {mode} seed {seed}", flush=True)
                        append_dict_rows(js, [finetune_row(task, algo, seed, mode, start, work)], ft_key, meta)
                        write_report(js, md)
    write_report(js, md)


if __name__ == "__main__":
    main()
