"""Policies: numeric equivalence with diffusers' schedulers, the chain view, and deployment queues."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genpolicy.policies import ShapeMeta
from genpolicy.policies.samplers import gaussian_log_prob
from tests.conftest import fitted_tiny_policy, tiny_policy_cfg

SHAPE = ShapeMeta(state_dim=5, action_dim=3)


def _policy(**kw):
    return fitted_tiny_policy(**kw)


def _obs(b: int = 4) -> dict[str, torch.Tensor]:
    return {"state": torch.randn(b, 2, 5, generator=torch.Generator().manual_seed(7))}


def _diffusers_loop(policy, scheduler, cond, gen_seed: int, eta: float | None = None) -> torch.Tensor:
    """The usual Diffusion Policy loop: net + diffusers scheduler.step(), same network and generator stream."""
    gen = torch.Generator().manual_seed(gen_seed)
    x = torch.randn((cond.shape[0], policy.cfg.horizon, 3), generator=gen)
    scheduler.set_timesteps(policy.cfg.steps)
    for t in scheduler.timesteps:
        out = policy.net(x, torch.full((cond.shape[0],), float(t)), cond)
        kw = {"eta": eta} if eta is not None else {}
        x = scheduler.step(out, t, x, generator=gen, **kw).prev_sample
    return x


def _our_noise(policy, b: int, gen_seed: int, draws_per_step: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproduce the generator stream diffusers consumes: initial noise, then one draw per noisy step."""
    gen = torch.Generator().manual_seed(gen_seed)
    shape = (b, policy.cfg.horizon, 3)
    x = torch.randn(shape, generator=gen)
    steps = torch.stack([torch.randn(shape, generator=gen) if d else torch.zeros(shape) for d in draws_per_step])
    return x, steps


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [10, 100])
def test_ddpm_matches_diffusers(prediction: str, steps: int) -> None:
    from diffusers import DDPMScheduler

    p = _policy(type="diffusion", sampler="ddpm", steps=steps, prediction=prediction)
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                          prediction_type=prediction, variance_type="fixed_small")
    with torch.no_grad():
        cond = p.encode(_obs())
        ref = _diffusers_loop(p, sched, cond, gen_seed=3)
        ts = p.grid.coef["t"]
        x0, z = _our_noise(p, 4, 3, [t > 0 for t in ts])
        ours = p.sample(cond, noise=x0, step_noise=z)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_ddim_matches_diffusers(eta: float, prediction: str) -> None:
    from diffusers import DDIMScheduler

    p = _policy(type="diffusion", sampler="ddim", steps=10, eta=eta, prediction=prediction)
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                          prediction_type=prediction, set_alpha_to_one=True, steps_offset=0)
    with torch.no_grad():
        cond = p.encode(_obs())
        ref = _diffusers_loop(p, sched, cond, gen_seed=5, eta=eta)
        x0, z = _our_noise(p, 4, 5, [eta > 0] * 10)
        ours = p.sample(cond, noise=x0, step_noise=z)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_betas_match_diffusers() -> None:
    from diffusers import DDPMScheduler

    from genpolicy.policies.diffusion import make_betas

    for sched in ("squaredcos_cap_v2", "linear"):
        ref = DDPMScheduler(num_train_timesteps=100, beta_schedule=sched).betas
        assert torch.allclose(make_betas(sched, 100), ref, atol=1e-7)


@pytest.mark.parametrize("kind", [("diffusion", "ddpm"), ("diffusion", "ddim"), ("flow", "euler"), ("flow", "shortcut")])
@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_chain_view_is_consistent(kind: tuple[str, str], network: str) -> None:
    ptype, sampler = kind
    steps = 4 if ptype == "flow" else 5
    p = _policy(type=ptype, sampler=sampler, steps=steps, network=network, eta=0.5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cond = p.encode(_obs())
        noise = p.initial_noise(4, gen)
        step_noise = torch.randn((steps, *noise.shape), generator=gen)
        chain = p.sample_chain(cond, noise=noise, step_noise=step_noise)
        plain = p.sample(cond, noise=noise, step_noise=step_noise)
    assert chain.chain.shape == (4, steps + 1, 8, 3)
    if ptype == "diffusion":  # the recorded stds are the scheduler's own per-step stds
        assert torch.allclose(chain.stds[0, :, 0, 0], torch.tensor(p.grid.std), atol=1e-7)
    assert torch.equal(chain.chain[:, 0], noise)
    assert torch.allclose(chain.actions, plain, atol=1e-6)
    # every stored transition is mean + std * z with the recorded stats
    for k in range(steps):
        expect = chain.means[:, k] + chain.stds[:, k] * step_noise[k] if p.stochastic else chain.means[:, k]
        assert torch.allclose(chain.chain[:, k + 1], expect, atol=1e-6)
        lp = p.step_log_prob(cond, chain.chain[:, k], chain.chain[:, k + 1], k, min_std=0.1)
        std = chain.stds[:, k].clamp_min(0.1)
        manual = gaussian_log_prob(chain.chain[:, k + 1], chain.means[:, k], std).flatten(1).sum(-1)
        assert torch.allclose(lp, manual, atol=1e-4)


def test_gaussian_log_prob_matches_torch_distributions() -> None:
    x, m, s = torch.randn(10), torch.randn(10), torch.rand(10) + 0.1
    ref = torch.distributions.Normal(m, s).log_prob(x)
    assert torch.allclose(gaussian_log_prob(x, m, s), ref, atol=1e-6)


def test_flow_euler_is_plain_euler_integration() -> None:
    p = _policy(type="flow", sampler="euler", steps=4, shortcut=False)
    with torch.no_grad():
        cond = p.encode(_obs())
        x = torch.randn(4, 8, 3)
        out = p.sample(cond, noise=x.clone())
        for k in range(4):
            t = torch.full((4,), k / 4)
            x = x + 0.25 * p.net(x, t * 1000.0, cond)
    assert torch.allclose(out, x, atol=1e-6)


def test_flow_loss_uses_t0_noise_t1_data_convention() -> None:
    """At t=1 the interpolant is the data; at t=0 it is the noise (DESIGN.md flow-time contract)."""
    p = _policy(type="flow", sampler="euler", shortcut=False)
    seen = []
    p.velocity = lambda x, t, cond, d=None: (seen.append(x.clone()), torch.zeros_like(x))[1]  # type: ignore[method-assign]
    a, z = torch.randn(2, 8, 3), torch.randn(2, 8, 3)
    cond = torch.zeros(2, p.obs_encoder.out_dim)
    err = p.per_sample_loss(cond, a, z, torch.tensor([0.0, 1.0]))
    assert torch.allclose(seen[0][0], z[0]) and torch.allclose(seen[0][1], a[1])
    assert torch.allclose(err, (a - z) ** 2)  # zero prediction -> squared target velocity a - z


def test_shortcut_sampler_needs_power_of_two_steps() -> None:
    from genpolicy.errors import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        tiny_policy_cfg(type="flow", sampler="shortcut", steps=3)
    with pytest.raises(ConfigError, match="shortcut=true"):
        tiny_policy_cfg(type="flow", sampler="shortcut", steps=2, shortcut=False)


def test_select_action_replans_every_ta_steps() -> None:
    p = _policy(type="flow", sampler="euler", steps=2)
    calls = []
    real = p.predict_chunk
    p.predict_chunk = lambda obs, **kw: (calls.append(obs["state"].clone()), real(obs, **kw))[1]  # type: ignore[method-assign]
    p.reset()
    states = [np.full(5, float(i), np.float32) for i in range(9)]
    actions = [p.select_action({"state": s}) for s in states]
    assert len(calls) == 3  # steps 0, 4, 8 with Ta = 4
    assert actions[0].shape == (3,)
    # the first window repeats the first observation; later windows hold the last To observations
    assert torch.equal(calls[0][0, 0], calls[0][0, 1])
    assert torch.equal(calls[1][0], torch.stack([torch.as_tensor(states[3]), torch.as_tensor(states[4])]))
    # executed actions are the first Ta of one chunk: they come from a single predict_chunk call
    p.reset()
    torch.manual_seed(1)
    chunk = p.predict_chunk({"state": torch.as_tensor(np.stack([states[0]] * 2))[None]})
    torch.manual_seed(1)
    got = torch.stack([p.select_action({"state": states[0]}) for _ in range(4)])
    assert torch.allclose(got, chunk[0, :4], atol=1e-6)


def test_actions_are_unnormalised_into_data_range() -> None:
    p = _policy(type="diffusion", sampler="ddim", steps=3, timestep_spacing="trailing")
    with torch.no_grad():
        a = p.predict_chunk(_obs(16))
    lo, hi = p.normalizer.stat("action", "min"), p.normalizer.stat("action", "max")
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()


def test_set_sampler_validates() -> None:
    from genpolicy.errors import ConfigError

    p = _policy(type="diffusion", sampler="ddim", steps=5)
    with pytest.raises(ConfigError):
        p.set_sampler("euler")
    p.set_sampler("ddpm", 10)
    assert p.cfg.sampler == "ddpm" and p.grid.coef["t"][0] == 90


def test_ddim_trailing_spacing_matches_diffusers_for_few_steps() -> None:
    from diffusers import DDIMScheduler

    p = _policy(type="diffusion", sampler="ddim", steps=4, timestep_spacing="trailing")
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                          set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing",
                          prediction_type=p.cfg.prediction)
    with torch.no_grad():
        cond = p.encode(_obs())
        ref = _diffusers_loop(p, sched, cond, gen_seed=9, eta=0.0)
        x0, z = _our_noise(p, 4, 9, [False] * 4)
        ours = p.sample(cond, noise=x0, step_noise=z)
    assert p.grid.coef["t"] == [99, 74, 49, 24]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_few_leading_steps_are_refused() -> None:
    from genpolicy.errors import ConfigError

    with pytest.raises(ConfigError, match="timestep_spacing=trailing"):
        tiny_policy_cfg(type="diffusion", sampler="ddim", steps=2)
    with pytest.raises(ConfigError, match="power of two <= 64"):
        tiny_policy_cfg(type="flow", sampler="shortcut", steps=128)


def test_ddpm_training_noise_matches_diffusers_add_noise() -> None:
    from diffusers import DDPMScheduler

    p = _policy(type="diffusion", sampler="ddim", prediction="sample")
    seen = []
    p.net.forward = lambda x, t, cond, d=None: (seen.append(x), torch.zeros_like(x))[1]  # type: ignore[method-assign]
    a, z, t = torch.randn(3, 8, 3), torch.randn(3, 8, 3), torch.tensor([0, 50, 99])
    p.per_sample_loss(torch.zeros(3, 1), a, z, t)
    ref = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2").add_noise(a, z, t)
    assert torch.allclose(seen[0], ref, atol=1e-6)


def test_shortcut_targets_vanish_for_a_straight_flow() -> None:
    """If the velocity field is exactly constant, two half steps equal one full step: zero shortcut loss."""
    p = _policy(type="flow", sampler="euler", shortcut=True)
    a, z = torch.randn(16, 8, 3), torch.randn(16, 8, 3)
    p.velocity = lambda x, t, cond, d=None: (a - z)  # type: ignore[method-assign]
    err = p._shortcut_loss(torch.zeros(16, 1), a, z, torch.Generator().manual_seed(0))
    assert err.shape == (16,) and torch.allclose(err, torch.zeros(16), atol=1e-10)


def test_state_indices_hide_the_other_state_dims() -> None:
    """A policy with state_indices conditions on those dims only: changing any other dim leaves the chunk as is."""
    from genpolicy.errors import ConfigError

    p = _policy(type="flow", sampler="euler", state_indices=[0, 3])
    obs = _obs()
    changed = {"state": obs["state"].clone()}
    changed["state"][..., [1, 2, 4]] += 5.0
    seen = {"state": obs["state"].clone()}
    seen["state"][..., 3] += 5.0
    a, b, c = (p.predict_chunk(o, generator=torch.Generator().manual_seed(0)) for o in (obs, changed, seen))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert p.obs_encoder.out_dim == 2 * 2  # To * len(state_indices)
    with pytest.raises(ConfigError, match="state_indices"):
        _policy(state_indices=[0, 5])
    with pytest.raises(ConfigError, match="state_indices"):
        tiny_policy_cfg(state_indices=[1, 1])
