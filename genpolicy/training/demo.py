"""`genpolicy demo`: the whole pipeline on the embedded default task, with a markdown report.

Generates scripted demonstrations, trains a policy with periodic evaluation, evaluates the best checkpoint and
writes report.md (learning curve, success table, video path) into the run directory.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

import genpolicy
from genpolicy.datasets.collect import generate
from genpolicy.training.bc import train
from genpolicy.training.config import TrainConfig
from genpolicy.training.runs import make_run_dir, read_metrics


def plot_learning_curve(metrics: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training/validation loss and evaluation success against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    loss = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if loss:
        ax1.plot(*zip(*loss), label="train loss", color="tab:blue", alpha=0.7)
    if val:
        ax1.plot(*zip(*val), label="val loss (EMA)", color="tab:cyan")
    ax1.set_xlabel("gradient step")
    ax1.set_ylabel("BC loss")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    succ = [(m["step"], m["eval/success_rate"]) for m in metrics if "eval/success_rate" in m]
    if succ:
        ax2.plot(*zip(*succ), "o-", color="tab:red", label="success rate")
    ax2.set_ylabel("success rate")
    ax2.set_ylim(-0.02, 1.02)
    fig.legend(loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.0))
    ax1.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(cfg: TrainConfig) -> Path:
    """Run demos -> BC -> eval and return the path of report.md."""
    t0 = time.time()
    run_dir = make_run_dir(cfg.run, f"demo-{cfg.task.name}-{cfg.policy.type}")
    data_path = run_dir / "demos.zarr"
    rb = generate(cfg.task.name, cfg.data.n_episodes, seed=cfg.data.seed, noise=cfg.data.noise,
                  detour_prob=cfg.data.detour_prob, images=cfg.task.images, keep_failed=cfg.data.keep_failed,
                  max_episode_steps=cfg.task.max_episode_steps, progress=cfg.run.progress)
    rb.save(data_path)
    t_data = time.time() - t0
    tcfg = replace(cfg, data=replace(cfg.data, path=str(data_path)), run=replace(cfg.run, dir=str(run_dir)))
    t1 = time.time()
    res = train(tcfg)
    t_train = time.time() - t1
    metrics = read_metrics(run_dir)
    plot = plot_learning_curve(metrics, run_dir / "learning_curve.png",
                               f"{cfg.task.name}: {cfg.policy.type} policy, {rb.n_episodes} demos")
    ev = res["eval"]
    evals = [m for m in metrics if "eval/success_rate" in m]
    rows = "\n".join(f"| {m['step']} | {m['eval/success_rate']:.2f} | {int(m['eval/n_episodes'])} |" for m in evals)
    videos = ", ".join(f"`{v}`" for v in ev["videos"]) or "(none)"
    report = run_dir / "report.md"
    report.write_text(f"""# genpolicy demo: {cfg.task.name}

Pipeline: {rb.n_episodes} scripted demonstrations -> behaviour cloning ({cfg.policy.type}, {cfg.policy.network},
sampler {cfg.policy.sampler} with {cfg.policy.steps} steps, To={cfg.policy.n_obs_steps} H={cfg.policy.horizon}
Ta={cfg.policy.n_action_steps}) -> evaluation in the simulator.

**Success** means: {ev['success_definition']}.

| stage | result |
|---|---|
| expert demonstrations | {rb.n_episodes} kept of {rb.attrs['expert_attempts']} attempts, expert success {rb.attrs['expert_success_rate']:.2f} |
| final policy (EMA, step {cfg.train.steps}) | **success {ev['success_rate']:.2f}** over {ev['n_episodes']} episodes (seeds {ev['seed']}..{ev['seed'] + ev['n_episodes'] - 1}), mean return {ev['mean_return']:.2f} |
| best checkpoint | success {res['best']['success_rate']:.2f} at step {res['best']['step']}: `{res['best_checkpoint']}` |

Success rate during training (evaluation episodes use seeds disjoint from the demonstrations):

| step | success rate | episodes |
|---|---|---|
{rows}

![learning curve]({plot.name})

Videos: {videos}

Wall time: data {t_data:.0f} s, training + evaluation {t_train:.0f} s, total {time.time() - t0:.0f} s.
Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, genpolicy {genpolicy.__version__}.

Reproduce: `genpolicy demo` (config: `{run_dir / 'config.yaml'}`). Evaluate again:
`genpolicy eval ckpt={res['best_checkpoint']}`.
""")
    (run_dir / "demo.json").write_text(json.dumps({"eval": {k: v for k, v in ev.items() if k != "episodes"},
                                                    "best": res["best"], "config": asdict(cfg)}, indent=2))
    return report
