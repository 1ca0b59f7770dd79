"""Camera behaviour cloning on Meta-World: 50 scripted demos rendered offscreen (EGL), a policy that sees only the
camera (GroupNorm ResNet-18 or, with --encoder conv, four small convolutions; spatial softmax, random-crop
augmentation, a stack of To frames) plus proprioception
(hand xyz + gripper, now and one frame back). Evaluated on fresh layouts from the rendered camera.

Baseline in the same run: the same proprioception with no camera (it cannot see where the object is), so the gap
is what the images carry.

Writes benchmarks/results/bc_images.md and bc_images.json (a list `rows`, one per task, policy and seed).
Finished rows are skipped when the script is run again, so an interrupted run resumes.

    .venv/bin/python benchmarks/bc_images.py                          # drawer-open and button-press-topdown, seed 0
    .venv/bin/python benchmarks/bc_images.py --policies camera --encoder conv --steps 6000 --seeds 0 1  # the target
    .venv/bin/python benchmarks/bc_images.py --tasks metaworld/drawer-open-v3 --steps 300 --episodes 10  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from genpolicy.protocol import append_dict_rows  # noqa: E402
from genpolicy.config import DataConfig, EvalConfig, OptimConfig, PolicyConfig, RunConfig, TaskConfig, TrainConfig  # noqa: E402
from genpolicy.datasets.collect import generate  # noqa: E402
from genpolicy.datasets.replay_buffer import ReplayBuffer  # noqa: E402
from genpolicy.training.bc import train  # noqa: E402

TASKS = ["metaworld/drawer-open-v3", "metaworld/button-press-topdown-v3"]
OUT = Path(__file__).resolve().parent / "results"
# Meta-World state: [0:3] hand xyz, [3] gripper, [4:18] objects, [18:22] previous hand xyz + gripper, ... goal.
PROPRIO = [0, 1, 2, 3, 18, 19, 20, 21]



def _row_key(r: dict) -> tuple:
    return r["task"], r["policy"], r["seed"], r["train_steps"], r.get("image_size"), _encoder(r)

def run_one(task: str, kind: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    """Train one policy (kind = camera | proprio_only) on the rendered demos and evaluate its final EMA weights."""
    name = task.replace("/", "_")
    data = work / f"{name}_images{args.image_size}_d{args.demos}_seed{seed}.zarr"
    t_data = 0.0
    if not data.exists():
        t0 = time.time()
        generate(task, args.demos, seed=seed * 1000, images=True, image_size=args.image_size, progress=True).save(data)
        t_data = time.time() - t0
    images = kind == "camera"
    policy = PolicyConfig(type="flow", sampler="euler", steps=10, n_obs_steps=2, horizon=16, n_action_steps=8,
                          state_indices=PROPRIO, image_size=args.image_size, crop_ratio=0.9,
                          image_encoder=args.encoder)
    enc = "" if args.encoder == "resnet18" or not images else f"_{args.encoder}"
    run_dir = work / f"{name}_{kind}{enc}_px{args.image_size}_s{args.steps}_seed{seed}"
    continued_from = None
    if args.continue_from and not run_dir.exists():
        # start from a finished shorter run's checkpoint (its EMA, optimiser and step); the cosine schedule is
        # re-stretched to the new total, so the learning rate rises again from where the new schedule is
        prev = work / f"{name}_{kind}{enc}_px{args.image_size}_s{args.continue_from}_seed{seed}"
        if not (prev / "checkpoints").exists():
            raise SystemExit(f"--continue-from {args.continue_from}: no run at {prev}")
        shutil.copytree(prev, run_dir, ignore=shutil.ignore_patterns("eval", "tb"))
        continued_from = args.continue_from
    cfg = TrainConfig(task=TaskConfig(name=task, images=images), policy=policy,
                      data=DataConfig(path=str(data), seed=seed),
                      train=OptimConfig(steps=args.steps, batch_size=args.batch if images else 256),
                      eval=EvalConfig(n_episodes=args.episodes, n_envs=10, n_videos=2, every=0),
                      run=RunConfig(dir=str(run_dir), seed=seed, log_every=100, ckpt_every=250,
                                    resume=(run_dir / "checkpoints").exists(),
                                    progress=True))
    t0 = time.time()
    res = train(cfg)
    ev = res["eval"]
    train_min = (time.time() - t0 - ev["eval_seconds"]) / 60
    n_frames = ReplayBuffer.load(data, keys=["action", "state"]).n_steps
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["steps_per_s"] for m in logs if "steps_per_s" in m]
    if continued_from is not None:  # add the shorter run's training time
        prev_rows = json.loads(Path(args.out + ".json").read_text())["rows"]
        train_min += next(r["train_minutes"] for r in prev_rows if (r["task"], r["policy"], r["seed"], r["train_steps"],
                          _encoder(r)) == (task, kind, seed, continued_from, args.encoder))
    return {"task": task, "policy": kind, "seed": seed, "success_rate": ev["success_rate"],
            "n_episodes": ev["n_episodes"], "train_minutes": round(train_min, 2),
            "median_steps_per_s": round(float(sorted(rates)[len(rates) // 2]), 2) if rates else None, "train_steps": args.steps,
            "encoder": args.encoder if images else None, "batch_size": cfg.train.batch_size, "image_size": args.image_size, "n_demos": args.demos, "demo_frames": n_frames,
            "render_seconds": round(t_data, 1) if t_data else None, "eval_seconds": ev["eval_seconds"],
            "sampler": f"{ev['sampler']}-{ev['steps']}", "run_dir": str(run_dir), "continued_from": continued_from,
            "success_definition": ev["success_definition"]}


def _encoder(row: dict) -> str | None:
    """A row's image trunk: None without a camera; rows from before the column existed used ResNet-18."""
    return row.get("encoder") or "resnet18" if row["policy"] == "camera" else None


def write_report(data: dict, out: Path) -> None:
    rows, meta = data["rows"], data.get("meta", {})
    s = meta.get("setup", {})
    lines = ["# Behaviour cloning from camera observations (Meta-World)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])),
             f"Machine: {meta.get('machine', '?')}, torch threads {s.get('threads', '?')}; versions: "
             + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
             f"Setup: {s.get('demos')} clean scripted demos per task, rendered from Meta-World's `corner` camera at "
             f"{s.get('image_size')}x{s.get('image_size')} (EGL, software). Policy: flow matching, Euler 10 steps, To=2 stacked frames, H=16, Ta=8; image encoder "
             "(column `encoder`) from scratch: `resnet18` = GroupNorm ResNet-18 (11M parameters), `conv` = four 3x3 "
             "convolutions of 32 channels with GroupNorm (34k parameters, `policy.image_encoder=conv`), then spatial "
             "softmax (32 keypoints); random crops of 90% of the side when training, "
             f"centre crop at evaluation; state input = proprioception only (Meta-World state indices {PROPRIO}: hand "
             "xyz + gripper, now and one frame back), so object and goal positions come from the camera alone. "
             f"Camera policies: batch in the table; `proprio_only` baseline: the same data and proprioception, "
             "no camera, batch 256. Success = Meta-World's `info['success']` at any step, final EMA weights, "
             "evaluation layouts sampled fresh (disjoint from the demos).", "",
             "Train minutes are wall-clock on this 2-core machine while other jobs shared it (the first drawer-open run "
             "was also paused for ~12 min); `steps/s` is the median logged training rate.", "",
             "| task | policy | encoder | px | batch | seed | success | episodes | train steps | train min | steps/s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["policy"], r["seed"])):
        enc = _encoder(r) or "-"
        lines.append(f"| {r['task']} | {r['policy']} | {enc} | {r.get('image_size', 84)} | {r['batch_size']} | {r['seed']} | {r['success_rate']:.2f} | {r['n_episodes']} | "
                     f"{r['train_steps']}{' (from ' + str(r['continued_from']) + ')' if r.get('continued_from') else ''} | "
                     f"{r['train_minutes']:.1f} | {r.get('median_steps_per_s') if r.get('median_steps_per_s') is not None else '-'} | {r['eval_seconds']:.0f} |")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["policy"] == "camera":
            groups.setdefault((r["task"], _encoder(r), r["train_steps"]), []).append(r)
    lines += ["", "## Against the target (>= 0.80 on two Meta-World tasks, camera + proprioception)", "",
              "| task | encoder | train steps | seeds | success per seed | mean | >= 0.80 |", "|---|---|---|---|---|---|---|"]
    for (task, enc, steps), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        mean = sum(r["success_rate"] for r in rs) / len(rs)
        seeds = ", ".join(str(r["seed"]) for r in rs)
        per_seed = ", ".join(f"{r['success_rate']:.2f}" for r in rs)
        lines.append(f"| {task} | {enc} | {steps} | {seeds} | {per_seed} | {mean:.2f} | {'yes' if mean >= 0.8 else 'no'} |")
    lines += ["", "Rollout videos: `<run_dir>/eval/*.mp4` of each row's run (runs/ is not committed)."]
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--policies", nargs="+", default=["camera", "proprio_only"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=32, help="camera policies' batch (each sample holds To frames)")
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--encoder", default="resnet18", choices=["resnet18", "conv"], help="camera policies' image trunk")
    ap.add_argument("--image-size", type=int, default=64, help="rendered frames, square pixels (crops are 90%%)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--continue-from", type=int, default=0,
                    help="train on from the finished run with this many steps (same task, kind, size, seed)")
    ap.add_argument("--work", default="runs/bench_images")
    ap.add_argument("--out", default=str(OUT / "bc_images"))
    ap.add_argument("--report", action="store_true", help="only rewrite the markdown from the JSON")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    js, md = Path(args.out + ".json"), Path(args.out + ".md")
    if args.report:
        write_report(json.loads(js.read_text()), md)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setup = {"demos": args.demos, "image_size": args.image_size, "batch": args.batch, "threads": torch.get_num_threads(), "episodes": args.episodes,
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    for seed in args.seeds:
        for task in args.tasks:
            for kind in args.policies:
                done = json.loads(js.read_text())["rows"] if js.exists() else []
                enc = args.encoder if kind == "camera" else None
                if any((r["task"], r["policy"], r["seed"], r["train_steps"], r.get("image_size"), _encoder(r)) ==
                       (task, kind, seed, args.steps, args.image_size, enc)
                       for r in done):
                    continue
                print(f"[bench] {task} {kind} seed {seed}", flush=True)
                row = run_one(task, kind, seed, args, work)
                print(f"[bench]   success {row['success_rate']:.2f} ({row['train_minutes']:.1f} min)", flush=True)
                append_dict_rows(js, [row], _row_key, {"setup": setup})
                write_report(json.loads(js.read_text()), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
