"""Real-time chunk execution benchmark: every execution mode (sync, latest, blend, ensemble, rtc, bid) at 30, 50 and
100 Hz under 0-300 ms of injected inference latency (+ jitter), on tasks where latency matters.

Each episode is the real control loop (`Controller.run_episode`: schedule, safety filter, watchdog) on the simulated
robot (one env step per control period, zero-order hold), on simulated time: a FakeClock, and SimulatedInference
releasing each chunk at submit + injected latency + uniform jitter + the *measured* wall time of that inference (so
RTC's VJPs and BID's candidates cost what they cost on this CPU). Simulated time makes a 16 s Meta-World episode
take ~2 s of CPU and the grid reproducible up to the measured compute; the loop's own cadence (overruns of the loop
body) is a real-clock property and is measured by benchmarks/controller.py, not here. `overruns` in this table are
chunks that arrived after the plan in force ran out (the robot had to bridge or hold: inference overran the plan).

Policies: BC flow (Euler 10, H=16, Ta=8, residual MLP) trained here from this toolkit's scripted demonstrations
(Meta-World: 50 demos, 2000 steps, as benchmarks/bc_metaworld.py). PushT has no scripted expert: pass a replay buffer
converted from a LeRobot PushT dataset with --pusht-data (`genpolicy data convert`; with images it trains a camera
policy with the small conv encoder -- this path is untested here, no PushT data on this machine), or a checkpoint with
--ckpt pusht/pusht=<dir>; without either, PushT rows are skipped and the report says so.

Episodes use the protocol's test seeds (genpolicy.protocol.SEEDS.test, from 2,000,000), the same for every row.
Rows are appended atomically to benchmarks/results/realtime.json as they finish and skipped on a rerun (resume).
Writes realtime.md, realtime.json, realtime_success.png and a video strip (realtime_strip.png).

    .venv/bin/python benchmarks/realtime.py --pusht-data data/pusht.zarr     # the full grid (see --help)
    .venv/bin/python benchmarks/realtime.py --quick --out /tmp/rt_quick        # minutes: toy task, small grid
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genpolicy.config import EXECUTION_MODES, ControllerConfig, SafetyConfig  # noqa: E402
from genpolicy.policies.realtime import RealtimeSettings  # noqa: E402
from genpolicy.protocol import SEEDS, _meta, _write_atomic  # noqa: E402
from genpolicy.real_robot.clock import FakeClock  # noqa: E402
from genpolicy.real_robot.controller import Controller  # noqa: E402
from genpolicy.real_robot.inference import LocalPolicy, SimulatedInference  # noqa: E402
from genpolicy.real_robot.safety import SafetyFilter  # noqa: E402
from genpolicy.real_robot.sim import SimRobot  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TASKS = ["pusht/pusht", "metaworld/pick-place-v3", "metaworld/peg-insert-side-v3"]
RATES = [30.0, 50.0, 100.0]
LATENCIES = [0.0, 50.0, 100.0, 200.0, 300.0]


# --- policies -------------------------------------------------------------------------------------------------------
def bc_checkpoint(task: str, work: Path, args: argparse.Namespace) -> Optional[tuple[str, str]]:
    """The task's BC flow checkpoint and BID's weak reference ("" when none): given, cached, or trained here (None
    when PushT has no data). The weak policy is the same recipe trained for --bid-weak-frac of the steps (the BID
    paper's weak model is an early checkpoint of the same run; step checkpoints are rotated away here)."""
    given = dict(kv.split("=", 1) for kv in args.ckpt)
    if task in given:
        return given[task], given.get(f"{task}:weak", "")
    images = False
    if task.startswith("pusht/"):
        if not args.pusht_data:
            return None
        from genpolicy.datasets.replay_buffer import ReplayBuffer

        data = Path(args.pusht_data)
        # a LeRobot PushT dataset has the agent position as state and the block only in the image: a camera policy
        images = any(k.startswith("image.") for k in ReplayBuffer.load(data).data)
    else:
        from genpolicy.datasets.collect import generate

        data = work / f"{task.replace('/', '_')}_demos.zarr"
        if not data.exists():
            generate(task, args.demos, seed=0, progress=False).save(data)
    main = _train(task, data, images, args.train_steps, work, args)
    weak_steps = int(args.train_steps * args.bid_weak_frac)
    return main, (_train(task, data, images, weak_steps, work, args) if weak_steps > 0 else "")


def _train(task: str, data: Path, images: bool, steps: int, work: Path, args: argparse.Namespace) -> str:
    """One BC flow run (cached by task, H, Ta and steps)."""
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, PolicyConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.training.bc import train

    tag = f"{task.replace('/', '_')}_h{args.horizon}_ta{args.n_action_steps}_s{steps}"
    info = work / f"{tag}_bc.json"
    if info.exists():
        return json.loads(info.read_text())["ckpt"]
    pol = PolicyConfig(type="flow", sampler="euler", steps=10, horizon=args.horizon, n_action_steps=args.n_action_steps,
                       **(dict(width=128, depth=2) if args.quick else {}), **(dict(image_encoder="conv") if images else {}))
    cfg = TrainConfig(task=TaskConfig(name=task, images=images), policy=pol, data=DataConfig(path=str(data)),
                      train=OptimConfig(steps=steps, batch_size=256, warmup_steps=min(500, steps // 10)),
                      eval=EvalConfig(n_episodes=10, n_envs=10, n_videos=0),
                      run=RunConfig(dir=str(work / f"{tag}_bc"), progress=False, log_every=10**9, ckpt_every=10**9))
    t0 = time.time()
    res = train(cfg)
    info.write_text(json.dumps({"ckpt": res["final_checkpoint"], "bc_success_10ep": res["eval"]["success_rate"],
                                "train_s": round(time.time() - t0, 1), "demos": str(data), "steps": steps}))
    return res["final_checkpoint"]


# --- one row ----------------------------------------------------------------------------------------------------------
def run_row(task: str, ckpt: str, rate: float, latency_ms: float, mode: str, args: argparse.Namespace,
            frames_cb: Any = None, seeds: Optional[list[int]] = None, weak: str = "") -> dict[str, Any]:
    settings = None
    if mode in ("rtc", "bid"):
        settings = RealtimeSettings(mode=mode, beta=args.rtc_beta, schedule=args.rtc_schedule,
                                    bid_samples=args.bid_samples, bid_rho=0.5, bid_k=3)
    runner = LocalPolicy(ckpt, realtime=settings, weak_ckpt=weak if mode == "bid" else "")
    runner._gen.manual_seed(0)  # the same policy noise stream for every row
    clock = FakeClock()
    robot = SimRobot(task, clock, rate, seed=0, images=bool(runner.spec.cameras))
    robot.connect()
    f = robot.features
    safety = SafetyFilter.from_config(SafetyConfig(), f.action_low, f.action_high, 1.0 / rate, f.position_dims)
    inference = SimulatedInference(runner, clock, latency_ms / 1e3, args.jitter_ms / 1e3, add_compute=True,
                                   seed=int(rate * 1000 + latency_ms))
    ctl = Controller(robot, inference, safety, runner.spec, ControllerConfig(rate_hz=rate, blending=mode), clock)
    seeds = seeds if seeds is not None else list(range(SEEDS.test.start, SEEDS.test.start + args.episodes))
    succ, jumps, jerks, held, overruns, steps = [], [], [], 0, 0, 0
    t0 = time.time()
    for seed in seeds:
        robot.start_episode(seed)

        def stop() -> bool:
            if frames_cb is not None:
                frames_cb(robot)
            return robot.success or robot.done

        rep = ctl.run_episode(robot.max_episode_steps, should_stop=stop, record=False)
        succ.append(float(robot.success))
        jumps += rep.boundary_jumps
        jerks.append(rep.mean_jerk)
        held += rep.held_ticks
        steps += rep.steps
        # loop overruns (none on simulated time) + chunks that arrived after the plan in force ran out
        overruns += rep.cadence.overruns + rep.starved_chunks
    robot.close()
    comp = np.asarray(inference.compute_s or [0.0]) * 1e3
    return {"task": task, "rate_hz": rate, "latency_ms": latency_ms, "jitter_ms": args.jitter_ms, "mode": mode,
            "success_rate": float(np.mean(succ)), "n_episodes": len(succ),
            "max_boundary_jump": float(max(jumps, default=0.0)),
            "p95_boundary_jump": float(np.percentile(jumps, 95)) if jumps else 0.0,
            "mean_boundary_jump": float(np.mean(jumps)) if jumps else 0.0,
            "mean_jerk": float(np.mean(jerks)), "inference_ms_p50": float(np.percentile(comp, 50)),
            "inference_ms_p99": float(np.percentile(comp, 99)), "overruns": int(overruns),
            "held_ticks": int(held), "steps": int(steps), "variant": variant(mode, args),
            "settings": {"rtc": {"beta": args.rtc_beta, "schedule": args.rtc_schedule},
                         "bid": {"samples": args.bid_samples, "rho": 0.5, "k": 3, "weak_ckpt": weak}}.get(mode, {}),
            "checkpoint": ckpt, "seeds": [seeds[0], seeds[-1]], "wall_s": round(time.time() - t0, 1)}


def variant(mode: str, args: argparse.Namespace) -> str:
    """The settings a row's mode ran with, in its key: ablations (--rtc-schedule, --rtc-beta, --bid-samples) are
    rows of their own, not overwrites."""
    if mode == "rtc":
        return f"beta{args.rtc_beta:g}_{args.rtc_schedule}"
    if mode == "bid":
        return f"n{args.bid_samples}" + (f"_weak{args.bid_weak_frac:g}" if args.bid_weak_frac > 0 else "")
    return ""


def _key(r: dict) -> tuple:
    return (r["task"], float(r["rate_hz"]), float(r["latency_ms"]), r["mode"], r.get("variant", ""))


def append_row(path: Path, row: dict, command: str) -> None:
    """Under a file lock, read-modify-write via a temporary file and rename: an interrupted write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"rows": []}
        if any(_key(r) == _key(row) for r in data["rows"]):
            return
        data["rows"].append(row)
        data["meta"] = _meta(data.get("meta", {}), command)
        _write_atomic(path, json.dumps(data, indent=2))


# --- report -----------------------------------------------------------------------------------------------------------
def main_rows(rows: list[dict], main: dict[str, str]) -> list[dict]:
    """The rows of the main settings (`main`: mode -> variant); ablation rows stay in the table only."""
    return [r for r in rows if r.get("variant", "") == main.get(r["mode"], "")]


def write_report(out: Path, name: str, skipped: list[str], main: dict[str, str]) -> None:
    data = json.loads((out / f"{name}.json").read_text())
    rows, meta = data["rows"], data["meta"]
    tasks = sorted({r["task"] for r in rows})
    lines = [f"# Real-time chunk execution: {', '.join(EXECUTION_MODES)} under latency", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])) + "  ",
             f"Machine: {meta.get('platform')}, {meta.get('cpu_count')} CPUs, torch threads {meta.get('torch_threads')}; "
             + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + "  ",
             f"Episodes: protocol test seeds from {SEEDS.test.start} (the same for every row). Simulated time: each "
             "chunk arrives at submit + injected latency + uniform jitter + its measured inference time; one env step "
             f"per control period. RTC ({main.get('rtc')}): guidance cap beta and mask schedule as named, d = the "
             f"largest delay (steps) of the last 10 chunks. BID ({main.get('bid')}): N candidates in one batched call, "
             "backward coherence rho 0.5 from the first executed action, forward contrast (k=3) against N samples of "
             "the weak policy when named (the same run's early checkpoint). Targets and the plot use "
             "these; other variants are ablation rows. A chunk can only bridge a delay shorter than it: with H steps at "
             "rate f, latencies >= H / f (160 ms for H=16 at 100 Hz) leave nothing on time. Blend window 0.133 s at "
             "every rate. Jump = for the blend window after a takeover, |(a_t - a_t-1)"
             " - (old_t - old_t-1)|_inf (the jump the switch adds); jerk = mean |third difference of the sent command|_2"
             " * rate^3; overruns = chunks that arrived after the plan in force ran out.", ""]
    if skipped:
        lines += [f"Skipped: {', '.join(skipped)}", ""]
    for task in tasks:
        lines += [f"## {task}", "", "| rate Hz | latency ms | mode | success | n | jump max / p95 | jerk | "
                  "inference ms p50 / p99 | overruns | held ticks |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["task"] == task),
                        key=lambda r: (r["rate_hz"], r["latency_ms"], EXECUTION_MODES.index(r["mode"]), r.get("variant", ""))):
            tag = f" {r['variant']}" if r.get("variant") else ""
            lines.append(f"| {r['rate_hz']:.0f} | {r['latency_ms']:.0f} | {r['mode']}{tag} | {r['success_rate']:.2f} | "
                         f"{r['n_episodes']} | {r['max_boundary_jump']:.3f} / {r['p95_boundary_jump']:.3f} | "
                         f"{r['mean_jerk']:.3g} | {r['inference_ms_p50']:.1f} / {r['inference_ms_p99']:.1f} | "
                         f"{r['overruns']} | {r['held_ticks']} |")
        lines.append("")
    lines += ["## Targets", ""] + targets(main_rows(rows, main)) + [""]
    lines += [f"![success vs latency]({name}_success.png)", "", f"![one episode, latest and rtc]({name}_strip.png)", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each checked where its rows exist (a missing row is said, not passed)."""
    by = {_key(r)[:4]: r for r in rows}
    lats = sorted({r["latency_ms"] for r in rows})
    out = []
    for task in sorted({r["task"] for r in rows}):
        for rate in sorted({r["rate_hz"] for r in rows if r["task"] == task}):
            z, l2 = by.get((task, rate, 0.0, "rtc")), by.get((task, rate, 200.0, "rtc"))
            if z and l2:
                ok = l2["success_rate"] >= z["success_rate"] - 0.05
                out.append(f"- {task} {rate:.0f} Hz: RTC success at 200 ms {l2['success_rate']:.2f} vs 0 ms "
                           f"{z['success_rate']:.2f}: {'within' if ok else 'NOT within'} 0.05")
            cuts = []
            for lat in sorted({r["latency_ms"] for r in rows if r["task"] == task and r["rate_hz"] == rate}):
                a, b = by.get((task, rate, lat, "latest")), by.get((task, rate, lat, "rtc"))
                if a and b:
                    cuts.append(f"{lat:.0f} ms {a['p95_boundary_jump'] / max(b['p95_boundary_jump'], 1e-9):.1f}x")
            if cuts:
                out.append(f"- {task} {rate:.0f} Hz: p95 jump latest / rtc: " + ", ".join(cuts) + " (target >= 2x)")
            worse = [f"{lat:.0f} ms vs {m} ({by[(task, rate, lat, m)]['success_rate']:.2f} > "
                     f"{by[(task, rate, lat, 'rtc')]['success_rate']:.2f})"
                     for lat in lats for m in ("blend", "ensemble")
                     if (task, rate, lat, m) in by and (task, rate, lat, "rtc") in by
                     and by[(task, rate, lat, m)]["success_rate"] > by[(task, rate, lat, "rtc")]["success_rate"]]
            out.append(f"- {task} {rate:.0f} Hz: RTC matches or beats blend and ensemble on success at every latency"
                       if not worse else f"- {task} {rate:.0f} Hz: RTC below " + "; ".join(worse))
            wins = [f"{lat:.0f} ms ({by[(task, rate, lat, 'bid')]['success_rate']:.2f} vs rtc "
                    f"{by[(task, rate, lat, 'rtc')]['success_rate']:.2f}, {by[(task, rate, lat, 'bid')]['inference_ms_p50']:.1f}"
                    f" vs {by[(task, rate, lat, 'rtc')]['inference_ms_p50']:.1f} ms per chunk)"
                    for lat in lats if (task, rate, lat, "bid") in by and (task, rate, lat, "rtc") in by
                    and by[(task, rate, lat, "bid")]["success_rate"] > by[(task, rate, lat, "rtc")]["success_rate"]]
            if wins:
                out.append(f"- {task} {rate:.0f} Hz: BID beats RTC at " + "; ".join(wins))
    return out or ["- no rows yet"]


def plot(out: Path, name: str, main: dict[str, str]) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = main_rows(json.loads((out / f"{name}.json").read_text())["rows"], main)
    tasks, rates = sorted({r["task"] for r in rows}), sorted({r["rate_hz"] for r in rows})
    if not rows:
        return None
    fig, axes = plt.subplots(len(rates), len(tasks), figsize=(4 * len(tasks), 3 * len(rates)), squeeze=False)
    for i, rate in enumerate(rates):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            for mode in EXECUTION_MODES:
                pts = sorted((r["latency_ms"], r["success_rate"]) for r in rows
                             if r["task"] == task and r["rate_hz"] == rate and r["mode"] == mode)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=mode)
            ax.set_title(f"{task.split('/')[-1]} @ {rate:.0f} Hz", fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("injected latency (ms)")
            ax.set_ylabel("success")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{name}_success.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def video_strip(task: str, ckpt: str, args: argparse.Namespace, out: Path, name: str) -> Path:
    """Frames of one episode at 200 ms, latest (top) beside rtc (bottom), every few steps."""
    rows = []
    for mode in ("latest", "rtc"):
        frames: list[np.ndarray] = []

        def grab(robot: SimRobot) -> None:
            if robot.steps % args.strip_every == 0 and len(frames) < args.strip_frames and \
                    (not frames or robot.steps != grab.last):  # type: ignore[attr-defined]
                frames.append(np.asarray(robot.env.render()))
                grab.last = robot.steps  # type: ignore[attr-defined]

        grab.last = -1  # type: ignore[attr-defined]
        run_row(task, ckpt, 30.0, 200.0, mode, args, frames_cb=grab, seeds=[SEEDS.test.start])
        while len(frames) < args.strip_frames:
            frames.append(frames[-1] if frames else np.zeros((96, 96, 3), np.uint8))
        rows.append(np.concatenate(frames, 1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(rows[0].shape[1] / 100, 2 * rows[0].shape[0] / 100 + 0.6))
    for ax, img, label in zip(axes, rows, ("latest", "rtc")):
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(f"{task}, 30 Hz, 200 ms injected latency: {label} (every {args.strip_every} steps)", fontsize=8)
    fig.tight_layout()
    path = out / f"{name}_strip.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--rates", nargs="+", type=float, default=RATES)
    ap.add_argument("--latencies", nargs="+", type=float, default=LATENCIES, help="injected latency, ms")
    ap.add_argument("--jitter-ms", type=float, default=10.0, help="+ uniform [0, jitter) per chunk")
    ap.add_argument("--modes", nargs="+", default=list(EXECUTION_MODES))
    ap.add_argument("--rtc-beta", type=float, default=10.0, help="guidance cap (about the number of sampling steps)")
    ap.add_argument("--rtc-schedule", default="ones", choices=["exp", "linear", "ones", "zeros"])
    ap.add_argument("--bid-samples", type=int, default=8)
    ap.add_argument("--bid-weak-frac", type=float, default=0.25,
                    help="BID's weak policy: the same run's checkpoint at this fraction of the steps (0 = none)")
    ap.add_argument("--horizon", type=int, default=16, help="H of the trained policies")
    ap.add_argument("--n-action-steps", type=int, default=8, help="Ta (also how often a chunk is requested)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--ckpt", nargs="*", default=[],
                    help="task=checkpoint_dir (skips training that task); task:weak=dir names BID's weak policy")
    ap.add_argument("--pusht-data", default="", help="a state-based PushT replay buffer (zarr) to train on")
    ap.add_argument("--work", default="runs/bench_realtime")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", default="realtime")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strip-frames", type=int, default=8)
    ap.add_argument("--strip-every", type=int, default=15)
    ap.add_argument("--quick", action="store_true",
                    help="toy task, 30 and 100 Hz, 0 and 200 ms, 3 episodes, a small net: checks the pipeline")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.rates, args.latencies, args.episodes = ["toy/bimodal"], [30.0, 100.0], [0.0, 200.0], 3
        args.demos, args.train_steps, args.strip_every = 30, 400, 4
    bad = [m for m in args.modes if m not in EXECUTION_MODES]
    if bad:
        sys.exit(f"unknown modes {bad}; use {EXECUTION_MODES}")
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    js = out / f"{args.name}.json"
    done = {_key(r) for r in json.loads(js.read_text())["rows"]} if js.exists() else set()
    skipped, ckpts = [], {}
    for task in args.tasks:
        got = bc_checkpoint(task, work, args)
        if got is None:
            skipped.append(f"{task} (no demonstrations: pass --pusht-data or --ckpt {task}=<dir>)")
            print(f"[realtime] skip {task}: no data", flush=True)
            continue
        ckpt, weak = got
        ckpts[task] = ckpt
        if "bid" in args.modes and args.bid_weak_frac > 0 and not weak:
            sys.exit(f"{task}: a given --ckpt has no weak policy: add --ckpt {task}:weak=<dir> or pass --bid-weak-frac 0")
        for rate in args.rates:
            for lat in args.latencies:
                for mode in args.modes:
                    if (task, rate, lat, mode, variant(mode, args)) in done:
                        continue
                    row = run_row(task, ckpt, rate, lat, mode, args, weak=weak)
                    append_row(js, row, command)
                    print(f"[realtime] {task} {rate:.0f} Hz {lat:.0f} ms {mode:8s} success {row['success_rate']:.2f} "
                          f"jump p95 {row['p95_boundary_jump']:.3f} jerk {row['mean_jerk']:.3g} "
                          f"inf {row['inference_ms_p50']:.1f} ms overruns {row['overruns']} ({row['wall_s']} s)",
                          flush=True)
    if js.exists():
        main_v = {m: variant(m, args) for m in EXECUTION_MODES}
        write_report(out, args.name, skipped, main_v)
        plot(out, args.name, main_v)
    strip_task = "pusht/pusht" if "pusht/pusht" in ckpts else next(iter(ckpts), None)
    if strip_task is not None:
        video_strip(strip_task, ckpts[strip_task], args, out, args.name)


if __name__ == "__main__":
    main()
