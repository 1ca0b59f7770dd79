"""Env adapters against the real simulators, the chunked-execution wrapper, and expert demonstrations."""

from __future__ import annotations

import numpy as np
import pytest

from genpolicy.envs.registry import make_env
from genpolicy.envs.wrappers import ChunkedEnv
from genpolicy.experts.registry import make_expert


def _rollout_expert(task: str, seed: int, noise: float = 0.0, **kw) -> tuple[bool, int, list[np.ndarray]]:
    env = make_env(task, seed=seed, **kw)
    expert = make_expert(task, noise=noise, seed=seed)
    obs = env.reset(seed=seed)
    expert.reset()
    states, success, done, n = [obs["state"]], False, False, 0
    while not done:
        obs, _, term, trunc, info = env.step(expert.act(env, obs))
        states.append(obs["state"])
        success, done, n = success or info["success"], term or trunc, n + 1
    env.close()
    return success, n, states


def test_toy_expert_goes_both_ways() -> None:
    sides = []
    expert = make_expert("toy/bimodal", seed=0)
    env = make_env("toy/bimodal")
    for ep in range(20):
        obs = env.reset(seed=ep)
        expert.reset()
        xs, done, success = [], False, False
        while not done:
            obs, _, term, trunc, info = env.step(expert.act(env, obs))
            xs.append(obs["state"][0])
            done, success = term or trunc, success or info["success"]
        assert success
        sides.append(np.sign(np.mean(xs)))
    assert 5 <= sum(s > 0 for s in sides) <= 15


def test_chunked_env_sums_rewards_and_keeps_end_reasons() -> None:
    env = ChunkedEnv(make_env("toy/bimodal", max_episode_steps=6), n_obs_steps=3, n_action_steps=4)
    obs = env.reset(seed=0)
    assert obs["state"].shape == (3, 2) and np.array_equal(obs["state"][0], obs["state"][2])
    r = env.step(np.zeros((8, 2), np.float32))  # standing still: no success
    assert r.n_steps == 4 and not r.terminated and not r.truncated and r.reward == 0.0
    r = env.step(np.zeros((8, 2), np.float32))
    assert r.n_steps == 2 and r.truncated and not r.terminated  # stopped early at the time limit
    # a chunk that reaches the goal terminates (not truncates) and its reward is summed over executed steps
    env = ChunkedEnv(make_env("toy/bimodal", max_episode_steps=100), n_obs_steps=1, n_action_steps=200)
    env.reset(seed=0)
    path = [np.array([1.0, 0.0])] * 8 + [np.array([0.0, 1.0])] * 25 + [np.array([-1.0, 0.0])] * 8 + [np.array([0, 1.0])] * 10
    r = env.step(np.array(path, np.float32))
    assert r.terminated and r.success and r.reward == 1.0 and r.n_steps < len(path)


@pytest.mark.parametrize("task", ["metaworld/drawer-open-v3", "metaworld/push-v3"])
def test_metaworld_expert_succeeds_and_reset_is_deterministic(task: str) -> None:
    success, n, states = _rollout_expert(task, seed=3)
    assert success and n < 500
    _, _, again = _rollout_expert(task, seed=3)
    assert np.array_equal(states[0], again[0]) and np.array_equal(states[-1], again[-1])
    _, _, other = _rollout_expert(task, seed=4)
    assert not np.array_equal(states[0], other[0])  # another seed, another object/goal layout


def test_metaworld_images_and_render() -> None:
    env = make_env("metaworld/drawer-open-v3", images=True)
    obs = env.reset(seed=0)
    assert obs["image.corner"].shape == (3, 84, 84) and obs["image.corner"].dtype == np.uint8
    assert obs["image.corner"].std() > 5  # a real picture, not a blank buffer
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 5
    env.close()


def test_metaworld_quality_knob_degrades_expert() -> None:
    from genpolicy.datasets.collect import generate

    clean = generate("metaworld/push-v3", 6, seed=0, progress=False)
    noisy = generate("metaworld/push-v3", 6, seed=0, noise=1.5, keep_failed=True, progress=False)
    assert clean.attrs["expert_success_rate"] == 1.0
    assert noisy.attrs["expert_success_rate"] < 1.0 and noisy.n_episodes == 6  # failures kept on request


@pytest.mark.parametrize("task,state_dim", [("robosuite/lift", 19), ("robosuite/can", 19)])
def test_robosuite_expert_succeeds(task: str, state_dim: int) -> None:
    if task == "robosuite/can":
        pytest.importorskip("robosuite")
    success, n, states = _rollout_expert(task, seed=1)
    assert success and states[0].shape == (state_dim,)
