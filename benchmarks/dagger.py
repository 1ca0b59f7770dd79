"""Learning from corrections: test success against teacher-labelled env steps for BC (more demonstrations), DAgger
and HG-DAgger (genpolicy/dagger.py), under the protocol (genpolicy/protocol.py: every success is on the 100 held-out
test episodes, seeds from 2000000, that no decision saw; every seed of a cell is reported).

Per task and seed:
  * bc:        BC on the first n of the teacher's demonstrations (nested), n in --bc-demos; labelled steps = the
               demonstrations' steps;
  * dagger:    round 0 = BC on --init-demos demonstrations, then --rounds rounds of --episodes-per-round rollouts,
               beta-mixture per chunk (--beta, times --beta-decay every round), every visited state labelled, warm-started
               retraining on the aggregate;
  * hg_dagger: the same, but the simulated teleoperator (the teacher, deviation rule: --threshold, hands back after
               --hold-steps) takes over and only its segments are labelled. The teacher's rule looks at every student
               step; looks are not labels (a person watching the robot), only takeover steps are counted.
The teacher is the task's expert: Meta-World's scripted policy, or the SAC expert for gym/hopper-v5
(data/experts/gym_hopper-v5, from `genpolicy data expert task=gym/hopper-v5`). Every BC budget (--bc-steps) is the
same for BC cells and DAgger rounds. Hopper has no success notion: its rows carry test_return and success 0.

Targets checked in the report: (1) DAgger or HG-DAgger reaches the mean test success of BC on the most demonstrations
(50) with at most 1/3 of BC's labelled steps, on >= 2 of the Meta-World tasks; (2) HG-DAgger needs fewer labels than
DAgger for the same success (the first round reaching the lower of their best mean successes); (3) the intervention
rate per round.

Writes <out>/dagger.md, dagger.json (rows: method, task, seed, round, labelled_steps, interventions,
intervention_rate, test_episodes, test_success, test_return, ...; meta: machine, versions, commands) and one plot
per task (dagger_<task>.png). Rows are appended atomically as they finish; a rerun skips finished rows and resumes an
interrupted DAgger run at its first unfinished round.

    python benchmarks/dagger.py --seeds 0 1 2 --threads 1                     # the full benchmark (hours)
    python benchmarks/dagger.py --quick --out /tmp/dagger_quick                # a minutes-long smoke run (toy task)
    python benchmarks/dagger.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from genpolicy.protocol import MIN_TEST_EPISODES, _meta, _write_atomic  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
# BC from 10 demos should be <= 0.6 (the report checks it): learning_bc.md has pick-place 0.64/0.59 and shelf-place
# 0.65/0.61 at 10 demos (seed 0, zero/random noise), peg-insert-side 0.26 at 5; pick-place-wall-v3 (0.43 at 5) and
# disassemble-v3 (0.53 at 5) are the next candidates (--tasks)
MW_TASKS = ["metaworld/pick-place-v3", "metaworld/shelf-place-v3", "metaworld/peg-insert-side-v3"]
TASKS = MW_TASKS + ["gym/hopper-v5"]
METHODS = ("bc", "dagger", "hg_dagger")
KEY = ("method", "task", "seed", "round")


def demo_seed(seed: int) -> int:
    return 1000 * seed  # the benchmarks' demonstration seeds (protocol's demos range)


# ----------------------------------------------------------------------------------------------------------------------
# rows
# ----------------------------------------------------------------------------------------------------------------------
def load(js: Path) -> dict:
    return json.loads(js.read_text()) if js.exists() else {"rows": [], "meta": {}}


def done(js: Path, key: tuple) -> bool:
    return any(tuple(r[k] for k in KEY) == key for r in load(js)["rows"])


def append(js: Path, row: dict, command: str) -> None:
    """Add a row unless its key is there: under a file lock (workers on other seeds share the file), written to a
    temporary file and renamed, so an interrupted write leaves the previous file whole."""
    import fcntl

    js.parent.mkdir(parents=True, exist_ok=True)
    with open(js.with_name(js.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load(js)
        if any(tuple(r[k] for k in KEY) == tuple(row[k] for k in KEY) for r in data["rows"]):
            return
        data["rows"].append(row)
        data["meta"] = _meta(data.get("meta", {}), command)
        _write_atomic(js, json.dumps(data, indent=2, default=float))


# ----------------------------------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------------------------------
def policy_cfg(quick: bool):
    from genpolicy.config import PolicyConfig

    if quick:
        return PolicyConfig(type="flow", n_obs_steps=1, horizon=8, n_action_steps=4, width=128, depth=2, time_dim=32,
                            shortcut=False, sampler="euler", steps=5)
    return PolicyConfig(type="flow", sampler="euler", steps=10)  # the suite's BC recipe (benchmarks/learning.py)


def test_eval(ckpt: str, task: str, n: int) -> dict:
    from genpolicy.protocol import evaluate_split
    from genpolicy.training.checkpoint import load_policy

    t0 = time.time()
    res = evaluate_split(load_policy(ckpt), task, "test", n, n_envs=10)
    return {"test_success": res["success_rate"], "test_return": res["mean_return"], "test_episodes": res["n_episodes"],
            "test_eval_s": round(time.time() - t0, 1)}


def run_bc(task: str, seed: int, demos: list[int], a, work: Path, js: Path, command: str) -> None:
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.datasets.replay_buffer import ReplayBuffer
    from genpolicy.training.bc import train

    name = task.replace("/", "_")
    pool = work / f"{name}_demos{max(demos)}_seed{seed}.zarr"
    for n in demos:
        if done(js, ("bc", task, seed, n)):
            continue
        if not pool.exists():  # one pool per task and seed; the cells take its first n episodes (nested)
            generate(task, max(demos), seed=demo_seed(seed), progress=False, expert_path=a.expert_path).save(pool)
        rb = ReplayBuffer.load(pool)
        sub = ReplayBuffer.from_episodes([rb.episode(i) for i in range(n)], attrs=rb.attrs)
        data = work / f"{name}_d{n}_seed{seed}.zarr"
        sub.save(data)
        run_dir = work / f"{name}_bc{n}_seed{seed}"
        cfg = TrainConfig(task=TaskConfig(name=task), policy=policy_cfg(a.quick),
                          data=DataConfig(path=str(data), seed=seed),
                          train=OptimConfig(steps=a.bc_steps, batch_size=a.batch_size),
                          eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0, split="selection"),
                          run=RunConfig(dir=str(run_dir), seed=seed, log_every=10**6, ckpt_every=10**9,
                                        progress=False,
                                        resume=any(c.name.isdigit() for c in (run_dir / "checkpoints").glob("*"))))
        t0 = time.time()
        res = train(cfg)
        row = {"method": "bc", "task": task, "seed": seed, "round": n, "demos": n, "labelled_steps": sub.n_steps,
               "interventions": 0, "intervention_rate": None, "train_min": round((time.time() - t0) / 60, 2),
               **test_eval(res["final_checkpoint"], task, a.test_episodes), "checkpoint": res["final_checkpoint"]}
        append(js, row, command)
        print(f"bc {task} seed {seed} demos {n}: {row['labelled_steps']} labels, test success "
              f"{row['test_success']:.2f} return {row['test_return']:.1f}", flush=True)


def run_corrections(method: str, task: str, seed: int, a, work: Path, js: Path, command: str) -> None:
    from genpolicy.config import DataConfig, EvalConfig, InterventionConfig, OptimConfig, RunConfig, TaskConfig
    from genpolicy.dagger import DaggerConfig, read_state, run_dagger

    if all(done(js, (method, task, seed, r)) for r in range(a.rounds + 1)):
        return
    run_dir = work / f"{task.replace('/', '_')}_{method}_seed{seed}"
    cfg = DaggerConfig(task=TaskConfig(name=task), policy=policy_cfg(a.quick),
                       train=OptimConfig(steps=a.bc_steps, batch_size=a.batch_size),
                       eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0, split="selection"),
                       run=RunConfig(dir=str(run_dir), seed=seed, log_every=10**6, ckpt_every=a.ckpt_every,
                                     progress=False, resume=bool(read_state(run_dir)["rounds"])),
                       data=DataConfig(seed=demo_seed(seed)), mode=method, rounds=a.rounds, init_demos=a.init_demos,
                       episodes_per_round=a.episodes_per_round, beta=a.beta, beta_decay=a.beta_decay,
                       intervention=InterventionConfig(threshold=a.threshold, hold_steps=a.hold_steps),
                       expert_path=a.expert_path)
    t0 = [time.time()]

    def after(r: int, row: dict) -> None:
        if done(js, (method, task, seed, r)):
            return
        out = {"method": method, "task": task, "seed": seed, "round": r, "demos": a.init_demos,
               "labelled_steps": row["labelled_steps"], "interventions": row["interventions"],
               "intervention_rate": row["intervention_rate"], "intervention_steps": row["intervention_steps"],
               "beta": row["beta"], "rollout_success": row["rollout_success"], "new_labels": row["labels"],
               "aggregate_steps": row["aggregate_steps"], "train_min": round((time.time() - t0[0]) / 60, 2),
               **test_eval(row["checkpoint"], task, a.test_episodes), "checkpoint": row["checkpoint"]}
        append(js, out, command)
        rate = "-" if out["intervention_rate"] is None else f"{out['intervention_rate']:.2f}"
        print(f"{method} {task} seed {seed} round {r}: {out['labelled_steps']} labels, intervention rate {rate}, "
              f"test success {out['test_success']:.2f} return {out['test_return']:.1f}", flush=True)
        t0[0] = time.time()

    res = run_dagger(cfg, after_round=after)
    for r, row in enumerate(res["rounds"]):  # rounds finished before an interruption, evaluated now
        after(r, row)


# ----------------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------------
def _mean_by(rows: list[dict], method: str, task: str) -> list[dict]:
    """Per round (or demos): mean labelled steps, test success, return and intervention rate over seeds."""
    out = []
    for r in sorted({x["round"] for x in rows if x["method"] == method and x["task"] == task}):
        sel = [x for x in rows if (x["method"], x["task"], x["round"]) == (method, task, r)]
        rates = [x["intervention_rate"] for x in sel if x.get("intervention_rate") is not None]
        out.append({"round": r, "seeds": sorted(x["seed"] for x in sel),
                    "labelled_steps": float(np.mean([x["labelled_steps"] for x in sel])),
                    "test_success": float(np.mean([x["test_success"] for x in sel])),
                    "test_return": float(np.mean([x["test_return"] for x in sel])),
                    "per_seed": [round(x["test_success"], 2) for x in sorted(sel, key=lambda x: x["seed"])],
                    "intervention_rate": float(np.mean(rates)) if rates else None,
                    "interventions": float(np.mean([x["interventions"] for x in sel]))})
    return out


def _labels_to_reach(curve: list[dict], level: float, metric: str) -> float | None:
    """Mean labelled steps of the first correction round (>= 1: round 0 is plain BC on the initial demonstrations)
    whose mean metric reaches `level` (None: never)."""
    return next((c["labelled_steps"] for c in curve if c["round"] >= 1 and c[metric] >= level - 1e-9), None)


def report(js: Path, md: Path) -> None:
    data = load(js)
    rows = data["rows"]
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows)]
    lines = ["# Learning from corrections: BC vs DAgger vs HG-DAgger (test split)", "",
             f"Every success: the protocol's held-out **test** episodes (seeds from 2000000, {MIN_TEST_EPISODES} per "
             "evaluation unless stated in the rows; no decision saw them), final checkpoints (nothing selected). Budget "
             "axis: teacher-labelled env steps (demonstration steps; DAgger: every visited state of its rollouts; "
             "HG-DAgger: the takeover steps only). Means over seeds; per-seed values in brackets. Written by "
             "`benchmarks/dagger.py` (its docstring states the protocol).", "",
             "Commands: " + "; ".join(f"`{c}`" for c in data.get("meta", {}).get("commands", [])), ""]
    verdicts = {}
    for task in tasks:
        metric = "test_return" if task.startswith("gym/") else "test_success"
        curves = {m: _mean_by(rows, m, task) for m in METHODS}
        lines += [f"## {task}", "", f"| method | round / demos | seeds | labelled steps | {metric} (per seed) | "
                                    "intervention rate | takeovers |", "|---|---|---|---|---|---|---|"]
        for m in METHODS:
            for c in curves[m]:
                rate = "-" if c["intervention_rate"] is None else f"{c['intervention_rate']:.2f}"
                per = [round(x["test_return"], 1) for x in rows if (x["method"], x["task"], x["round"]) == (m, task, c["round"])] \
                    if metric == "test_return" else c["per_seed"]
                takeovers = f"{c['interventions']:.1f}" if m == "hg_dagger" and c["round"] >= 1 else "-"
                lines.append(f"| {m} | {'demos ' if m == 'bc' else 'round '}{c['round']} | {len(c['seeds'])} | "
                             f"{c['labelled_steps']:.0f} | {c[metric]:.2f} {per} | {rate} | {takeovers} |")
        lines.append("")
        bc = curves["bc"]
        ten = next((c for c in bc if c["round"] == 10), None)
        if ten is not None and metric == "test_success":  # the task rule: BC from 10 demos at most 0.6
            lines.append(f"Task rule: BC on 10 demos {ten[metric]:.2f} -> "
                         f"**{'qualifies' if ten[metric] <= 0.6 else 'does not qualify'}** (<= 0.6).")
        if bc:
            ref = bc[-1]  # BC on the most demonstrations
            level, budget = ref[metric], ref["labelled_steps"] / 3
            got = {m: _labels_to_reach(curves[m], level, metric) for m in ("dagger", "hg_dagger")}
            ok = any(v is not None and v <= budget for v in got.values())
            verdicts[task] = ok
            lines.append(f"Target 1: BC on {ref['round']} demos reaches {level:.2f} with {ref['labelled_steps']:.0f} "
                         f"labels; 1/3 of that is {budget:.0f}. Labels to reach it (rounds >= 1): DAgger "
                         f"{got['dagger'] if got['dagger'] is not None else 'never'}, HG-DAgger "
                         f"{got['hg_dagger'] if got['hg_dagger'] is not None else 'never'} -> **{'met' if ok else 'not met'}**.")
        if curves["dagger"] and curves["hg_dagger"]:
            best = {m: max((c[metric] for c in curves[m] if c["round"] >= 1), default=None) for m in ("dagger", "hg_dagger")}
            if None not in best.values():
                common = min(best.values())
                d, h = (_labels_to_reach(curves[m], common, metric) for m in ("dagger", "hg_dagger"))
                lines.append(f"Target 2: at {metric} {common:.2f} (the lower of the two best round means) DAgger needs "
                             f"{d:.0f} labels, HG-DAgger {h:.0f} -> **{'HG-DAgger fewer' if h < d else 'not fewer'}**.")
        lines += ["", f"![{task}](dagger_{task.replace('/', '_')}.png)", ""]
        _plot(curves, task, metric, md.parent / f"dagger_{task.replace('/', '_')}.png", rows)
    mw = {t: v for t, v in verdicts.items() if t.startswith("metaworld/")}
    if mw:
        lines.insert(6, f"**Target 1 over Meta-World tasks: met on {sum(mw.values())} of {len(mw)}** "
                        f"(needs >= 2 of 3). " + ", ".join(f"{t}: {'met' if v else 'not met'}" for t, v in mw.items()))
        lines.insert(7, "")
    md.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(md, "\n".join(lines) + "\n")


def _plot(curves: dict, task: str, metric: str, path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, style in zip(METHODS, ("o-", "s-", "^-")):
        c = curves[m]
        if not c:
            continue
        ax.plot([x["labelled_steps"] for x in c], [x[metric] for x in c], style, label=m)
        pts = [x for x in rows if x["method"] == m and x["task"] == task]
        ax.scatter([x["labelled_steps"] for x in pts], [x[metric] for x in pts], s=8, alpha=0.3)
    ax.set_xlabel("teacher-labelled env steps")
    ax.set_ylabel(f"{metric} (test split)")
    ax.set_title(task)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    # Meta-World's expert episodes end at success after ~50 steps, so BC on 50 demos has ~2500 labels and the 1/3
    # target leaves ~850: the corrections start from 5 demos (~250 labels, BC 0.1-0.3 here) and roll out a few
    # episodes per round (a failing student episode runs 500 steps, all labelled by DAgger)
    p.add_argument("--bc-demos", nargs="+", type=int, default=[5, 10, 20, 30, 50])
    p.add_argument("--init-demos", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--episodes-per-round", type=int, default=3)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--beta-decay", type=float, default=0.5)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--hold-steps", type=int, default=15)
    p.add_argument("--bc-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--test-episodes", type=int, default=MIN_TEST_EPISODES, help="the protocol refuses fewer than 100")
    p.add_argument("--expert-path", default="", help="SAC expert for gym tasks (default data/experts/<task>)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--work", default="", help="run directories (default runs/bench_dagger; --quick: <out>/runs)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: toy task, tiny budgets, 1 seed (a check of the pipeline, not a result)")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the rows")
    a = p.parse_args(argv)
    if a.quick:
        a.tasks = a.tasks or ["toy/bimodal"]
        a.seeds, a.bc_demos, a.init_demos, a.rounds, a.episodes_per_round = a.seeds[:1], [2, 4, 8], 2, 2, 2
        a.bc_steps, a.batch_size, a.hold_steps, a.ckpt_every = 300, 64, 10, 10**9
    a.tasks = a.tasks or TASKS
    out = Path(a.out)
    js, md = out / "dagger.json", out / "dagger.md"
    if not a.report:
        import torch

        torch.set_num_threads(a.threads)
        work = Path(a.work) if a.work else (out / "runs" if a.quick else Path("runs") / "bench_dagger")
        work.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/dagger.py " + " ".join(sys.argv[1:] if argv is None else argv)
        for task in a.tasks:
            for seed in a.seeds:
                for m in a.methods:
                    if m == "bc":
                        run_bc(task, seed, sorted(a.bc_demos), a, work, js, command)
                    else:
                        run_corrections(m, task, seed, a, work, js, command)
                report(js, md)
    report(js, md)
    print(f"wrote {md} and {js.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
