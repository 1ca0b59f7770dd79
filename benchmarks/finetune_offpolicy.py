"""Off-policy fine-tuning benchmark: DSRL and EXPO from the same weak Meta-World BC checkpoints as the on-policy one.

Uses benchmarks/finetune_onpolicy.py's weak checkpoints (same work directory, same demos and BC settings; flow family)
and the `metaworld` preset's offpolicy/dsrl/expo sections. Writes benchmarks/results/finetune_offpolicy.md, .json
(a list `rows`, one per algorithm, task and seed, same keys as finetune_onpolicy.json) and one plot per task with all
five algorithms (on-policy curves read from finetune_onpolicy.json when present). Interrupted rows resume like the
on-policy ones (one run directory per task, algorithm, checkpoint recipe, budget and seed).

    .venv/bin/python benchmarks/finetune_offpolicy.py --seeds 0 --threads 1
    .venv/bin/python benchmarks/finetune_offpolicy.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genpolicy.cli import compose  # noqa: E402
from genpolicy.config import FinetuneConfig  # noqa: E402
from genpolicy.finetune.ppo import finetune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_onpolicy import FAMILY, TASKS, _dash, _name, append_row, resume_or_restart, weak_bc  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
ALGOS = ["dsrl", "expo"]


def run_one(task: str, algo: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    bc = weak_bc(task, args.family, args, work)
    tag = f"_{args.tag}" if args.tag else ""
    fam = "" if args.family == "flow" else f"_{args.family}"  # flow rows keep the run directories they were made with
    run_dir = work / f"{task.replace('/', '_')}_{algo}{tag}{fam}_{bc['recipe']}_b{args.env_steps}_seed{seed}"  # one per row
    overrides = [f"algo={algo}", f"ckpt={bc['ckpt']}", f"task={task}", "preset=metaworld", f"run.dir={run_dir}",
                 f"run.seed={seed}", "run.progress=false", f"offpolicy.env_steps={args.env_steps}", *args.overrides]
    cfg = compose("finetune", overrides + resume_or_restart(run_dir, overrides), FinetuneConfig)
    res = finetune(cfg)
    return {"algo": algo, "task": task, "seed": seed, "bc_success_50ep": bc["success"],
            "start_success": res["start_success"], "final_success": res["final_success"],
            "start_return": res["start_return"], "final_return": res["final_return"], "env_steps": res["env_steps"],
            "wallclock_s": res["wallclock_s"], "env_steps_to_90": res["env_steps_to_90"],
            "wallclock_s_to_90": res["wallclock_s_to_90"], "updates": res["updates"], "curve": res["curve"],
            "eval_episodes": cfg.eval.n_episodes, "utd": cfg.offpolicy.utd, "critic_width": cfg.offpolicy.critic_width,
            "bc_recipe": _args_recipe(args), "overrides": list(args.overrides), "env_steps_budget": args.env_steps,
            "tag": args.tag, "family": args.family, "stopped_early": False}  # the off-policy loop runs its whole budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--algos", nargs="+", default=ALGOS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--env-steps", type=int, default=60_000)
    ap.add_argument("--demos", type=int, default=10)
    ap.add_argument("--demo-noise", type=float, default=1.0)
    ap.add_argument("--detour", type=float, default=0.3)
    ap.add_argument("--bc-steps", type=int, default=120)
    ap.add_argument("--family", choices=["flow", "diffusion"], default="flow",
                    help="BC checkpoint family: the flow checkpoint FPO and ReinFlow start from, or a diffusion one "
                         "(DDIM, eta=0 under DSRL) like DPPO's, trained on the same demos for --bc-steps")
    ap.add_argument("--work", default="runs/bench_ft")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--tag", default="", help="label for a variant (rows run with other overrides, e.g. dsrl.variant=na): "
                    "part of the row's key and run directory, shown as 'algo [tag]'")
    ap.add_argument("overrides", nargs="*", help="extra finetune overrides, e.g. offpolicy.utd=1")
    args = ap.parse_args()
    args.bc_steps_diffusion = 0  # weak_bc's recipe then takes --bc-steps for either family
    if args.threads:
        torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    js = out / "finetune_offpolicy.json"
    for task in ([] if args.report else args.tasks):
        for algo in args.algos:
            for seed in args.seeds:
                data = json.loads(js.read_text()) if js.exists() else {"rows": []}
                meta = data.get("meta", {})
                if any((r["task"], r["algo"], r["seed"], _recipe(r, meta), _budget(r, meta), r.get("tag", ""),
                        _family(r)) == (task, algo, seed, _args_recipe(args), args.env_steps, args.tag, args.family)
                       for r in data["rows"]):
                    continue
                print(f"[bench] {task} {algo}{' [' + args.tag + ']' if args.tag else ''} seed {seed}", flush=True)
                row = run_one(task, algo, seed, args, work)
                print(f"[bench]   {row['start_success']:.2f} -> {row['final_success']:.2f}, "
                      f"to 90%: {row['env_steps_to_90']} env steps", flush=True)
                append_row(js, row, vars(args) | {"overrides": args.overrides}, keep_first_setup=True)
    if js.exists():
        write_report(json.loads(js.read_text()), out)


def _args_recipe(args: argparse.Namespace) -> str:
    return f"{args.demos} demos, noise {args.demo_noise}, detour {args.detour}, {args.bc_steps} BC steps"


def _recipe(row: dict, meta: dict) -> str:
    """The weak-BC recipe of a row (rows written before it was recorded take the file's setup)."""
    return row.get("bc_recipe") or "{demos} demos, noise {demo_noise}, detour {detour}, {bc_steps} BC steps".format(
        **meta.get("setup", {}))


def _short(recipe: str) -> str:
    """'3 demos, noise 1.0, detour 0.3, 300 BC steps' -> 'd3_n1.0_t0.3_s300' (the on-policy rows' spelling)."""
    m = re.match(r"(\d+) demos, noise ([\d.]+), detour ([\d.]+), (\d+) BC steps", recipe)
    return f"d{m[1]}_n{m[2]}_t{m[3]}_s{m[4]}" if m else recipe


def _budget(row: dict, meta: dict) -> int | None:
    """A row's env-step budget (rows before the key was recorded take the file's setup)."""
    return row.get("env_steps_budget", meta.get("setup", {}).get("env_steps"))


def _family(row: dict) -> str:
    """The row's BC checkpoint family (rows before the key was recorded started from flow checkpoints)."""
    return row.get("family", "flow")


def _ckpt(row: dict, meta: dict) -> str:
    """The row's BC checkpoint in the on-policy rows' spelling, e.g. 'd3_n1.0_t0.3_s300' (flow) or
    'diffusion d10_n1.0_t0.3_s60'."""
    return ckpt_label(_family(row), _short(_recipe(row, meta)))


def ckpt_label(family: str, short: str) -> str:
    """A checkpoint's name in reports: the bare recipe for flow (the family every off-policy row used at first)."""
    return short if family == "flow" else f"{family} {short}"


def _split(ckpt: str) -> tuple[str, str]:
    """'diffusion d10_n1.0_t0.3_s60' -> ('diffusion', 'd10_n1.0_t0.3_s60'); a bare recipe is a flow checkpoint."""
    fam, _, recipe = ckpt.rpartition(" ")
    return fam or "flow", recipe


def variants(rows: list[dict], name: Callable[[dict], str] = _name) -> list[str]:
    """The off-policy rows' labels under `name` ('dsrl', 'dsrl [na_sc1]', 'expo', ...) in report order."""
    return sorted({name(r) for r in rows}, key=lambda n: (ALGOS.index(n.split()[0]), n))


def longest_per_seed(rows: list[dict], meta: dict) -> list[dict]:
    """One row per seed: the run with the largest env-step budget (a longer rerun supersedes a short probe)."""
    best: dict[int, dict] = {}
    for r in rows:
        if r["seed"] not in best or (_budget(r, meta) or 0) > (_budget(best[r["seed"]], meta) or 0):
            best[r["seed"]] = r
    return [best[s] for s in sorted(best)]


def _first_eval(row: dict) -> str:
    """The steered policy's first evaluation after the start, as 'success @ env steps'."""
    c = row["curve"]
    return f"{c[1]['success_rate']:.2f} @ {c[1]['env_steps']}" if len(c) > 1 else "-"


def _demos(recipe: str) -> str:
    """'d10_n1.0_t0.3_s120' -> 'd10_n1.0_t0.3': the demonstration set, whatever the BC steps."""
    return recipe.rsplit("_s", 1)[0]


def on_policy_groups(on_rows: list[dict], task: str, ckpt: str) -> dict[str, list[dict]]:
    """On-policy rows on the same task and demonstrations as checkpoint `ckpt` (`_ckpt` spelling), by label. DPPO
    needs a diffusion checkpoint and FPO/ReinFlow a flow one, so rows share the demonstrations, not always the
    checkpoint; a label names the checkpoint when it is not `ckpt`."""
    family, recipe = _split(ckpt)
    groups: dict[str, list[dict]] = {}
    for r in on_rows:
        if r["task"] == task and r.get("bc_recipe") and _demos(r["bc_recipe"]) == _demos(recipe):
            same = FAMILY[r["algo"]] == family and r["bc_recipe"] == recipe
            other = "" if same else f" ({FAMILY[r['algo']]} {r['bc_recipe']})"
            groups.setdefault(_name(r) + other, []).append(r)
    return {k: groups[k] for k in sorted(groups)}


def _at_first_eval(row: dict) -> bool:
    """Whether the row was at 90% at its first evaluation, before any update (DSRL's zero-noise start): no learning."""
    c = row.get("curve", [])
    return row["env_steps_to_90"] is not None and len(c) > 1 and row["env_steps_to_90"] <= c[1]["env_steps"]


def comparison(rows: list[dict], on_rows: list[dict], meta: dict) -> list[str]:
    """Env steps to 90%: each off-policy algorithm against the best on-policy one on the same task and demonstrations."""
    out = ["", "## Env steps to 90% against the best on-policy algorithm (same task, same demonstrations)", "",
           "Median over the seeds that reached 90% (reached / run; per seed the run with the largest budget). The "
           "on-policy candidates are every algorithm and variant run from the same demonstrations: the same flow "
           "checkpoint, or for DPPO a diffusion checkpoint trained on them (named in brackets); the best is the one "
           "with the most seeds at 90%, then the lowest median. Ratio = best on-policy "
           "median / off-policy median; where no on-policy run reached 90%, its longest run's env steps over the "
           "off-policy median bound the ratio from below. A seed whose first evaluation, before any update, already "
           "scored 90% (DSRL's untrained actor plays near-zero noise) is counted apart as 'at first eval' and left out "
           "of the median: it measures the checkpoint, not learning.", "",
           "| task | BC recipe | algo | to 90% (median) | reached | best on-policy | its to 90% | ratio |",
           "|---|---|---|---|---|---|---|---|"]
    med = lambda xs: float(np.median(xs)) if xs else None  # noqa: E731
    for task, recipe in sorted({(r["task"], _ckpt(r, meta)) for r in rows}):
        best, longest = None, 0
        groups = on_policy_groups(on_rows, task, recipe)
        for label, rs in groups.items():
            hit = [r["env_steps_to_90"] for r in rs if r["env_steps_to_90"] is not None]
            longest = max([longest] + [r["env_steps"] for r in rs])
            # the most seeds at 90% first, then the lowest median: one lucky seed of three is not the fastest algorithm
            if hit and (best is None or (-len(hit), med(hit)) < (-best[3], best[1])):
                best = (label, med(hit), f"{len(hit)}/{len(rs)}", len(hit))
        for algo in variants(rows):
            rs = longest_per_seed([r for r in rows if r["task"] == task and _name(r) == algo
                                   and _ckpt(r, meta) == recipe], meta)
            if not rs:
                continue
            at_start = sum(_at_first_eval(r) for r in rs)
            hit = [r["env_steps_to_90"] for r in rs if r["env_steps_to_90"] is not None and not _at_first_eval(r)]
            m = med(hit)
            reached = f"{len(hit)}/{len(rs)}" + (f" (+{at_start} at first eval)" if at_start else "")
            ratio = f"{best[1] / m:.1f}x" if best and m else "-"
            if not best and groups and m:  # on-policy never got there: its longest run bounds the ratio from below
                ratio = f"> {longest / m:.1f}x"
            out.append(f"| {task} | {recipe} | {algo} | {_dash(None if m is None else int(m))} | {reached} | "
                       f"{best[0] + ' (' + best[2] + ')' if best else (f'none reached 90% in {longest} env steps' if groups else 'not run')} | "
                       f"{_dash(None if not best else int(best[1]))} | {ratio} |")
    return out


def write_report(data: dict, out: Path) -> None:
    rows, meta = data["rows"], data.get("meta", {})
    onp = out / "finetune_onpolicy.json"
    on_rows = json.loads(onp.read_text())["rows"] if onp.exists() else []
    lines = ["# Off-policy RL fine-tuning on Meta-World (DSRL, EXPO)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])),
             f"Machine: {meta.get('machine', '-')}; versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
             "", "Start: weak BC checkpoints built by finetune_onpolicy.py's `weak_bc` with the recipe in each row: the flow "
             "checkpoint FPO and ReinFlow start from, or where the recipe says diffusion, one like DPPO's (`--family "
             "diffusion`; DSRL decodes it with DDIM, eta 0) "
             "(success of the BC checkpoint on 20 held-out episodes in `start`). Reward: 1 for the chunk in which "
             "Meta-World reports success (episodes end there) plus `offpolicy.reward_offset` (-1 per chunk in the "
             "preset). Env steps count every executed step (chunk size included). Settings: `preset=metaworld` "
             "(offpolicy / dsrl / expo sections: 4 envs, utd 1, critics 2x256, DSRL-SAC, action magnitude 1.5; EXPO: 4 "
             "critic heads, 4 base + 4 edited candidates, decoded with the flow's one-step shortcut sampler, "
             "`expo.sampler=shortcut expo.steps=1`, about 10x cheaper per update than Euler-10). Rows tagged `na_sc1`: "
             "DSRL-NA (`dsrl.variant=na`: Q on executed chunks, a noise critic distilled from it) with the base map "
             "decoded by the same one-step shortcut sampler (`dsrl.sampler=shortcut dsrl.steps=1`); untagged DSRL rows "
             "are DSRL-SAC on the checkpoint's Euler-10 map. `budget` is the "
             "run's env-step budget; a row's overrides are in the JSON. "
             "Success: 20 held-out episodes of the steered policy, deterministic noise actor.", "",
             "| task | algo | seed | weak BC recipe | budget | start | first eval | final | env steps | to 90% (env steps) | to 90% (s) | updates | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["algo"], r["seed"])):
        recipe = _recipe(r, meta) + ("" if _family(r) == "flow" else f", {_family(r)}")
        lines.append(f"| {r['task']} | {_name(r)} | {r['seed']} | {recipe} | {_dash(_budget(r, meta))} | {r['start_success']:.2f} | {_first_eval(r)} | {r['final_success']:.2f} | "
                     f"{r['env_steps']} | {_dash(r['env_steps_to_90'])} | {_dash(r['wallclock_s_to_90'])} | "
                     f"{r['updates']} | {r['wallclock_s']:.0f} |")
    lines += comparison(rows, on_rows, meta)
    lines += ["", "`start` is the BC checkpoint sampled from random initial noise, the policy every algorithm starts from. "
              "`first eval` is the steered policy at the first evaluation (`success @ env steps`); the preset's first "
              "4,000 env steps are base-policy warm-up, so a first evaluation below 4,000 precedes every update. "
              "DSRL's untrained noise actor outputs noise near zero, and some checkpoints are much stronger from zero "
              "noise than from random noise (the 10-demo drawer-open checkpoint: 0.60 from random noise, 1.00 at the "
              "first evaluation). A 90% at the first evaluation reflects that, not learning; the 3-demo checkpoints "
              "fail whole layouts from any noise. noise_coverage.md has every checkpoint's success from zero noise, "
              "random noise and the best of 16 noise draws per layout."]
    panels = sorted({(r["task"], _demos(_short(_recipe(r, meta)))) for r in rows})  # one plot per task and demo set
    lines += [""] + [f"![{t} {d}]({plot_name(t, d)})" for t, d in panels] + [""]
    (out / "finetune_offpolicy.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for task, demos in panels:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        same = [r for r in rows if r["task"] == task and _demos(_short(_recipe(r, meta))) == demos]
        # labels name a checkpoint only when it is not the panel's reference (the flow one, as FPO and ReinFlow use)
        ref = min({_ckpt(r, meta) for r in same}, key=lambda c: (_split(c)[0] != "flow", c))
        label_of = lambda r: _name(r) + ("" if _ckpt(r, meta) == ref else f" ({_ckpt(r, meta)})")  # noqa: E731
        groups = {a: longest_per_seed([r for r in same if label_of(r) == a], meta) for a in variants(same, label_of)}
        groups |= on_policy_groups(on_rows, task, ref)
        for i, (label, rs) in enumerate(groups.items()):  # one colour per algorithm, one line style per seed
            for j, r in enumerate(rs):
                ax.plot([p["env_steps"] for p in r["curve"]], [p["success_rate"] for p in r["curve"]], color=f"C{i % 10}",
                        ls=["-", "--", ":"][r["seed"] % 3], alpha=0.8, label=f"{label}, n={len(rs)}" if j == 0 else None)
        ax.axhline(0.9, color="gray", ls="--", lw=0.8)
        # on-policy runs use 10-20x the env steps: a log axis above 10k keeps both readable
        ax.set_xscale("symlog", linthresh=10_000)
        ax.set_title(f"{task.split('/')[-1]}, demos {demos}; a run without a checkpoint in its label starts from {ref}",
                     fontsize=7.5)
        ax.set(xlabel="env steps (log scale above 10k)", ylabel="success", ylim=(-0.02, 1.02), xlim=(0, None))
        ax.legend(fontsize=6.5, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / plot_name(task, demos), dpi=110)
        plt.close(fig)


def plot_name(task: str, demos: str) -> str:
    return f"finetune_offpolicy_{task.split('/')[-1]}_{demos}.png"


if __name__ == "__main__":
    main()
