"""Controller benchmark: loop jitter while inference runs, inference latency against the control period, chunk-boundary
jumps with and without blending, and success on the simulated robot with 50 ms of injected latency, with and without
latency handling.

Every row is `genpolicy deploy` (real clock, inference on a thread, safety filter on) on the simulated Meta-World robot
with a BC flow checkpoint (trained once here if --ckpt is not given: 50 scripted demos, 2000 steps, as `genpolicy demo`).
Writes benchmarks/results/controller.md and .json (a list `rows`).

    .venv/bin/python benchmarks/controller.py                 # ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/controller.py --episodes 5    # quick look
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

from genpolicy.config import (ControllerConfig, DataConfig, DeployConfig, EvalConfig, OptimConfig, PolicyConfig,  # noqa: E402
                              RunConfig, TaskConfig, TrainConfig)
from genpolicy.real_robot.deploy import deploy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bc_metaworld import versions  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TASK = "metaworld/drawer-open-v3"


def bc_checkpoint(work: Path) -> str:
    info = work / "bc.json"
    if info.exists():
        return json.loads(info.read_text())["ckpt"]
    from genpolicy.datasets.collect import generate
    from genpolicy.training.bc import train

    data = work / "demos.zarr"
    if not data.exists():
        generate(TASK, 50, seed=0, progress=False).save(data)
    cfg = TrainConfig(task=TaskConfig(name=TASK), policy=PolicyConfig(type="flow", sampler="euler", steps=10),
                      data=DataConfig(path=str(data)), train=OptimConfig(steps=2000, batch_size=256),
                      eval=EvalConfig(n_episodes=20, n_envs=10, n_videos=0),
                      run=RunConfig(dir=str(work / "bc"), progress=False, log_every=500, ckpt_every=10**9))
    res = train(cfg)
    info.write_text(json.dumps({"ckpt": res["final_checkpoint"], "bc_success_20ep": res["eval"]["success_rate"]}))
    return res["final_checkpoint"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--work", default="runs/bench_controller")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = args.ckpt or bc_checkpoint(work)
    settings = [dict(group="rate", rate_hz=r, blending=b, inject_ms=0.0, latency_handling=True)
                for r in (30.0, 50.0, 100.0) for b in ("latest", "blend")]
    settings += [dict(group="latency", rate_hz=30.0, blending="blend", inject_ms=ms, latency_handling=h)
                 for ms in (50.0, 150.0) for h in (True, False)]
    rows = []
    for i, s in enumerate(settings):
        cfg = DeployConfig(ckpt=ckpt, n_episodes=args.episodes, record=False, inject_latency_ms=s["inject_ms"],
                           controller=ControllerConfig(rate_hz=s["rate_hz"], blending=s["blending"],
                                                       latency_handling=s["latency_handling"]),
                           run=RunConfig(dir=str(work / f"row{i}"), progress=False))
        t0 = time.time()
        res = deploy(cfg)
        row = {"group": s["group"], "rate_hz": s["rate_hz"], "blending": s["blending"] != "latest",
               "blending_mode": s["blending"], "injected_latency_ms": s["inject_ms"],
               "latency_handling": s["latency_handling"], "jitter_p50_ms": res["jitter_p50_ms"],
               "jitter_p99_ms": res["jitter_p99_ms"], "overruns": res["overruns"],
               "max_boundary_jump": res["max_boundary_jump"], "mean_boundary_jump": res["mean_boundary_jump"],
               "p95_boundary_jump": res["p95_boundary_jump"], "max_boundary_step_change": res["max_boundary_step_change"],
               "mean_boundary_step_change": res["mean_boundary_step_change"], "latency_ms": res["latency_ms_p50"],
               "latency_p99_ms": res["latency_ms_p99"], "period_ms": 1e3 / s["rate_hz"],
               "success_rate": res["success_rate"], "n_episodes": res["n_episodes"],
               "late_dropped": res["late_dropped"], "clamps": res["clamps"], "wall_s": round(time.time() - t0, 1)}
        rows.append(row)
        print(f"[controller] {row['group']} {row['rate_hz']:.0f} Hz {row['blending_mode']:6s} +{row['injected_latency_ms']:.0f} ms "
              f"handling={row['latency_handling']}: jitter p50 {row['jitter_p50_ms']:.2f} p99 {row['jitter_p99_ms']:.2f} ms, "
              f"overruns {row['overruns']}, jump {row['max_boundary_jump']:.3f}, latency {row['latency_ms']:.1f} ms, "
              f"success {row['success_rate']:.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": ".venv/bin/python " + " ".join(sys.argv), "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs",
            "versions": versions(), "task": TASK, "checkpoint": ckpt, "episodes_per_row": args.episodes,
            "episode_seeds": f"{DeployConfig.seed}..{DeployConfig.seed + args.episodes - 1}", "torch_threads": args.threads,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    (out / "controller.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    write_report(rows, meta, out)


def write_report(rows: list[dict], meta: dict, out: Path) -> None:
    lines = ["# Controller: cadence, latency, chunk boundaries, latency handling", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; torch threads {meta['torch_threads']}; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "  ",
             f"Task: {meta['task']} as the simulated robot (one env step per control period, real clock), BC flow policy "
             f"(Euler 10, H=16, Ta=8), inference on a thread, safety filter on; {meta['episodes_per_row']} episodes per row, "
             f"seeds {meta['episode_seeds']}. Jitter = wake-up lateness of each tick. Boundary jump = for the blend_steps (4) "
             "steps after a newer chunk takes over, the change of the sent action in excess of the outgoing plan's own "
             "change, |(a_t - a_(t-1)) - (old_t - old_(t-1))|_inf: the jump the switch adds (same window for every mode). "
             "Raw change = |a_t - a_(t-1)|_inf at the takeover step, which also holds the policy's own motion "
             "(Meta-World BC actions move up to the velocity limit, 0.8 per step at 30 Hz).", "",
             "| rate Hz | blending | + latency ms | latency handling | jitter p50 ms | jitter p99 ms | overruns | "
             "boundary jump max / p95 / mean | raw change max / mean | inference ms (p50 / p99) | period ms | success |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rate_hz']:.0f} | {r['blending_mode']} | {r['injected_latency_ms']:.0f} | "
                     f"{'on' if r['latency_handling'] else 'off'} | {r['jitter_p50_ms']:.2f} | {r['jitter_p99_ms']:.2f} | "
                     f"{r['overruns']} | {r['max_boundary_jump']:.3f} / {r['p95_boundary_jump']:.3f} / {r['mean_boundary_jump']:.3f} | "
                     f"{r['max_boundary_step_change']:.3f} / {r['mean_boundary_step_change']:.3f} | "
                     f"{r['latency_ms']:.1f} / {r['latency_p99_ms']:.1f} | "
                     f"{r['period_ms']:.1f} | {r['success_rate']:.2f} |")
    rate = [r for r in rows if r["group"] == "rate"]
    pairs = [(a, b) for a in rate if not a["blending"] for b in rate if b["blending"] and b["rate_hz"] == a["rate_hz"]]
    lines += ["", "Blending vs none at the same rate, boundary jump latest / blend (max, p95, mean): " + "; ".join(
        f"{a['rate_hz']:.0f} Hz {a['max_boundary_jump'] / max(b['max_boundary_jump'], 1e-9):.1f}x, "
        f"{a['p95_boundary_jump'] / max(b['p95_boundary_jump'], 1e-9):.1f}x, "
        f"{a['mean_boundary_jump'] / max(b['mean_boundary_jump'], 1e-9):.1f}x" for a, b in pairs), ""]
    (out / "controller.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
