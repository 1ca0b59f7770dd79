"""The sampling engine: fast path equals the plain network loop, per-row steps, Heun/midpoint, adaptive steps,
warm starts, and the accelerated paths' caching (the CUDA-graph logic through its CPU twin)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genpolicy.policies import ShapeMeta
from genpolicy.policies.accel import BucketedSampler
from genpolicy.policies.samplers import NetDenoiser, draw_step_noise, run
from tests.conftest import fitted_tiny_policy

SHAPE = ShapeMeta(state_dim=5, action_dim=3)
GRIDS = [("diffusion", "ddim", 5, 0.0), ("diffusion", "ddim", 5, 0.6), ("diffusion", "ddpm", 5, 0.0),
         ("flow", "euler", 4, 0.0), ("flow", "heun", 4, 0.0), ("flow", "midpoint", 3, 0.0), ("flow", "shortcut", 2, 0.0)]


def _policy(**kw):
    return fitted_tiny_policy(**kw)


def _inputs(p, b: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(b, p.obs_encoder.out_dim, generator=gen)
    noise = p.initial_noise(b, gen)
    return cond, noise, draw_step_noise(p.grid, noise, gen)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_fast_path_equals_plain_network_loop(grid, network) -> None:
    ptype, sampler, steps, eta = grid
    p = _policy(type=ptype, sampler=sampler, steps=steps, eta=eta, network=network)
    cond, noise, sn = _inputs(p)
    with torch.no_grad():
        fast = p.sample(cond, noise=noise, step_noise=sn)  # cached conditioning, inference mode
        plain = run(p.grid, NetDenoiser(p.net, p.grid, cond), noise, sn)  # whole network every step
    assert not fast.is_inference()
    assert torch.allclose(fast, plain, atol=1e-5), (fast - plain).abs().max()
    with torch.enable_grad():  # with grad on, sample is differentiable and still the same chain
        diff = p.sample(cond, noise=noise, step_noise=sn)
    assert diff.requires_grad and torch.allclose(diff, plain, atol=1e-5)


@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_denoise_tables_equal_forward_for_per_row_evaluations(network) -> None:
    p = _policy(type="flow", sampler="heun", steps=3, network=network)
    cond, noise, _ = _inputs(p, b=5)
    g = p.grid
    e = torch.tensor([0, 5, 2, 3, 1])  # a different evaluation per row
    with torch.no_grad():
        ctx = p.net.condition(g.tensor("eval_t", cond.device), g.tensor("eval_d", cond.device), cond)
        fast = p.net.denoise(noise, e, ctx)
        ref = NetDenoiser(p.net, g, cond)(noise, e)
    assert torch.allclose(fast, ref, atol=1e-5)


@pytest.mark.parametrize("grid", GRIDS[:4])
def test_per_row_steps_equal_one_step_at_a_time(grid) -> None:
    """DPPO mixes denoising steps in a minibatch: step_log_prob with a (B,) step tensor equals per-int calls."""
    ptype, sampler, steps, eta = grid
    p = _policy(type=ptype, sampler=sampler, steps=steps, eta=eta)
    cond, noise, sn = _inputs(p, b=steps)
    chain = p.sample_chain(cond, noise=noise, step_noise=sn, min_std=0.05)
    k = torch.arange(steps).flip(0)  # row i takes step steps-1-i
    rows = torch.arange(steps)
    x, x_next = chain.chain[rows, k], chain.chain[rows, k + 1]
    batched = p.step_log_prob(cond, x, x_next, k, min_std=0.05)
    single = torch.stack([p.step_log_prob(cond[i:i + 1], x[i:i + 1], x_next[i:i + 1], int(k[i]), min_std=0.05)[0]
                          for i in range(steps)])
    assert torch.allclose(batched, single, atol=1e-4)


def test_min_std_floors_sampling_and_is_recorded() -> None:
    p = _policy(type="flow", sampler="euler", steps=4)
    cond, noise, _ = _inputs(p)
    gen = torch.Generator().manual_seed(3)
    chain = p.sample_chain(cond, noise=noise, generator=gen, min_std=0.1)
    assert chain.grid == {"method": "euler", "steps": 4, "start": 0, "min_std": 0.1}
    assert torch.allclose(chain.stds, torch.full_like(chain.stds, 0.1))
    gen = torch.Generator().manual_seed(3)
    z = torch.randn((4, *noise.shape), generator=gen)
    assert torch.allclose(chain.chain[:, 1:], chain.means + 0.1 * z.transpose(0, 1), atol=1e-6)
    lp = p.step_log_prob(cond, chain.chain[:, 0], chain.chain[:, 1], 0, min_std=0.1)
    lp.sum().backward()  # chain tensors are ordinary tensors: usable as inputs to a graph with gradients
    assert all(q.grad is not None for q in p.net.parameters() if q.requires_grad)


def test_heun_and_midpoint_are_more_accurate_than_euler_at_equal_steps() -> None:
    p = _policy(type="flow", sampler="euler", steps=4, shortcut=False)
    cond, noise, _ = _inputs(p)
    with torch.no_grad():
        p.set_sampler("euler", 256)
        exact = p.sample(cond, noise=noise)
        errs = {}
        for m in ("euler", "heun", "midpoint"):
            p.set_sampler(m, 4)
            errs[m] = float((p.sample(cond, noise=noise) - exact).abs().max())
    assert errs["heun"] < errs["euler"] and errs["midpoint"] < errs["euler"], errs


def test_adaptive_sampler_takes_one_step_on_a_straight_flow_and_refines_a_curved_one() -> None:
    p = _policy(type="flow", sampler="adaptive", steps=16, shortcut=False, adaptive_tol=1e-3)
    cond, noise, _ = _inputs(p)
    with torch.no_grad():
        curved = p.sample(cond, noise=noise)
        nfe_curved = p.last_nfe.clone()
        p.set_sampler("euler", 16)
        euler16 = p.sample(cond, noise=noise)
        # make the velocity independent of x and t: the flow is a straight line, one Euler step is exact
        out = p.net.out
        out.weight.zero_()
        out.bias.copy_(torch.linspace(-1, 1, out.bias.numel()))
        p.set_sampler("adaptive", 16)
        straight = p.sample(cond, noise=noise)
    assert torch.equal(p.last_nfe, torch.full((4,), 2))  # one step: start and end velocity
    assert torch.allclose(straight, noise + out.bias.view(1, 8, 3), atol=1e-5)
    assert bool((nfe_curved > 2).all()) and bool((nfe_curved <= 2 * 16 + 1).all()), nfe_curved
    assert float((curved - euler16).abs().max()) < 0.05  # error-controlled: close to the fine fixed grid


def test_warm_start_runs_only_the_last_steps_from_the_renoised_tail() -> None:
    p = _policy(type="flow", sampler="euler", steps=8, warm_start_steps=2)
    calls: list[int] = []
    denoise = p.net.denoise
    p.net.denoise = lambda x, e, ctx: (calls.append(int(e)), denoise(x, e, ctx))[1]  # type: ignore[method-assign]
    p.reset()
    obs = {"state": np.zeros(5, dtype=np.float32)}
    for _ in range(p.cfg.n_action_steps + 1):  # the first chunk, then one re-plan
        p.select_action(obs)
    assert calls == list(range(8)) + [6, 7]  # cold: all 8 grid steps; warm: steps 6 and 7 only
    p.reset()
    calls.clear()
    p.select_action(obs)
    assert calls == list(range(8))  # a new episode starts cold


def test_renoise_puts_data_at_the_grid_marginal() -> None:
    for kw in (dict(type="flow", sampler="euler", steps=4), dict(type="diffusion", sampler="ddim", steps=5)):
        p = _policy(**kw)
        data = torch.randn(2, 8, 3)
        gen = torch.Generator().manual_seed(0)
        x = p.renoise(data, 2, gen)
        z = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
        a, b = p.grid.renoise[0][2], p.grid.renoise[1][2]
        assert torch.allclose(x, a * data + b * z)
        if kw["type"] == "flow":
            assert a == 0.5 and b == 0.5  # t = 2/4
        else:
            assert abs(a**2 + b**2 - 1) < 1e-5  # variance preserving


# --- accelerated paths ----------------------------------------------------------------------------------------
def test_static_buffers_bucket_reuse_and_recapture() -> None:
    """The CUDA-graph protocol (static buffers, padding to a bucket, one build per key) on its CPU twin."""
    p = _policy(type="diffusion", sampler="ddim", steps=5, eta=0.5)
    runner = BucketedSampler(p, "static")
    cond, noise, sn = _inputs(p, b=4, seed=1)
    with torch.no_grad():
        ref = p.sample(cond, noise=noise, step_noise=sn)
        out3 = runner(cond[:3], noise[:3], sn[:, :3])  # bucket 4, padded
        out4 = runner(cond, noise, sn)  # same bucket: no new build
        assert runner.builds == 1
        assert torch.allclose(out3, ref[:3], atol=1e-6) and torch.allclose(out4, ref, atol=1e-6)
        first = out4.clone()
        runner(cond.flip(0), noise.flip(0), sn.flip(1))  # a later replay must not overwrite an earlier result
        assert torch.equal(out4, first)
        runner(torch.cat([cond, cond[:1]]), torch.cat([noise, noise[:1]]), torch.cat([sn, sn[:, :1]], 1))
        assert runner.builds == 2  # batch 5 -> bucket 8
        p.set_sampler("ddim", 10)
        cond, noise, sn = _inputs(p, b=4, seed=2)
        out = runner(cond, noise, sn)
        assert runner.builds == 3  # a new grid is a new key: re-capture
        assert torch.allclose(out, p.sample(cond, noise=noise, step_noise=sn), atol=1e-6)
        p.net.out.bias.add_(0.5)  # in-place weight update (an optimiser step) is seen by the next replay
        assert torch.allclose(runner(cond, noise, sn), p.sample(cond, noise=noise, step_noise=sn), atol=1e-6)
        assert runner.builds == 3


def test_compiled_path_equals_eager() -> None:
    p = _policy(type="flow", sampler="euler", steps=3)
    cond, noise, _ = _inputs(p, b=2)
    with torch.no_grad():
        ref = p.sample(cond, noise=noise)
        p.set_sampler(backend="compiled")
        out = p.sample(cond, noise=noise)
        out_again = p.sample(cond, noise=noise)
    assert p._accel is not None and p._accel.builds == 1
    assert torch.allclose(out, ref, atol=1e-5) and torch.equal(out, out_again)


def test_backend_auto_is_eager_on_cpu_and_cuda_graph_is_refused_there() -> None:
    p = _policy(type="flow", sampler="euler", steps=3)
    assert p.resolved_backend() == "eager"
    with pytest.raises(RuntimeError, match="CUDA device"):
        BucketedSampler(p, "cuda_graph")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype,tol", [(None, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_cuda_graph_equals_eager(dtype, tol) -> None:  # pragma: no cover - runs only where a GPU is present
    p = _policy(type="diffusion", sampler="ddim", steps=5, eta=0.5).cuda()
    cond, noise, sn = (t.cuda() if t is not None else None for t in _inputs(p, b=3))
    with torch.no_grad():
        ref = p.sample(cond, noise=noise, step_noise=sn)
        runner = BucketedSampler(p, "cuda_graph", dtype=dtype)
        out = runner(cond, noise, sn)
        again = runner(cond, noise, sn)
    assert runner.builds == 1 and torch.equal(out, again)
    assert float((out - ref).abs().max()) < tol
