"""Smoke tests: every command end to end in a subprocess on a tiny budget, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["policy.width=64", "policy.depth=2", "policy.horizon=8", "policy.n_action_steps=4", "policy.time_dim=32",
        "train.steps=6", "train.batch_size=16", "train.warmup_steps=2", "eval.n_episodes=2", "eval.n_envs=2",
        "run.log_every=3", "run.progress=false"]


def gp(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL="egl", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "genpolicy.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    if ok:
        assert res.returncode == 0, f"genpolicy {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def test_envs_list(tmp_path: Path) -> None:
    out = gp("envs", "list", cwd=tmp_path).stdout.split()
    assert "toy/bimodal" in out and "metaworld/drawer-open-v3" in out and "robosuite/lift" in out


def test_generate_info_train_eval_convert(tmp_path: Path) -> None:
    r = gp("data", "generate", "task=toy/bimodal", "data.n_episodes=8", "output=toy.zarr", "progress=false", cwd=tmp_path)
    assert "expert success rate 1.00" in r.stdout
    info = gp("data", "info", "toy.zarr", cwd=tmp_path).stdout
    assert "episodes: 8" in info and "action" in info and "state" in info and "action range" in info
    gp("train", "task=toy/bimodal", "policy=flow", "data.path=toy.zarr", "run.dir=run", "eval.n_videos=1", *TINY,
       cwd=tmp_path)
    run = tmp_path / "run"
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert {"success_rate", "mean_return", "n_episodes", "episodes"} <= set(ev) and ev["n_episodes"] == 2
    video = tmp_path / ev["videos"][0]
    assert video.exists() and video.stat().st_size > 1000
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "best" / "manifest.json").exists()
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics) and any("eval/success_rate" in m for m in metrics)
    assert list((run / "tb").iterdir())
    r = gp("eval", "ckpt=run/checkpoints/best", "sampler=shortcut", "steps=1", "eval.n_episodes=2", "run.dir=ev",
           "eval.n_videos=0", "run.progress=false", cwd=tmp_path)
    assert "shortcut, 1 steps" in r.stdout and (tmp_path / "ev" / "eval" / "eval.json").exists()
    r = gp("eval", "ckpt=run/checkpoints/best", "sampler=adaptive", "steps=8", "eval.n_episodes=2", "run.dir=ev2",
           "eval.n_videos=0", "run.progress=false", cwd=tmp_path)
    ev2 = json.loads((tmp_path / "ev2" / "eval" / "eval.json").read_text())
    assert ev2["sampler"] == "adaptive" and 2 <= ev2["nfe_per_chunk"] <= 8 * 5 + 1
    r = gp("eval", "ckpt=run/checkpoints/best", "warm_start_steps=2", "eval.n_episodes=2", "run.dir=ev3",
           "eval.n_videos=0", "run.progress=false", cwd=tmp_path)
    assert json.loads((tmp_path / "ev3" / "eval" / "eval.json").read_text())["warm_start_steps"] == 2
    r = gp("finetune", "algo=reinflow", "ckpt=run/checkpoints/best", "task=toy/bimodal-right", "preset=toy",
           "ppo.iterations=2", "ppo.n_envs=2", "ppo.n_steps=2", "ppo.minibatch_size=4", "eval.n_episodes=2",
           "eval.n_envs=2", "eval.every=1", "run.dir=ft", "run.progress=false", cwd=tmp_path)
    assert "toy/bimodal-right reinflow: success" in r.stdout
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert [p["iteration"] for p in summary["curve"]] == [0, 1, 2]
    r = gp("eval", f"ckpt={summary['final_checkpoint']}", "eval.n_episodes=2", "run.dir=ev4", "eval.n_videos=0",
           "run.progress=false", cwd=tmp_path)
    assert "(euler, 4 steps)" in r.stdout  # the fine-tuned checkpoint evaluates on its fine-tuning grid
    r = gp("eval", "ckpt=run/checkpoints/best", "task=toy/bimodal-right", "eval.n_episodes=2", "run.dir=ev5",
           "eval.n_videos=0", "run.progress=false", cwd=tmp_path)  # another task than the checkpoint's
    assert r.stdout.startswith("toy/bimodal-right:")
    gp("data", "convert", "toy.zarr", "toy_lerobot", "format=lerobot", cwd=tmp_path)
    gp("data", "convert", "toy_lerobot", "back.zarr", cwd=tmp_path)
    assert "episodes: 8" in gp("data", "info", "back.zarr", cwd=tmp_path).stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "task=toy/bimodal", "data.path=missing.zarr"], "missing.zarr: no such dataset"),
    (["train", "task=toy/bimodal", "policy.sampler=euler"], "policy.sampler='euler' is not valid"),
    (["train", "task=nosuch/task"], "unknown task 'nosuch/task'; see `genpolicy envs list`"),
    (["train", "policy=nosuch"], "unknown policy 'nosuch'"),
    (["train", "task=toy/bimodal", "train.lr=abc"], "train.lr"),
    (["eval", "ckpt=nowhere"], "nowhere: no such checkpoint"),
    (["eval", "ckpt=nowhere", "task=toy/nope"], "unknown task 'toy/nope'"),
    (["data", "info", "nothing.zarr"], "nothing.zarr"),
    (["frobnicate"], "unknown command"),
    (["bench", "sampler", "methods=[nope]"], "unknown method 'nope'"),
    (["finetune", "algo=nope", "ckpt=x"], "algo must be one of"),
    (["finetune", "algo=dppo"], "finetune needs a BC checkpoint"),
    (["train", "task=toy/bimodal", "policy.image_encoder=vit"], "policy.image_encoder must be resnet18|conv, got 'vit'"),
    (["train", "task=toy/bimodal", "policy.warm_start_steps=99"], "policy.warm_start_steps (99) must be in [0, policy.steps=10)"),
])
def test_bad_input_gives_one_line_error(tmp_path: Path, args: list[str], needle: str) -> None:
    r = gp(*args, cwd=tmp_path, ok=False)
    assert r.returncode == 2
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_action_dim_mismatch_is_reported(tmp_path: Path) -> None:
    from tests.test_data import make_buffer

    make_buffer(ds=2, da=3).save(tmp_path / "wrong.zarr")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = gp("train", "task=toy/bimodal", "data.path=wrong.zarr", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "wrong.zarr: 'data/action' has dimension 3 but task 'toy/bimodal' expects 2" in r.stderr
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing on disk changed and no run directory was created


def test_nan_actions_are_reported(tmp_path: Path) -> None:
    import zarr

    from tests.test_data import make_buffer

    make_buffer(ds=2, da=2).save(tmp_path / "nan.zarr")
    root = zarr.open_group(str(tmp_path / "nan.zarr"), mode="r+")
    a = root["data"]["action"][:]
    a[4, 1] = np.nan
    root["data"]["action"][:] = a
    r = gp("train", "task=toy/bimodal", "data.path=nan.zarr", cwd=tmp_path, ok=False)
    assert "nan.zarr: 'data/action' contains NaN or inf (first at step 4)" in r.stderr


def test_camera_policy_trains_and_evaluates(tmp_path: Path) -> None:
    """ResNet-18 (GroupNorm, spatial softmax, random crop) on the toy task's top-down camera, end to end, at a
    non-default frame size (recorded 40 px; evaluation must render what the policy was trained on)."""
    gp("data", "generate", "task=toy/bimodal", "task.images=true", "task.image_size=40", "data.n_episodes=3",
       "output=img.zarr", "progress=false", cwd=tmp_path)
    info = gp("data", "info", "img.zarr", cwd=tmp_path).stdout
    assert "image.top" in info and "uint8" in info and "40, 40" in info
    gp("train", "task=toy/bimodal", "task.images=true", "data.path=img.zarr", "run.dir=run", "eval.n_videos=0",
       *TINY, "train.steps=3", "train.batch_size=4", cwd=tmp_path)
    cfg = json.loads((tmp_path / "run" / "checkpoints" / "best" / "config.json").read_text())
    assert cfg["policy"]["shape"]["cameras"] == ["top"] and cfg["policy"]["shape"]["image_size"] == 40
    assert json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())["n_episodes"] == 2


def test_demo_pipeline_smoke(tmp_path: Path) -> None:
    """`genpolicy demo` end to end on the toy task with a tiny budget: report, plot, eval and video exist."""
    r = gp("demo", "task=toy/bimodal", "data.n_episodes=6", "eval.every=3", "eval.n_videos=1", "run.dir=demo",
           *TINY, cwd=tmp_path)
    report = tmp_path / "demo" / "report.md"
    assert str(report.name) in r.stdout and report.exists()
    text = report.read_text()
    assert "**Success** means: agent within" in text and "| 3 |" in text and "learning_curve.png" in text
    assert (tmp_path / "demo" / "learning_curve.png").stat().st_size > 5000
    assert (tmp_path / "demo" / "eval" / "episode_000.mp4").exists()
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["eval"]["n_episodes"] == 2


def test_bench_sampler_smoke(tmp_path: Path) -> None:
    r = gp("bench", "sampler", "tiny=true", "compiled=false", "nets=[mlp,unet]", "batches=[2]",
           "methods=[ddim10,euler10,1step]", "budget_s=0.01", "min_reps=2", "out=res", "progress=false", cwd=tmp_path)
    assert "wrote res/sampler.md" in r.stdout
    res = json.loads((tmp_path / "res" / "sampler.json").read_text())
    assert len(res["rows"]) == 6 and len(res["select_action"]) == 2
    for row in res["rows"]:
        assert {"device", "net", "batch", "method", "eager_ms", "compiled_ms", "usual_loop_ms", "floor_ms",
                "max_abs_diff"} <= set(row)
        assert row["max_abs_diff"] < 1e-5  # the engine and the diffusers loop sample the same chunk
        assert row["eager_ms"] > 0 and row["usual_loop_ms"] > 0 and row["floor_ms"] > 0
    assert "| cpu | unet | 2 | 1step |" in (tmp_path / "res" / "sampler.md").read_text()


def test_data_expert_and_generate_for_locomotion(tmp_path: Path) -> None:
    r = gp("data", "expert", "task=gym/hopper-v5", "expert.steps=300", "expert.start_steps=200", "expert.eval_every=300",
           "expert.eval_episodes=1", "expert.width=32", "output=hopper_expert", "progress=false", cwd=tmp_path)
    assert "SAC expert for gym/hopper-v5" in r.stdout and (tmp_path / "hopper_expert" / "expert.json").exists()
    r = gp("data", "generate", "task=gym/hopper-v5", "data.n_episodes=2", "data.expert_path=hopper_expert",
           "task.max_episode_steps=50", "output=hopper.zarr", "progress=false", cwd=tmp_path)
    assert "expert mean return" in r.stdout and "episodes: 2" in gp("data", "info", "hopper.zarr", cwd=tmp_path).stdout
    r = gp("data", "generate", "task=gym/walker2d-v5", "data.n_episodes=1", cwd=tmp_path, ok=False)
    assert r.returncode == 2 and "genpolicy data expert task=" in r.stderr  # no expert trained yet: say how


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "preset").glob("*.yaml")))
def test_every_preset_composes_for_every_algorithm(preset: str) -> None:
    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig

    for algo in ("dppo", "fpo", "reinflow", "dsrl", "expo"):
        cfg = compose("finetune", [f"algo={algo}", "ckpt=x", "task=gym/hopper-v5", f"preset={preset}"], FinetuneConfig)
        assert cfg.algo == algo  # unknown keys or invalid values in a preset raise while composing
    if preset == "locomotion":
        assert cfg.ppo.reward == "env" and cfg.reinflow.steps == 4
