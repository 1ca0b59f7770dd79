"""Learning results under the protocol (genpolicy/protocol.py): held-out test episodes, fixed budgets, every seed.

Stage `bc` (this file's first stage): behaviour cloning in regimes of 5, 10 and 25 clean scripted demonstrations on
Meta-World's hard and very-hard tasks, diffusion (DDIM 10) and flow (Euler 10; its shortcut head also evaluated with
one step), one fixed BC budget for every cell (no network is undertrained to make it weak). Each cell is scored on the
protocol's 100 test episodes from zero and from random initial noise. The regimes are nested (the 5 demos are the
first 5 of the 10, which are the first 10 of the 25), so the 10 and 25 rows are a 5-demo start's `bc_2x_demos` and
`bc_5x_demos` baselines. A cell whose test success from zero and from random noise both lie in [0.1, 0.6] qualifies
as a weak start for the fine-tuning stage.

Stage `finetune`: from the weak start of a task (the fewest demos whose flow cell qualifies, BC seed 0; DPPO from the
diffusion cell on the same demos, if its random-noise test success is within 0.1 of the flow cell's), each algorithm
runs with the suite's shipped preset, the suite's budget (the same env steps for every algorithm, fixed here before
running) and a seed: nothing else. Test success on the same 100 test episodes at 1/4, 1/2 and all of the budget
(`test.episodes`, `test.fractions`), plus the baselines (start from zero / random noise, BC on 2x and 5x the demos)
-> benchmarks/results/learning.md/.json/.png through `genpolicy.protocol` (IQM, stratified-bootstrap CIs, profiles).
An interrupted row resumes from its checkpoint only with the same settings; a finished row is never run again.

Writes benchmarks/results/learning_bc.md and learning_bc.json (`rows`: one per task, demos, seed and family; `meta`:
machine, versions, seed ranges, commands). Rows are appended as they finish (atomic, locked); a rerun skips them, so
an interrupted run resumes. Nothing here takes settings beyond the listed flags, and every flag is stored in `meta`.

    .venv/bin/python benchmarks/learning.py --stage bc --seeds 0 --threads 1
    .venv/bin/python benchmarks/learning.py --stage finetune --tasks metaworld/pick-place-v3 --algos dsrl --seeds 0
    .venv/bin/python benchmarks/learning.py --report
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

import numpy as np  # noqa: E402

from genpolicy.config import DataConfig, EvalConfig, OptimConfig, PolicyConfig, RunConfig, TaskConfig, TrainConfig  # noqa: E402
from genpolicy.protocol import SEEDS, _write_atomic, append_dict_rows, iqm, start_baselines, weak_start_qualifies  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
HARD = ["metaworld/assembly-v3", "metaworld/pick-place-v3", "metaworld/stick-pull-v3", "metaworld/shelf-place-v3",
        "metaworld/peg-insert-side-v3", "metaworld/disassemble-v3", "metaworld/hammer-v3", "metaworld/pick-place-wall-v3"]
DEMOS = [5, 10, 25]
BASELINE_DEMOS = [20, 50]  # a 10-demo start's 2x and 5x baselines
FAMILIES = ["diffusion", "flow"]
BC_STEPS = 2000  # the suite's fixed BC budget (benchmarks/results/bc_metaworld.md: enough for 50 clean demos)
TEST_EPISODES = 100
# per suite: the shipped preset and the env-step budget of every fine-tuning row (fixed before running)
SUITES = {"metaworld": {"preset": "metaworld", "budget": 200_000}, "toy": {"preset": "toy", "budget": 1_200}}
ALGOS = ["dppo", "fpo", "reinflow", "dsrl", "expo"]


def demo_seed(seed: int) -> int:
    """Demonstration episodes of training seed s start at 10_000 * s: disjoint per seed, inside the demos range."""
    s = 10_000 * seed
    assert s + max(DEMOS + BASELINE_DEMOS) * 3 < SEEDS.demos.stop
    return s


def row_key(r: dict) -> tuple:
    return r["task"], r["n_demos"], r["seed"], r["family"]


def load(js: Path) -> dict:
    return json.loads(js.read_text()) if js.exists() else {"rows": []}


def add_rows(js: Path, rows: list[dict], meta_extra: dict) -> None:
    append_dict_rows(js, rows, row_key, meta_extra)  # locked, atomic: two workers may share the file


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


def pick_start(task: str, bc_rows: list[dict]) -> dict:
    """The task's weak start: the fewest demos whose seed-0 flow cell qualifies; its diffusion twin for DPPO when the
    two agree within 0.1 from random noise. Returns {n_demos, flow, diffusion (or None), baselines...}."""
    cell = lambda d, f: next((r for r in bc_rows if (r["task"], r["n_demos"], r["seed"], r["family"]) == (task, d, 0, f)), None)  # noqa: E731
    for d in DEMOS:
        flow = cell(d, "flow")
        if flow and flow["weak_start"]:
            diff = cell(d, "diffusion")
            ok = diff is not None and abs(diff["test_success_random_noise"] - flow["test_success_random_noise"]) <= 0.1
            return {"n_demos": d, "flow": flow, "diffusion": diff if ok else None,
                    "bc_2x": cell(2 * d, "flow"), "bc_5x": cell(5 * d, "flow")}
    raise SystemExit(f"{task}: no weak start among the BC cells ({DEMOS} demos, seed 0, flow): run --stage bc first")


def finetune_row(task: str, suite: str, algo: str, seed: int, start: dict, work: Path) -> "LearningRow | None":
    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig
    from genpolicy.finetune.ppo import finetune
    from genpolicy.protocol import LearningRow, config_diff, resume_or_restart

    s = SUITES[suite]
    src = start["diffusion"] if algo == "dppo" else start["flow"]
    if src is None:
        print(f"[ft] {task} dppo: no diffusion start within 0.1 of the flow start; row not run", flush=True)
        return None
    run_dir = work / f"{task.replace('/', '_')}_d{start['n_demos']}_{algo}_b{s['budget']}_seed{seed}"
    base = [f"algo={algo}", f"ckpt={src['checkpoint']}", f"task={task}", f"preset={s['preset']}", f"run.seed={seed}",
            f"run.dir={run_dir}", "run.progress=false", f"test.episodes={TEST_EPISODES}"]
    probe = compose("finetune", base, FinetuneConfig)
    if algo in ("dsrl", "expo"):
        budget = [f"offpolicy.env_steps={s['budget']}"]
    else:  # iterations that cover the budget; test points sit at the same fractions of it
        from genpolicy.training.checkpoint import read_config

        ta = read_config(src["checkpoint"])["policy"]["config"]["n_action_steps"]
        per_iter = probe.ppo.n_envs * probe.ppo.n_steps * ta  # env steps of an iteration if no episode ends early
        budget = [f"ppo.iterations={-(-s['budget'] // per_iter)}"]
    overrides = base + budget
    resume = resume_or_restart(run_dir, overrides)  # same overrides (budget included) and a checkpoint, or start over
    cfg = compose("finetune", overrides + (["run.resume=true"] if resume else []), FinetuneConfig)
    res = finetune(cfg)
    pts = res["test_curve"]
    from genpolicy.protocol import budget_points

    curve = [[p, c["test_success"]] for p, c in zip(budget_points(s["budget"]), pts)]
    diff = config_diff(compose("finetune", overrides, FinetuneConfig), FinetuneConfig())
    own = algo_start(task, algo, probe, src, work)  # the start under the sampler this algorithm fine-tunes on
    return LearningRow(algo=algo, task=task, n_demos=start["n_demos"], seed=seed, preset=s["preset"], config_diff=diff,
                       env_steps_budget=s["budget"], test_episodes=pts[-1]["test_episodes"],
                       test_success=curve[-1][1], test_curve=curve, test_return=pts[-1]["test_return"],
                       start_test_return=own["test_return_random_noise"],
                       start_test_success_zero_noise=own["test_success_zero_noise"],
                       start_test_success_random_noise=own["test_success_random_noise"], wallclock_s=res["wallclock_s"],
                       extra={"test_points": pts, "start_checkpoint": src["checkpoint"], "run_dir": str(run_dir),
                              "start_sampler": own["sampler"], "start_within_0.1": own["within_0.1"]})


def algo_start(task: str, algo: str, probe, src: dict, work: Path) -> dict:
    """Rule 7 (one start per task): ReinFlow and EXPO fine-tune the flow checkpoint under the sampler their preset
    section names (ReinFlow: Euler-4 with learned noise; EXPO: candidates from the one-step shortcut head), DSRL may
    steer another deterministic map. Their start is that sampler on the same checkpoint, scored here on the same 100
    test episodes from zero and random noise, and held to the DPPO twin's rule: within 0.1 of the shared start. Cached
    per (checkpoint, sampler) in <work>/algo_starts.json."""
    from genpolicy.protocol import start_baselines
    from genpolicy.training.checkpoint import load_policy, read_config

    pc = read_config(src["checkpoint"])["policy"]["config"]
    sec = {"reinflow": probe.reinflow, "expo": probe.expo, "dsrl": probe.dsrl}.get(algo)
    sampler = (sec.sampler or pc["sampler"]) if sec is not None else pc["sampler"]
    steps = (sec.steps or pc["steps"]) if sec is not None else pc["steps"]
    same = {"test_success_zero_noise": src["test_success_zero_noise"],
            "test_success_random_noise": src["test_success_random_noise"],
            "test_return_random_noise": src["test_return_random_noise"]}
    label = f"{sampler}-{steps}"
    if (sampler, steps) == (pc["sampler"], pc["steps"]):
        return {**same, "sampler": label, "within_0.1": True}
    cache = work / "algo_starts.json"
    data = json.loads(cache.read_text()) if cache.exists() else {}
    key = f"{src['checkpoint']}|{label}"
    if key not in data:
        b = start_baselines(load_policy(src["checkpoint"]), task, TEST_EPISODES,
                            sampler={"sampler": sampler, "steps": steps})
        data = json.loads(cache.read_text()) if cache.exists() else {}
        data[key] = {"test_success_zero_noise": b.success_zero_noise, "test_success_random_noise": b.success_random_noise,
                     "test_return_random_noise": b.return_random_noise}
        _write_atomic(cache, json.dumps(data, indent=2))
    own = data[key]
    ok = all(abs(own[k] - same[k]) <= 0.1 for k in ("test_success_zero_noise", "test_success_random_noise"))
    return {**own, "sampler": label, "within_0.1": ok}


def baseline_rows(task: str, suite: str, start: dict) -> list:
    """The start from zero and random noise, and BC on 2x and 5x the demonstrations (seed 0), on the test episodes."""
    from genpolicy.protocol import LearningRow

    f, out = start["flow"], []
    pairs = [("bc_zero_noise", f, "test_success_zero_noise", "test_return_zero_noise"),
             ("bc_random_noise", f, "test_success_random_noise", "test_return_random_noise"),
             ("bc_2x_demos", start["bc_2x"], "test_success_random_noise", "test_return_random_noise"),
             ("bc_5x_demos", start["bc_5x"], "test_success_random_noise", "test_return_random_noise")]
    for name, r, k, kr in pairs:
        if r is None:
            continue
        out.append(LearningRow(algo=name, task=task, n_demos=start["n_demos"], seed=0, preset=SUITES[suite]["preset"],
                               config_diff={}, env_steps_budget=SUITES[suite]["budget"], test_episodes=r["test_episodes"],
                               test_success=r[k], test_curve=[], test_return=r[kr], start_test_return=f["test_return_random_noise"],
                               start_test_success_zero_noise=f["test_success_zero_noise"],
                               start_test_success_random_noise=f["test_success_random_noise"], wallclock_s=0.0,
                               extra={"demos_used": r["n_demos"], "checkpoint": r["checkpoint"]}))
    return out


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
    ap.add_argument("--stage", choices=["bc", "finetune"], default="bc")
    ap.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
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
    bad = [d for d in args.demos if d not in DEMOS + BASELINE_DEMOS]
    if bad:
        sys.exit(f"--demos {bad}: the regimes are {DEMOS} (nested, so 10 and 25 are a 5-demo start's 2x and 5x; "
                 f"{BASELINE_DEMOS} give a 10-demo start's)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "learning_bc.json", out / "learning_bc.md"
    if args.report:  # both tables from their JSON rows, nothing run
        from genpolicy.protocol import load_rows, write_report as protocol_report

        write_report(js, md)
        print(md)
        if (out / "learning.json").exists():
            protocol_report(load_rows(out / "learning.json"), out / "learning.md")
            print(out / "learning.md")
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage == "finetune":
        from genpolicy.protocol import append_row, load_rows, write_report as protocol_report

        lj = out / "learning.json"
        bc_rows = load(js)["rows"]
        for task in args.tasks:
            suite = task.split("/")[0]
            start = pick_start(task, bc_rows)
            for row in baseline_rows(task, suite, start):
                append_row(lj, row)
            for seed in args.seeds:
                for algo in args.algos:
                    if any(r.key == (algo, task, start["n_demos"], seed, "") for r in load_rows(lj)):
                        continue  # finished rows are never run again
                    row = finetune_row(task, suite, algo, seed, start, work / "ft")
                    if row is not None:
                        # what shared the machine: the worker's own note and the load it saw (2 cores here)
                        row.extra.update(shared=args.shared, loadavg_15m_at_end=round(os.getloadavg()[2], 2))
                        append_row(lj, row)
                        print(f"[ft] {task} {algo} seed {seed}: test {row.test_curve}", flush=True)
                        protocol_report(load_rows(lj), out / "learning.md")
        return
    for seed in args.seeds:
        for d in args.demos:
            for task in args.tasks:
                for fam in args.families:
                    done = {row_key(r) for r in load(js)["rows"]}
                    if (task, d, seed, fam) in done:
                        continue
                    t0 = time.time()
                    rows = bc_cell(task, d, seed, fam, work)
                    for r in rows:  # what shared the machine: the worker's note and the load it saw (2 cores here)
                        r.update(shared=args.shared, loadavg_15m_at_end=round(os.getloadavg()[2], 2))
                    add_rows(js, rows, {"shared": args.shared} if args.shared else {})
                    for r in rows:
                        print(f"[bc] {task} d{d} {r['family']} seed {seed}: test {r['test_success_zero_noise']:.2f} "
                              f"(zero noise) / {r['test_success_random_noise']:.2f} (random){' weak' if r['weak_start'] else ''}"
                              f" [{time.time() - t0:.0f} s]", flush=True)
                    write_report(js, md)


if __name__ == "__main__":
    main()
