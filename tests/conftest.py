"""Shared fixtures. Tests run on the CPU with few threads and small networks."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("GENPOLICY_TEST_THREADS", "2")))  # 1 when another job shares the CPU


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def fitted_tiny_policy(state_dim: int = 5, action_dim: int = 3, **kw):
    """A tiny policy (cfg overrides in kw) with a fitted normaliser, in eval mode, seeded."""
    from genpolicy.policies import ShapeMeta, make_policy

    torch.manual_seed(0)
    p = make_policy(tiny_policy_cfg(**kw), ShapeMeta(state_dim=state_dim, action_dim=action_dim))
    p.normalizer.fit({"state": np.random.default_rng(0).normal(size=(100, state_dim)),
                      "action": np.random.default_rng(1).uniform(-2, 3, size=(100, action_dim))})
    return p.eval()


def tiny_policy_cfg(**kw):
    from genpolicy.config import PolicyConfig

    base = dict(n_obs_steps=2, horizon=8, n_action_steps=4, width=64, depth=2, down_dims=[32, 64], n_groups=8,
                time_dim=32, steps=5)
    base.update(kw)
    return PolicyConfig(**base)


@pytest.fixture(scope="session")
def toy_bc_ckpts(tmp_path_factory) -> dict:
    """Tiny flow and diffusion policies trained on the bimodal toy demonstrations (about half go right); shared by
    the fine-tuning and deployment tests. Returns {"flow": Path, "diffusion": Path} of final checkpoints."""
    from pathlib import Path

    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, PolicyConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.training.bc import train

    root = tmp_path_factory.mktemp("bc")
    data = root / "toy.zarr"
    generate("toy/bimodal", 60, seed=0, progress=False).save(data)
    out = {}
    for ptype, kw in (("flow", dict(sampler="euler", steps=5)), ("diffusion", dict(sampler="ddim", steps=10, prediction="sample"))):
        pol = PolicyConfig(type=ptype, n_obs_steps=1, horizon=8, n_action_steps=4, width=128, depth=2, time_dim=32,
                           shortcut=False, **kw)
        cfg = TrainConfig(task=TaskConfig(name="toy/bimodal"), policy=pol, data=DataConfig(path=str(data)),
                          train=OptimConfig(steps=800, batch_size=256, lr=1e-3, warmup_steps=50),
                          eval=EvalConfig(n_episodes=4, n_envs=4, n_videos=0),
                          run=RunConfig(dir=str(root / ptype), log_every=1000, ckpt_every=10**9, progress=False, seed=0))
        out[ptype] = Path(train(cfg)["final_checkpoint"])
    return out
