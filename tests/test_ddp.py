"""Data-parallel BC under torchrun (2 CPU processes, gloo): one writer, identical replicas, and the same update as a
single process on the whole batch, fresh and after a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genpolicy.training import dist

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS, MORE = 3, 2  # steps of the first run, then of the resumed one
COMMON = ["task=toy/bimodal", "policy=flow", "policy.shortcut=false", "policy.width=64", "policy.depth=2",
          "policy.horizon=8", "policy.n_action_steps=4", "policy.time_dim=32", "policy.n_obs_steps=1",
          "train.batch_size=32", "train.warmup_steps=2", "train.lr=1e-3", "data.path=toy.zarr", "run.dir=run",
          "run.ckpt_every=2", "run.log_every=1", "run.progress=false", "eval.n_episodes=2", "eval.n_envs=2",
          "eval.n_videos=0", "train.dist_timeout_s=120"]


def torchrun(tmp_path: Path, evidence: Path, *overrides: str, ok: bool = True, **env_extra: str
             ) -> subprocess.CompletedProcess:
    evidence.mkdir()
    env = dict(os.environ, MUJOCO_GL="egl", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(evidence), "train", *COMMON, *overrides]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    if ok:
        assert res.returncode == 0, f"torchrun failed:\n{res.stdout}\n{res.stderr[-4000:]}"
    return res


def replay_single_process(ckpt: Path, init: dict[str, torch.Tensor], overrides: list[str], steps: range,
                          policy=None, opt=None):
    """What one process does with the whole batch of each step: the mean loss over the two ranks' slices (each
    slice with its rank's noise), one backward, clip, AdamW. Returns the policy and optimiser to continue from."""
    from genpolicy.cli import compose
    from genpolicy.config import TrainConfig
    from genpolicy.datasets.sequence import SequenceSampler, split_episodes
    from genpolicy.training.bc import load_demos, lr_at, step_batch
    from genpolicy.training.checkpoint import load_policy

    cfg = compose("train", overrides, TrainConfig)
    rb = load_demos(cfg)
    train_eps, _ = split_episodes(rb.n_episodes, cfg.data.val_fraction, cfg.data.seed, cfg.data.max_train_episodes)
    train_set = SequenceSampler(rb, train_eps, cfg.policy.n_obs_steps, cfg.policy.horizon)
    if policy is None:
        policy = load_policy(ckpt, use_ema=False)
        policy.load_state_dict(init, strict=True)
        policy.train()
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                weight_decay=cfg.train.weight_decay)
    cpu = torch.device("cpu")
    for step in steps:
        shards = [step_batch(train_set, cfg, step, cpu, dist.DistInfo(r, 2, r)) for r in (0, 1)]
        loss = sum(policy.loss(b, generator=g)["loss"] for b, g in shards) / 2  # equal slices: the whole batch's mean
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.train.grad_clip)
        opt.step()
    return policy, opt


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_torchrun_two_ranks_one_writer_same_update_as_one_process(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from genpolicy.datasets.collect import generate

    monkeypatch.chdir(tmp_path)  # the replay reads data.path=toy.zarr as the runs did

    generate("toy/bimodal", 8, seed=0, progress=False).save(tmp_path / "toy.zarr")
    first = [f"train.steps={STEPS}"]
    res = torchrun(tmp_path, tmp_path / "ev1", *first)
    assert res.stdout.count("final eval: success_rate=") == 1  # only rank 0 evaluates and reports

    run = tmp_path / "run"
    # one writer: exactly one set of checkpoints (rotation keeps the last two), one log line per step, no temp dirs
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000002", f"{STEPS:07d}", "best"]
    assert not [p for p in run.rglob("*") if "tmp" in p.name]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
    assert len([r for r in rows if "eval/success_rate" in r]) == 1 and len(list((run / "tb").iterdir())) == 1
    ckpt = run / "checkpoints" / f"{STEPS:07d}"
    assert json.loads((ckpt / "trainer.json").read_text())["world_size"] == 2

    # identical replicas: both ranks hold the same parameters and EMA, and rank 0 saved exactly what it held
    r0, r1 = (load_file(str(tmp_path / "ev1" / f"rank{r}.safetensors")) for r in (0, 1))
    assert max_abs_diff(r0, r1) == 0.0
    saved = load_file(str(ckpt / "model.safetensors"))
    assert max_abs_diff(prefixed(saved, "model."), prefixed(r0, "model.")) == 0.0
    assert max_abs_diff(prefixed(saved, "ema."), prefixed(r0, "ema.")) == 0.0

    # gradient averaging: 2 ranks x 16 windows take the same steps as one process on the 32-window batch
    overrides = [*COMMON, *first]
    policy, opt = replay_single_process(ckpt, prefixed(r0, "init."), overrides, range(STEPS))
    diff = max_abs_diff({k: v.detach() for k, v in policy.state_dict().items()}, prefixed(r0, "model."))
    print(f"DDP vs single process after {STEPS} steps: max abs parameter diff {diff:.2e}")
    assert diff < 1e-5

    # resume under torchrun: both ranks load the same checkpoint and continue as the uninterrupted replay would
    resumed = [f"train.steps={STEPS + MORE}", "run.resume=true"]
    torchrun(tmp_path, tmp_path / "ev2", *resumed)
    q0, q1 = (load_file(str(tmp_path / "ev2" / f"rank{r}.safetensors")) for r in (0, 1))
    assert max_abs_diff(prefixed(q0, "model."), prefixed(q1, "model.")) == 0.0
    policy, _ = replay_single_process(ckpt, {}, [*COMMON, *resumed], range(STEPS, STEPS + MORE), policy, opt)
    diff = max_abs_diff({k: v.detach() for k, v in policy.state_dict().items()}, prefixed(q0, "model."))
    print(f"resumed DDP vs single process after {STEPS + MORE} steps: max abs parameter diff {diff:.2e}")
    assert diff < 1e-5


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_instead_of_hanging_it(tmp_path: Path) -> None:
    """Rank 1 dies in the third step (index 2) while rank 0 waits on a collective: the job must fail well inside the
    timeout and leave the last complete checkpoint (step 2) to resume from."""
    import time

    from genpolicy.datasets.collect import generate

    generate("toy/bimodal", 4, seed=0, progress=False).save(tmp_path / "toy.zarr")
    t0 = time.monotonic()
    res = torchrun(tmp_path, tmp_path / "ev", "train.steps=4", "train.dist_timeout_s=60", ok=False,
                   DDP_WORKER_CRASH="1:2")
    assert res.returncode != 0 and "injected failure on rank 1 at step 2" in res.stderr
    assert time.monotonic() - t0 < 50  # torchrun stops rank 0 when rank 1 exits; no wait for the 60 s timeout
    from genpolicy.training.checkpoint import read_manifest

    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["0000002"] and read_manifest(ckpts / "0000002")["step"] == 2


def test_dist_env_and_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genpolicy.config import OptimConfig
    from genpolicy.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.env_info() == dist.DistInfo(0, 1, 0) and dist.env_info().is_main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist.env_info()
    assert info.enabled and not info.is_main and info.local_rank == 1
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2 must be in"):
        dist.env_info()
    assert dist.resolve_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(ConfigError, match="train.dist_backend=nccl needs a CUDA device"):
        dist.resolve_backend("nccl", torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.dist_backend must be auto|gloo|nccl"):
        OptimConfig(dist_backend="mpi")


def test_global_batch_must_split_evenly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked on every rank before any collective, so a bad value fails fast instead of hanging the others."""
    from genpolicy.config import DataConfig, TaskConfig, TrainConfig, OptimConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.errors import ConfigError
    from genpolicy.training import bc

    generate("toy/bimodal", 2, seed=0, progress=False).save(tmp_path / "toy.zarr")
    cfg = TrainConfig(task=TaskConfig(name="toy/bimodal"), data=DataConfig(path=str(tmp_path / "toy.zarr")),
                      train=OptimConfig(batch_size=16))
    with pytest.raises(ConfigError, match=r"train.batch_size=16 is the global batch .* \(WORLD_SIZE=3\)"):
        bc._train(cfg, dist.DistInfo(rank=1, world_size=3), torch.device("cpu"))
