"""What noise steering starts from: each off-policy start checkpoint's success from zero, random and best-of-K noise.

DSRL only chooses the initial noise of a frozen policy, and its untrained actor plays noise near zero. For every BC
checkpoint the off-policy benchmark started from (read from finetune_offpolicy.json), on the same 20 held-out
episodes its evaluations use (eval seed 100000 + i, one layout each):
  zero    the base map from zero noise (DDIM eta 0 or the checkpoint's Euler flow), about what DSRL's first
          evaluation plays;
  random  the mean success over K draws of random noise (the checkpoint every algorithm starts from);
  best-of-K  the fraction of layouts solved by at least one of the K random-noise episodes, each episode drawing
          fresh noise per chunk without looking at the state.
Best-of-K is not a ceiling for DSRL: its actor picks the noise of each chunk from the state, and it can beat best-of-K
(compare the DSRL column, the best evaluation any DSRL run on that checkpoint reached, 20 episodes each).

    .venv/bin/python benchmarks/noise_coverage.py --draws 16 --threads 1
    .venv/bin/python benchmarks/noise_coverage.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genpolicy.config import DSRLConfig  # noqa: E402
from genpolicy.finetune.dsrl import base_map  # noqa: E402
from genpolicy.finetune.ppo import policy_for_finetuning  # noqa: E402
from genpolicy.training.checkpoint import load_policy  # noqa: E402
from genpolicy.training.evaluate import evaluate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_offpolicy import _ckpt, _family, _recipe, _short, ckpt_label  # noqa: E402
from finetune_onpolicy import _dash, append_row, bc_info_path  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
EVAL_SEED, N_LAYOUTS = 100_000, 20  # the fine-tuning runs' eval protocol (EvalConfig.seed, preset n_episodes)


def checkpoints(off: dict, work: Path) -> list[dict]:
    """The BC checkpoints the off-policy rows started from: task, family, recipe and path (from weak_bc's cache)."""
    seen: dict[tuple, dict] = {}
    for r in off["rows"]:
        key = (r["task"], _family(r), _short(_recipe(r, off.get("meta", {}))))
        info = bc_info_path(*key, work)
        if key not in seen and info.exists():
            seen[key] = {"task": key[0], "family": key[1], "recipe": key[2], "ckpt": json.loads(info.read_text())["ckpt"]}
    return [seen[k] for k in sorted(seen)]


def measure(c: dict, draws: int) -> dict:
    """Per-layout success of the checkpoint from zero noise and from `draws` independent random-noise draws."""
    bc = load_policy(c["ckpt"])
    # the map DSRL steers by default (dsrl.sampler unset): DDIM eta 0 or the checkpoint's ODE sampler, no warm start
    det = base_map(bc.cfg, DSRLConfig())
    zero = policy_for_finetuning(bc, "dsrl", bc.cfg.type, torch.device("cpu"), init_noise_scale=0.0, **det)
    rand = policy_for_finetuning(bc, "dsrl", bc.cfg.type, torch.device("cpu"), **det)
    run = lambda p, ns: [e["success"] for e in evaluate(p, c["task"], n_episodes=N_LAYOUTS, n_envs=10, seed=EVAL_SEED,  # noqa: E731
                                                       progress=False, noise_seed=ns)["episodes"]]
    z = run(zero, None)
    per = np.array([run(rand, 7_000 + k) for k in range(draws)])  # (K, layouts)
    return {**c, "draws": draws, "layouts": N_LAYOUTS, "zero": float(np.mean(z)), "random": float(per.mean()),
            "best_of_k": float(per.any(0).mean()), "per_layout": per.mean(0).round(3).tolist(),
            "zero_per_layout": [bool(x) for x in z]}


def dsrl_evals(off: dict, c: dict) -> tuple[list[float], float | None]:
    """DSRL runs on checkpoint `c`: their first evaluations (before any update) and the best evaluation of any."""
    rs = [r for r in off["rows"] if r["algo"] == "dsrl" and r["task"] == c["task"]
          and _ckpt(r, off.get("meta", {})) == ckpt_label(c["family"], c["recipe"])]
    evals = [p["success_rate"] for r in rs for p in r["curve"][1:]]
    return [r["curve"][1]["success_rate"] for r in rs if len(r["curve"]) > 1], (max(evals) if evals else None)


def write_report(data: dict, off: dict, out: Path) -> None:
    meta = data.get("meta", {})
    lines = ["# Noise coverage: what DSRL's noise steering starts from", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])),
             f"Machine: {meta.get('machine', '-')}; versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
             "", " ".join(__doc__.split("\n\n")[1].split()), "",
             "| task | checkpoint | zero noise | random noise (mean of K) | best-of-K layouts | K | DSRL first evals | DSRL best eval |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(data["rows"], key=lambda r: (r["task"], r["family"], r["recipe"])):
        first, best = dsrl_evals(off, r)
        lines.append(f"| {r['task']} | {r['family']} {r['recipe']} | {r['zero']:.2f} | {r['random']:.2f} | "
                     f"{r['best_of_k']:.2f} | {r['draws']} | {' '.join(f'{x:.2f}' for x in first) or '-'} | "
                     f"{_dash(None if best is None else f'{best:.2f}')} |")
    lines += ["", "Per-layout success from random noise (fraction of the K draws), in layout order:", ""]
    for r in sorted(data["rows"], key=lambda r: (r["task"], r["family"], r["recipe"])):
        lines.append(f"- {r['task']} {r['family']} {r['recipe']}: " + " ".join(f"{x:.2f}" for x in r["per_layout"]))
    (out / "noise_coverage.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--tasks", nargs="*", default=None, help="only these tasks (default: every off-policy checkpoint)")
    ap.add_argument("--work", default="runs/bench_ft")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    off = json.loads((out / "finetune_offpolicy.json").read_text())
    js = out / "noise_coverage.json"
    for c in ([] if args.report else checkpoints(off, Path(args.work))):
        data = json.loads(js.read_text()) if js.exists() else {"rows": []}
        if (args.tasks and c["task"] not in args.tasks) or any(
                (r["task"], r["family"], r["recipe"], r["draws"]) == (c["task"], c["family"], c["recipe"], args.draws)
                for r in data["rows"]):
            continue
        print(f"[coverage] {c['task']} {c['family']} {c['recipe']}", flush=True)
        row = measure(c, args.draws)
        print(f"[coverage]   zero {row['zero']:.2f}, random {row['random']:.2f}, best-of-{args.draws} {row['best_of_k']:.2f}",
              flush=True)
        append_row(js, row, {"draws": args.draws}, keep_first_setup=True,
                   replaces=lambda r, c=c: (r["task"], r["family"], r["recipe"]) == (c["task"], c["family"], c["recipe"]))
    if js.exists():
        write_report(json.loads(js.read_text()), off, out)


if __name__ == "__main__":
    main()
