"""On the bimodal toy task, diffusion and flow policies keep both ways around the obstacle; MSE regression averages them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from genpolicy.config import PolicyConfig
from genpolicy.datasets.collect import generate
from genpolicy.datasets.sequence import SequenceSampler
from genpolicy.policies import ShapeMeta, make_policy

H, TA = 8, 4


@pytest.fixture(scope="module")
def demos():
    rb = generate("toy/bimodal", 100, seed=0, progress=False)
    return rb, SequenceSampler(rb, np.arange(rb.n_episodes), n_obs_steps=1, horizon=H)


def _start_obs(n: int) -> dict[str, torch.Tensor]:
    pos = np.tile([0.0, -1.0], (n, 1))
    return {"state": torch.as_tensor(pos, dtype=torch.float32)[:, None]}  # (n, To=1, 2)


def _sideways(chunks: torch.Tensor) -> np.ndarray:
    """Net x displacement of the executed part of each chunk: > 0 goes right of the obstacle, < 0 left."""
    return chunks[:, :TA, 0].sum(1).numpy()


def _expert_sideways(rb) -> np.ndarray:
    starts = np.concatenate([[0], rb.episode_ends[:-1]])
    return _sideways(torch.as_tensor(rb.data["action"][starts[:, None] + np.arange(TA)]))


def _train(model_loss, params, sampler: SequenceSampler, steps: int) -> None:
    opt = torch.optim.AdamW(params, lr=1e-3)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model_loss(sampler.random_batch(256, rng), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("ptype,sampler", [("diffusion", "ddim"), ("flow", "euler")])
def test_generative_policies_reproduce_both_modes(demos, ptype: str, sampler: str) -> None:
    rb, seq = demos
    torch.manual_seed(0)
    cfg = PolicyConfig(type=ptype, sampler=sampler, steps=10, n_obs_steps=1, horizon=H, n_action_steps=TA,
                       width=256, depth=3, time_dim=64, shortcut=False)
    policy = make_policy(cfg, ShapeMeta(state_dim=2, action_dim=2))
    policy.normalizer.fit({"state": rb.data["state"], "action": rb.data["action"]})
    _train(lambda b, g: policy.loss(b, generator=g)["loss"], policy.parameters(), seq, steps=1000)
    policy.eval()
    with torch.no_grad():
        side = _sideways(policy.predict_chunk(_start_obs(400), generator=torch.Generator().manual_seed(1)))
    right, left = float((side > 0.05).mean()), float((side < -0.05).mean())
    assert right >= 0.3 and left >= 0.3, (right, left)
    # and the samples look like the demonstrations: a clear sideways move, not a hesitant average
    assert np.median(np.abs(side)) > 0.5 * np.median(np.abs(_expert_sideways(rb)))


def test_mse_regression_collapses_to_the_average(demos) -> None:
    rb, seq = demos
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 256), nn.Mish(), nn.Linear(256, 256), nn.Mish(), nn.Linear(256, H * 2))

    def loss(b, g):
        return ((net(b["obs"]["state"][:, -1]).view(-1, H, 2) - b["action"]) ** 2).mean()

    _train(loss, net.parameters(), seq, steps=1000)
    with torch.no_grad():
        side = _sideways(net(_start_obs(400)["state"][:, -1]).view(-1, H, 2))
    expert = _expert_sideways(rb)
    assert (expert > 0.05).mean() > 0.3 and (expert < -0.05).mean() > 0.3  # the data really is bimodal
    # the regressor heads (nearly) straight at the obstacle: far smaller sideways motion than any demonstration
    assert np.median(np.abs(side)) < 0.25 * np.median(np.abs(expert))
