"""Real-time chunking on the policy side: RTC guidance (flow and DDIM), exact frozen prefix, the guidance gradient
against finite differences, the plain path when RTC has nothing to do, and bidirectional decoding's choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genpolicy.policies.realtime import (GuidedDenoiser, RealtimeSettings, bid_scores, bid_select, make_guide,
                                         prefix_weights, realtime_chunk)
from tests.conftest import fitted_tiny_policy

FAMILIES = [("flow", dict(type="flow", sampler="euler", steps=5)),
            ("flow_heun", dict(type="flow", sampler="heun", steps=3)),
            ("ddim_eps", dict(type="diffusion", sampler="ddim", steps=5, prediction="epsilon")),
            ("ddim_x0", dict(type="diffusion", sampler="ddim", steps=5, prediction="sample"))]


def _obs(p, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.randn(1, p.cfg.n_obs_steps, p.shape.state_dim, generator=g)}


def _plan(p, n: int, seed: int = 1) -> np.ndarray:
    """An old plan in env units (n, Da) inside the action range."""
    lo, hi = p.normalizer.stat("action", "min").float().numpy(), p.normalizer.stat("action", "max").float().numpy()
    u = np.random.default_rng(seed).uniform(0.2, 0.8, size=(n, p.shape.action_dim))
    return (lo + u * (hi - lo)).astype(np.float32)


def test_prefix_weights_follow_the_paper() -> None:
    w = prefix_weights(2, 6, 10, "linear")
    assert torch.allclose(w, torch.tensor([1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 0, 0, 0, 0]))
    e = prefix_weights(2, 6, 10, "exp")
    c = torch.tensor([4 / 5, 3 / 5, 2 / 5, 1 / 5])
    assert torch.allclose(e[2:6], c * torch.expm1(c) / (np.e - 1)) and e[:2].eq(1).all() and e[6:].eq(0).all()
    assert prefix_weights(9, 4, 10, "exp").tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # d >= the old plan: all frozen
    assert prefix_weights(0, 0, 6).eq(0).all()


@pytest.mark.parametrize("name,kw", FAMILIES)
def test_no_latency_no_guidance_is_plain_sampling(name: str, kw: dict) -> None:
    p = fitted_tiny_policy(**kw)
    obs, noise = _obs(p), p.initial_noise(1, torch.Generator().manual_seed(3))
    with torch.no_grad():  # the deployment path: the fast sampler
        plain = p.unnormalize_actions(p.sample(p.encode(obs), noise=noise.clone()).clamp(-1, 1))
    off = RealtimeSettings(mode="rtc", beta=0.0)
    assert torch.equal(realtime_chunk(p, obs, _plan(p, 4), 0, off, noise=noise.clone()), plain)
    on = RealtimeSettings(mode="rtc", beta=5.0)
    assert torch.equal(realtime_chunk(p, obs, None, 3, on, noise=noise.clone()), plain)  # no old plan: plain


@pytest.mark.parametrize("name,kw", FAMILIES)
def test_frozen_prefix_equals_the_old_plan_and_guidance_pulls_the_overlap(name: str, kw: dict) -> None:
    p = fitted_tiny_policy(**kw)
    obs, noise = _obs(p), p.initial_noise(1, torch.Generator().manual_seed(4))
    prev = _plan(p, 6)
    plain = realtime_chunk(p, obs, prev, 0, RealtimeSettings(beta=0.0), noise=noise.clone())[0].numpy()
    for d in (1, 3, 6, 9):  # d changes from chunk to chunk; d >= the old plan (6) freezes all of it
        out = realtime_chunk(p, obs, prev, d, RealtimeSettings(beta=5.0, schedule="exp"), noise=noise.clone())[0].numpy()
        k = min(d, 6)
        assert np.array_equal(out[:k], prev[:k]), (name, d)
        assert np.all(np.isfinite(out))
        with torch.no_grad():  # the engine itself replaces the frozen prefix (normalised space), not only the wrapper
            g = make_guide(p, prev, d, 5.0, "exp")
            x = p.sample(p.encode(obs), noise=noise.clone(), guide=g)
        assert torch.equal(x[:, :k], g.target[:, :k]), (name, d)
    if name == "ddim_x0":  # x0 = the network output: an untrained net barely depends on x, so J^T e is ~0 here
        return
    # guidance moves the soft-masked part of the overlap toward the old plan
    out = realtime_chunk(p, obs, prev, 2, RealtimeSettings(beta=5.0, schedule="ones"), noise=noise.clone())[0].numpy()
    assert np.abs(out[2:6] - prev[2:6]).mean() < 0.7 * np.abs(plain[2:6] - prev[2:6]).mean(), name


@pytest.mark.parametrize("name,kw", FAMILIES)
def test_guidance_gradient_matches_finite_differences(name: str, kw: dict) -> None:
    p = fitted_tiny_policy(**kw).double()
    cond = p.encode({"state": _obs(p)["state"].double()})
    guide = make_guide(p, _plan(p, 6).astype(np.float64), 2, 5.0, "exp")
    guide.target, guide.weights = guide.target.double(), guide.weights.double()
    den = GuidedDenoiser(p.make_denoiser(cond), p.grid, guide)
    x = torch.randn(1, p.cfg.horizon, p.shape.action_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    e = 1
    _, _, g = den.vjp(x, e)
    w = guide.weights.view(1, -1, 1)

    def clean(xx: torch.Tensor) -> torch.Tensor:  # x_hat written out here, not taken from the code under test
        out = den.inner(xx, e)
        if kw["type"] == "flow":
            return xx + (1 - p.grid.eval_t[e] / 1000.0) * out
        abar = float(p.alphas_cumprod[int(p.grid.eval_t[e])])
        return out if kw["prediction"] == "sample" else (xx - (1 - abar) ** 0.5 * out) / abar ** 0.5

    def loss(xx: torch.Tensor) -> float:  # g = -grad of 0.5 * sum W (Y - x_hat)^2 when W is the mask
        with torch.no_grad():
            return float(0.5 * (w * (guide.target - clean(xx)) ** 2).sum())

    eps, rng = 1e-6, np.random.default_rng(0)
    for _ in range(6):
        idx = (0, int(rng.integers(p.cfg.horizon)), int(rng.integers(p.shape.action_dim)))
        dx = torch.zeros_like(x)
        dx[idx] = eps
        fd = (loss(x + dx) - loss(x - dx)) / (2 * eps)
        assert -fd == pytest.approx(float(g[idx]), rel=1e-5, abs=1e-8), (name, idx)


@pytest.mark.parametrize("name,kw", FAMILIES)
def test_guided_output_carries_the_stated_correction(name: str, kw: dict) -> None:
    """flow: v' = v + min(beta, (t^2 + (1-t)^2) / (t (1-t))) g; diffusion: the step's x0 = x_hat + min(beta, 1/sqrt(abar)) g
    (so an epsilon network's output is rewritten to match), with the weights computed here from the grid."""
    p = fitted_tiny_policy(**kw).double()
    cond = p.encode({"state": _obs(p)["state"].double()})
    guide = make_guide(p, _plan(p, 6).astype(np.float64), 2, 3.0, "ones")
    guide.target, guide.weights = guide.target.double(), guide.weights.double()
    den = GuidedDenoiser(p.make_denoiser(cond), p.grid, guide)
    x = torch.randn(1, p.cfg.horizon, p.shape.action_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for e in range(len(p.grid.eval_t)):
        out, x_hat, g = den.vjp(x, e)
        guided = den(x, e)
        if kw["type"] == "flow":
            t = p.grid.eval_t[e] / 1000.0
            w = 3.0 if t in (0.0, 1.0) else min(3.0, (t * t + (1 - t) ** 2) / (t * (1 - t)))
            assert torch.allclose(guided, out + w * g, atol=1e-10), (name, e)
        else:
            abar = float(p.alphas_cumprod[int(p.grid.eval_t[e])])
            x0 = p.grid.coef["p_x"][e] * x + p.grid.coef["p_o"][e] * guided  # what grid_step will take as x0
            assert torch.allclose(x0, x_hat + min(3.0, abar ** -0.5) * g, atol=1e-5), (name, e)


def test_bid_returns_the_best_scored_candidate_from_recorded_noise() -> None:
    p = fitted_tiny_policy(type="flow", sampler="euler", steps=5)
    cond = p.encode(_obs(p))
    n = 6
    noise = p.initial_noise(n, torch.Generator().manual_seed(7))  # the recorded noise
    prev = p.normalize_actions(torch.as_tensor(_plan(p, 5)))
    res = bid_select(p, cond, prev, n, rho=0.5, noise=noise.clone())
    # recompute each candidate alone from its own recorded noise and score it independently
    cands = torch.cat([p.sample(cond, noise=noise[i: i + 1].clone()).clamp(-1, 1) for i in range(n)])
    assert torch.allclose(res["candidates"], cands, atol=1e-5)
    w = 0.5 ** torch.arange(5.0)
    by_hand = torch.stack([((c[:5] - prev).norm(dim=-1) * w).sum() / w.sum() for c in cands])
    assert int(res["index"]) == int(torch.argmin(by_hand)) and torch.allclose(res["scores"], by_hand, atol=1e-5)
    assert torch.equal(res["actions"][0], res["candidates"][int(res["index"])])
    # forward contrast: equally spaced candidates, weak samples near the last one: the one farthest from them wins
    c = torch.stack([torch.full((4, 2), v) for v in (0.0, 0.1, 0.2)])
    weak = torch.full((2, 4, 2), 0.25)
    assert bid_scores(c, None, 0.5, weak, k=1).argmin().item() == 0


def test_bid_with_a_weak_policy_runs_end_to_end() -> None:
    """Forward contrast through realtime_chunk: weak samples drawn, a candidate chosen, the delay's prefix exact."""
    p = fitted_tiny_policy(type="flow", sampler="euler", steps=5)
    torch.manual_seed(1)
    weak = fitted_tiny_policy(type="flow", sampler="euler", steps=2)
    prev = _plan(p, 5)
    out = realtime_chunk(p, _obs(p), prev, 2, RealtimeSettings(mode="bid", bid_samples=4, bid_k=2),
                         torch.Generator().manual_seed(0), weak=weak)
    assert out.shape == (1, p.cfg.horizon, p.shape.action_dim) and np.array_equal(out[0, :2].numpy(), prev[:2])
