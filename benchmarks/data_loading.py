"""Data loading from a LeRobot v3 video dataset: genpolicy's lazy loader vs lerobot-dataset's LeRobotDataset.

Dataset: the toy simulator recorded with genpolicy's own LeRobot writer (`LeRobotWriter`): E episodes of F frames,
two cameras (`top`: the scene; `follow`: a 2x view centred on the agent) at S x S as h264 mp4, state, action.

For each loader and worker count, one fresh process reads training batches (To=2 frame history, H=16 actions) of
the same files and reports samples/s after the first batch, the time to the first batch (opening included) and the
peak memory of the process and its workers together, sampled every 50 ms: RSS summed (pages shared by the forked
workers counted in each, an over-estimate) and PSS summed (shared pages split between the sharers). genpolicy's
batches are step-seeded windows (`bc.StepBatches` in a DataLoader, as training reads them); LeRobot's are
`LeRobotDataset(delta_timestamps=...)` in a shuffled DataLoader (torchcodec: its pyav path needs torchvision's
removed VideoReader).

Then the training side: steps/s of the MLP and U-Net policies (conv image encoder, both cameras) on this CPU with
in-memory batches, so the loader rows can be read against what training consumes.

Writes benchmarks/results/data_loading.md and data_loading.json (rows: loader, backend, workers, batch_size,
samples_per_s, peak_rss_mb, peak_pss_mb, first_batch_s, episodes, frames, ...). Recording the full dataset takes
most of the time (0.27 s per frame of both cameras on 2 shared cores: ~4.5 h for 60k frames; ~1 h on 2 idle
cores); it is kept in data/ and reused by later runs.

    .venv/bin/python benchmarks/data_loading.py                 # 200 episodes x 300 frames, 224 px (the target)
    .venv/bin/python benchmarks/data_loading.py --quick         # 12 x 100 at 224 px, to /tmp, a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"
TO, HORIZON = 2, 16


# ---- dataset ----------------------------------------------------------------------------------------------------
def record(path: Path, episodes: int, frames: int, size: int, vcodec: str, seed: int = 0) -> float:
    """Drive the toy simulator with its noisy expert for `frames` steps per episode and stream it to LeRobot v3."""
    from genpolicy.datasets.lerobot import LeRobotWriter
    from genpolicy.envs.toy import ToyEnv, ToyExpert

    t0 = time.time()
    env = ToyEnv(seed=seed, images=True, image_size=size, max_episode_steps=frames)
    expert = ToyExpert(noise=0.3, seed=seed)
    writer = None
    # a fixed texture where the toy scene is blank: flat white frames would compress (and decode) unrealistically well
    tex = np.random.default_rng(seed).integers(0, 64, size=(3, 2 * size, 2 * size), dtype=np.uint8)
    for e in range(episodes):
        obs = env.reset(seed=seed + e)
        expert.reset()
        ep: dict[str, list] = {"state": [], "action": [], "image.top": [], "image.follow": []}
        for _ in range(frames):  # past the goal too: every episode has `frames` frames
            a = expert.act(env, obs)
            ep["state"].append(obs["state"])
            ep["action"].append(a)
            ep["image.top"].append(_textured(obs["image.top"], tex[:, :size, :size]))
            ep["image.follow"].append(_follow_view(env, size, tex))
            obs, *_ = env.step(a)
        arrays = {k: np.stack(v) for k, v in ep.items()}
        if writer is None:
            writer = LeRobotWriter(path, fps=int(env.spec.fps), example=arrays, repo_id="local/bench",
                                   vcodec=vcodec, robot_type="toy")
        writer.add_episode(arrays, task="reach the goal around the obstacle")
        print(f"\rrecorded {e + 1}/{episodes} episodes", end="", flush=True)
    print()
    assert writer is not None
    writer.close()
    return time.time() - t0


def _textured(img: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """CHW uint8 frame with `tex` showing through its white background."""
    blank = (img == 255).all(axis=0, keepdims=True)
    return np.where(blank, 191 + tex, img).astype(np.uint8)


def _follow_view(env, size: int, tex: np.ndarray) -> np.ndarray:
    """A second camera: the textured scene at twice the scale, centred on the agent (CHW uint8)."""
    big = _textured(env._draw(2 * size).transpose(2, 0, 1), tex)
    cy = int(np.clip((1.5 - env.pos[1]) / 3.0 * 2 * size, size // 2, 2 * size - size // 2))
    cx = int(np.clip((env.pos[0] + 1.5) / 3.0 * 2 * size, size // 2, 2 * size - size // 2))
    return np.ascontiguousarray(big[:, cy - size // 2:cy - size // 2 + size, cx - size // 2:cx - size // 2 + size])


# ---- measuring one loader (in its own process) -------------------------------------------------------------------
def _tree_mem_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of `pid` and all its descendants, MB. RSS counts pages shared by forked workers once per process;
    PSS splits them between the processes that share them (the memory the tree really holds)."""
    rss, pss, stack = 0.0, 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) / 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) / 1024
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return rss, pss


class PeakRSS:
    def __init__(self) -> None:
        self.peak, self.peak_pss, self._stop = 0.0, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, pss = _tree_mem_mb(os.getpid())
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self) -> "PeakRSS":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def measure(loader: str, backend: str, path: Path, workers: int, batch_size: int, batches: int) -> dict:
    import torch

    torch.set_num_threads(1)
    with PeakRSS() as rss:
        t0 = time.time()
        if loader == "genpolicy":
            it = _genpolicy_batches(path, workers, batch_size, batches + 1, backend)
        else:
            it = _lerobot_batches(path, workers, batch_size, backend)
        n_frames = 0
        first = next(it)
        t_first = time.time() - t0
        t1 = time.time()
        for _, b in zip(range(batches), it):
            n_frames += 1
        dt = time.time() - t1
        del it
    shapes = {k: tuple(v.shape) for k, v in first.items() if hasattr(v, "shape")}
    return {"loader": loader, "backend": backend, "workers": workers, "batch_size": batch_size,
            "batches": n_frames, "samples_per_s": round(n_frames * batch_size / dt, 1),
            "peak_rss_mb": round(rss.peak, 1), "peak_pss_mb": round(rss.peak_pss, 1), "first_batch_s": round(t_first, 2), "shapes": str(shapes)}


def _genpolicy_batches(path: Path, workers: int, batch_size: int, steps: int, backend: str):
    from genpolicy.config import DataConfig, OptimConfig, PolicyConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.lazy import open_demos
    from genpolicy.datasets.sequence import SequenceSampler
    from genpolicy.training.bc import batch_stream
    from genpolicy.training.dist import DistInfo

    cfg = TrainConfig(task=TaskConfig(name="toy/bimodal", images=True),
                      data=DataConfig(path=str(path), num_workers=workers, video_backend=backend),
                      policy=PolicyConfig(n_obs_steps=TO, horizon=HORIZON),
                      train=OptimConfig(steps=steps, batch_size=batch_size))
    demos = open_demos(path, video_backend=backend)
    sampler = SequenceSampler(demos, np.arange(demos.n_episodes), TO, HORIZON)
    for b in batch_stream(sampler, cfg, 0, DistInfo()):
        yield {**b["obs"], "action": b["action"]}


def _lerobot_batches(path: Path, workers: int, batch_size: int, backend: str):
    import torch
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    dt = 1.0 / 10
    info = json.loads((path / "meta" / "info.json").read_text())
    dt = 1.0 / float(info["fps"])
    cams = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    delta = {**{c: [-dt, 0.0] for c in cams}, "observation.state": [-dt, 0.0],
             "action": [i * dt for i in range(HORIZON)]}
    ds = LeRobotDataset("local/bench", root=path, delta_timestamps=delta, video_backend=backend)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                     generator=torch.Generator().manual_seed(0),
                                     prefetch_factor=2 if workers else None)
    while True:
        for b in dl:
            yield {k: v for k, v in b.items() if k in cams or k in ("observation.state", "action")}


# ---- training side ------------------------------------------------------------------------------------------------
def train_rate(network: str, size: int, batch_size: int, steps: int) -> dict:
    """Samples/s one BC step consumes (forward + backward + AdamW), in-memory batches, this process's threads."""
    import torch

    from genpolicy.config import PolicyConfig
    from genpolicy.policies import ShapeMeta, make_policy

    cfg = PolicyConfig(type="flow", sampler="euler", network=network, n_obs_steps=TO, horizon=HORIZON, image_encoder="conv",
                       image_size=size, crop_ratio=0.9)
    policy = make_policy(cfg, ShapeMeta(state_dim=2, action_dim=2, cameras=["top", "follow"], image_size=size))
    policy.normalizer.fit({"state": np.random.default_rng(0).normal(size=(100, 2)),
                           "action": np.random.default_rng(1).normal(size=(100, 2))})
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": {"state": torch.randn(batch_size, TO, 2),
                     **{f"image.{c}": torch.randint(0, 256, (batch_size, TO, 3, size, size), dtype=torch.uint8)
                        for c in ("top", "follow")}},
             "action": torch.randn(batch_size, HORIZON, 2), "action_is_pad": torch.zeros(batch_size, HORIZON, dtype=torch.bool)}

    def step() -> None:
        out = policy.loss(batch, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    step()
    t0 = time.time()
    for _ in range(steps):
        step()
    dt = (time.time() - t0) / steps
    return {"network": network, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "steps_per_s": round(1 / dt, 3), "samples_per_s": round(batch_size / dt, 1)}


# ---- report ---------------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "numpy", "av", "torchcodec", "lerobot-dataset", "zarr"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "-"
    return out


def write_report(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "data_loading.json", json.dumps(res, indent=1))
    d = res["dataset"]
    lines = [f"# Data loading: LeRobot v3 video, genpolicy vs LeRobotDataset{' (quick)' if res['quick'] else ''}", "",
             f"Dataset: toy simulator recorded with `LeRobotWriter`: {d['episodes']} episodes x {d['frames_per_episode']}"
             f" frames, two cameras at {d['size']}x{d['size']} ({d['vcodec']} mp4, {d['mb']:.0f} MB on disk; "
             + (f"recording took {d['record_s']:.0f} s" if d['record_s'] else "recorded by an earlier run")
             + f"). Batches of {res['batch_size']} windows, To={TO} frames, H={HORIZON} actions.",
             f"Machine: {res['machine']}. Command: `{res['command']}`.", "",
             "| loader | backend | workers | samples/s | peak RSS (MB) | peak PSS (MB) | first batch (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['loader']} | {r['backend']} | {r['workers']} | {r['samples_per_s']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r.get('peak_pss_mb', 0):.0f} | {r['first_batch_s']:.1f} |")
    lines += ["", "Speed-up of genpolicy over LeRobotDataset at equal workers (best backend each):", ""]
    for w in sorted({r["workers"] for r in res["rows"]}):
        g = max((r["samples_per_s"] for r in res["rows"] if r["loader"] == "genpolicy" and r["workers"] == w), default=0)
        lr = max((r["samples_per_s"] for r in res["rows"] if r["loader"] == "lerobot" and r["workers"] == w), default=0)
        if g and lr:
            lines.append(f"* {w} workers: {g / lr:.2f}x ({g:.0f} vs {lr:.0f} samples/s)")
    if res.get("training"):
        lines += ["", "Training consumes (in-memory batches, forward + backward + AdamW, conv encoder on both cameras):",
                  "", "| network | batch | threads | steps/s | samples/s |", "|---|---|---|---|---|"]
        for r in res["training"]:
            lines.append(f"| {r['network']} | {r['batch_size']} | {r['threads']} | {r['steps_per_s']:.2f} | "
                         f"{r['samples_per_s']:.0f} |")
    lines += ["", *target_lines(res)]
    if res.get("shared"):
        lines += ["", f"Shared the machine: {res['shared']}."]
    if res.get("versions"):
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + "."]
    if res.get("notes"):
        lines += ["", *res["notes"]]
    _write_atomic(out / "data_loading.md", "\n".join(lines) + "\n")


RSS_LIMIT_MB, MIN_SPEEDUP = 3072, 1.5  # the targets: peak memory under 3 GB; at least 1.5x LeRobot at equal workers


def target_lines(res: dict) -> list[str]:
    """The issue's targets, judged from the rows: for genpolicy's default backend (pyav, `data.video_backend`) and
    for each backend alone. Memory is judged on both measures: RSS summed over the loader's processes (counts pages
    the forked workers share once per process: an over-estimate) and PSS (shared pages split: what the tree holds)."""
    rows, out = res["rows"], ["Targets:", ""]
    lr = {r["workers"]: r["samples_per_s"] for r in rows if r["loader"] == "lerobot"}
    for be in sorted({r["backend"] for r in rows if r["loader"] == "genpolicy"}):
        gs = [r for r in rows if r["loader"] == "genpolicy" and r["backend"] == be]
        ups = [(r["workers"], r["samples_per_s"] / lr[r["workers"]]) for r in gs if lr.get(r["workers"])]
        rss, pss = max(r["peak_rss_mb"] for r in gs), max(r.get("peak_pss_mb", 0) for r in gs)
        tag = " (the default)" if be == "pyav" else ""
        out.append(f"* genpolicy/{be}{tag}: throughput vs LeRobotDataset "
                   + ", ".join(f"{u:.2f}x at {w} workers" for w, u in ups)
                   + f" -> {'met' if ups and min(u for _, u in ups) >= MIN_SPEEDUP else 'MISSED'} (>= {MIN_SPEEDUP}x); "
                   f"peak memory {rss:.0f} MB RSS-sum / {pss:.0f} MB PSS -> "
                   + ("met on both measures" if rss < RSS_LIMIT_MB else
                      f"RSS-sum over 3 GB ({'PSS under it' if pss < RSS_LIMIT_MB else 'PSS over it too'})")
                   + " (< 3 GB)")
    if res.get("training"):
        slowest = min(r["samples_per_s"] for r in rows if r["loader"] == "genpolicy")
        fastest = max(t["samples_per_s"] for t in res["training"])
        out.append(f"* Training not limited by loading: the slowest genpolicy loader row delivers {slowest:.0f} samples/s, "
                   f"{slowest / fastest:.0f}x what the fastest network here consumes ({fastest:.0f} samples/s) -> "
                   + ("met" if slowest >= fastest else "MISSED"))
    out.append("* Memory does not grow with dataset size: `tests/test_lazy_data.py::"
               "test_peak_rss_does_not_grow_with_dataset_size` (10x the episodes, same peak within a small constant); "
               "this run has one dataset size.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 episodes x 100 frames, few batches, results to /tmp")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--vcodec", default="h264")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--backends", nargs="+", default=["pyav", "torchcodec"])
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--data", default="", help="dataset directory (recorded if absent)")
    ap.add_argument("--out", default="")
    ap.add_argument("--measure", default="", help=argparse.SUPPRESS)  # loader:backend, in a child process
    ap.add_argument("--shared", default="", help="what else ran on the machine (stored with the results)")
    ap.add_argument("--report", action="store_true", help="rewrite data_loading.md from data_loading.json; run nothing")
    args = ap.parse_args()
    if args.report:
        out = Path(args.out or OUT)
        res = json.loads((out / "data_loading.json").read_text())
        if args.shared:
            res["shared"] = args.shared
        write_report(out, res)
        print(out / "data_loading.md")
        return
    if args.quick:
        args.episodes, args.frames, args.batches, args.train_steps = 12, 100, 8, 1
        args.workers = args.workers if args.workers != [2, 4] else [2]
    data = Path(args.data or (f"/tmp/genpolicy_bench_lerobot_{args.episodes}x{args.frames}_{args.size}" if args.quick
                              else ROOT / "data" / f"bench_lerobot_{args.episodes}x{args.frames}_{args.size}"))
    if args.measure:
        loader, backend = args.measure.split(":")
        row = measure(loader, backend, data, args.workers[0], args.batch_size, args.batches)
        print("ROW " + json.dumps(row))
        return
    out = Path(args.out or ("/tmp/genpolicy_bench_results" if args.quick else OUT))
    record_s = 0.0
    if not (data / "meta" / "info.json").exists():
        record_s = record(data, args.episodes, args.frames, args.size, args.vcodec)
    mb = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20
    res = {"quick": args.quick, "command": " ".join(["benchmarks/data_loading.py", *sys.argv[1:]]),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
           "batch_size": args.batch_size,
           "dataset": {"episodes": args.episodes, "frames_per_episode": args.frames, "size": args.size,
                       "vcodec": args.vcodec, "mb": mb, "record_s": record_s, "path": str(data)},
           "rows": [], "training": [], "notes": [], "shared": args.shared, "versions": _versions()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for w in args.workers:
        for loader in ("genpolicy", "lerobot"):
            for backend in args.backends:
                if loader == "lerobot" and backend == "pyav":
                    # ledataset's pyav path calls torchvision.io.VideoReader, which torchvision >= 0.2x removed
                    continue
                cmd = [sys.executable, __file__, "--measure", f"{loader}:{backend}", "--data", str(data),
                       "--workers", str(w), "--batch-size", str(args.batch_size), "--batches", str(args.batches)]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                rows = [ln for ln in r.stdout.splitlines() if ln.startswith("ROW ")]
                if r.returncode or not rows:
                    note = f"{loader}/{backend} with {w} workers failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
                    print(note)
                    res["notes"].append(note)
                    continue
                row = json.loads(rows[0][4:])
                row.update(episodes=args.episodes, frames=args.episodes * args.frames)
                res["rows"].append(row)
                print(f"{loader:9s} {backend:10s} workers={w}: {row['samples_per_s']:.0f} samples/s, peak RSS "
                      f"{row['peak_rss_mb']:.0f} MB, first batch {row['first_batch_s']:.1f} s")
                write_report(out, res)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    for net in ("mlp", "unet"):
        r = train_rate(net, args.size, args.batch_size, args.train_steps)
        res["training"].append(r)
        print(f"train {net}: {r['steps_per_s']:.2f} steps/s = {r['samples_per_s']:.0f} samples/s")
    write_report(out, res)
    print(f"wrote {out / 'data_loading.md'} and data_loading.json")


if __name__ == "__main__":
    main()
