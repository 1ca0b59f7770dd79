"""Shared fixtures. Tests run on the CPU with few threads and small networks."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


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
