"""Render on demand (envs/wrappers.py): a chunked env renders only the steps whose frames a policy window can contain,
and the windows the policy sees are exactly those of rendering every step; MuJoCo renderers are shared per process."""

from __future__ import annotations

import numpy as np
import pytest

from genpolicy.envs.registry import make_env
from genpolicy.envs.wrappers import ChunkedEnv


def _pair(task: str, to: int, ta: int, **kw: object) -> tuple[ChunkedEnv, ChunkedEnv]:
    lazy = ChunkedEnv(make_env(task, seed=0, images=True, **kw), to, ta)
    full = ChunkedEnv(make_env(task, seed=0, images=True, **kw), to, ta, render_every_step=True)
    assert lazy.lazy and not full.lazy
    return lazy, full


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_toy_windows_equal_render_every_step_through_truncation() -> None:
    # 23 steps with Ta=5: the time limit cuts the fifth chunk after 3 steps, whose final window is bootstrapped from
    to, ta = 3, 5
    lazy, full = _pair("toy/bimodal", to, ta, image_size=16, max_episode_steps=23)
    rng = np.random.default_rng(0)
    for ep in range(2):
        assert _same(lazy.reset(seed=ep), full.reset(seed=ep))
        lazy.rendered = full.rendered = 0
        while True:
            chunk = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
            a, b = lazy.step(chunk), full.step(chunk)
            assert _same(a.obs, b.obs) and (a.n_steps, a.truncated) == (b.n_steps, b.truncated)
            if a.terminated or a.truncated:
                break
        assert a.truncated and a.n_steps == 3
        assert lazy.rendered == 4 * to + to and full.rendered == 23  # 3 + 3 + 3 + 3 + 3 (the cut chunk) vs every step


def test_toy_early_termination_renders_the_final_state() -> None:
    # an expert episode's actions replayed in chunks sized so that the goal is reached before the rendered tail
    env = make_env("toy/bimodal-right", seed=0)
    obs, actions, done = env.reset(seed=1), [], False
    from genpolicy.envs.toy import ToyExpert

    expert = ToyExpert(seed=3)
    expert.reset()
    while not done:
        actions.append(expert.act(env, obs))
        obs, _, term, trunc, _ = env.step(actions[-1])
        done = term or trunc
    assert term
    to = 2
    ta = next(t for t in range(5, 12) if 1 <= len(actions) % t <= t - to)
    lazy, full = _pair("toy/bimodal-right", to, ta, image_size=16)
    lazy.reset(seed=1), full.reset(seed=1)
    for i in range(0, len(actions), ta):
        chunk = np.stack(actions[i:i + ta] + [actions[-1]] * (ta - len(actions[i:i + ta])))
        a, b = lazy.step(chunk), full.step(chunk)
        if not a.terminated:
            assert _same(a.obs, b.obs)
    assert a.terminated and a.n_steps <= ta - to
    # the final state is rendered on demand; the skipped history frame repeats it (never acted on: the episode ended)
    assert np.array_equal(a.obs["image.top"][-1], b.obs["image.top"][-1])
    assert np.array_equal(a.obs["state"], b.obs["state"])
    assert np.array_equal(a.obs["image.top"][0], a.obs["image.top"][-1])


def test_metaworld_windows_equal_and_renderers_are_shared() -> None:
    pytest.importorskip("metaworld")
    from genpolicy.envs import mjrender

    before = len(mjrender._SHARED)
    lazy, full = _pair("metaworld/door-open-v3", 2, 8, image_size=32)
    assert len(mjrender._SHARED) == before  # contexts are made on first render
    rng = np.random.default_rng(0)
    try:
        assert _same(lazy.reset(seed=7), full.reset(seed=7))
        assert len(mjrender._SHARED) == before + 1  # two envs of one task: one GL context at this frame size
        lazy.rendered = full.rendered = 0
        calls = []  # the adapter's real camera renders, not the wrapper's bookkeeping
        inner = lazy.env._render_camera  # type: ignore[attr-defined]
        lazy.env._render_camera = lambda *a: calls.append(a) or inner(*a)  # type: ignore[attr-defined]
        for _ in range(4):
            chunk = rng.uniform(-1, 1, (8, 4)).astype(np.float32)
            a, b = lazy.step(chunk), full.step(chunk)
            assert _same(a.obs, b.obs)
        assert (lazy.rendered, full.rendered, len(calls)) == (8, 32, 8)
    finally:
        lazy.close()
        full.close()
    assert len(mjrender._SHARED) == before  # closed with its last user
