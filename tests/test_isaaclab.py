"""The IsaacLab adapter and the batched torch rollout, on the MuJoCo stand-in (IsaacLab itself is not installable here).

The independent check: episode returns, chunk rewards, flags and observation windows of the batched backend equal a
plain sequential run of gymnasium's Hopper with the same seeds and the same actions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.errors import ConfigError
from genpolicy.finetune.rollout import RewardScaler, collect
from genpolicy.finetune.torch_rollout import TorchVecChunkEnv, make_torch_venv

pytest.importorskip("gymnasium")
TASK = "isaaclab_standin/hopper-v5"
N, TO, H, TA, MAX_STEPS, SEED = 3, 2, 6, 4, 20, 7


def _chunks(n_chunks: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n_chunks, N, H, 3, generator=g) * 2 - 1  # (K, N, H, Da), Hopper's box is [-1, 1]


def _sequential_reference(chunks: torch.Tensor) -> dict[str, list]:
    """One plain gymnasium Hopper per env, stepped action by action with auto-reset: per chunk the start window,
    the reward up to the first episode end, the flags of that end; and every finished episode's return/length."""
    import gymnasium as gym

    out = {"window": [], "reward": [], "term": [], "trunc": [], "episodes": []}
    for i in range(N):
        env = gym.make("Hopper-v5", max_episode_steps=MAX_STEPS)
        obs, _ = env.reset(seed=SEED + i)
        hist = [obs.astype(np.float32)] * TO
        ret, length = 0.0, 0
        rows = {"window": [], "reward": [], "term": [], "trunc": []}
        for k in range(chunks.shape[0]):
            rows["window"].append(np.stack(hist[-TO:]))
            r_chunk, te_c, tr_c, live = 0.0, False, False, True
            for a in chunks[k, i, :TA].numpy().astype(np.float64):
                obs, r, te, tr, _ = env.step(a)
                ret, length = ret + r, length + 1
                if live:
                    r_chunk += r
                    te_c, tr_c = te, tr
                if te or tr:
                    out["episodes"].append((i, ret, length))
                    ret, length, live = 0.0, 0, False
                    obs, _ = env.reset()
                    hist = [obs.astype(np.float32)] * TO
                else:
                    hist.append(obs.astype(np.float32))
            for key, v in zip(("reward", "term", "trunc"), (r_chunk, te_c, tr_c)):
                rows[key].append(v)
        for key in rows:
            out[key].append(rows[key])
        env.close()
    out["window"] = np.stack([np.stack(w) for w in out["window"]], 1)  # (K, N, To, D)
    for key in ("reward", "term", "trunc"):
        out[key] = np.asarray(out[key]).T  # (K, N)
    return out


def test_isaaclab_is_never_replaced_silently() -> None:
    from genpolicy.envs.registry import is_batched_task, make_batched_env

    assert is_batched_task(TASK) and is_batched_task("isaaclab/Isaac-Cartpole-v0") and not is_batched_task("gym/hopper-v5")
    if importlib.util.find_spec("isaaclab") is None:
        with pytest.raises(ConfigError, match="not installed"):
            make_batched_env("isaaclab/Isaac-Cartpole-v0", 2, seed=0)


def test_shapes_dtypes_devices() -> None:
    venv = make_torch_venv(TASK, N, TO, TA, seed=SEED, max_episode_steps=MAX_STEPS)
    assert venv.spec.state_dim == 11 and venv.spec.action_dim == 3 and venv.spec.max_episode_steps == MAX_STEPS
    obs = venv.batch_obs(venv.device)
    assert obs["state"].shape == (N, TO, 11) and obs["state"].dtype == torch.float32
    assert torch.equal(obs["state"][:, 0], obs["state"][:, 1])  # the first observation repeated
    res = venv.step(_chunks(1)[0])
    for x in (res.rewards, res.raw_rewards, res.terminated, res.truncated, res.next_obs["state"]):
        assert isinstance(x, torch.Tensor) and x.device == venv.device
    assert res.rewards.shape == (N,) and res.rewards.dtype == torch.float64 and res.terminated.dtype == torch.bool
    assert res.env_steps == N * TA and not res.final_obs
    venv.restart(100)  # resume: one simulation seed, reproducible; the seed counter moves past the started episodes
    first = venv.batch_obs(venv.device)["state"]
    assert venv.next_seed == 100 + N
    venv.restart(100)
    assert torch.equal(venv.batch_obs(venv.device)["state"], first)
    venv.close()


def test_bookkeeping_equals_a_sequential_gymnasium_run() -> None:
    chunks = _chunks(14)  # 56 steps per env with a 20-step limit: terminations and truncations both occur
    ref = _sequential_reference(chunks)
    venv = make_torch_venv(TASK, N, TO, TA, seed=SEED, max_episode_steps=MAX_STEPS)
    episodes, windows, rew, term, trunc = [], [], [], [], []
    for k in range(chunks.shape[0]):
        windows.append(venv.batch_obs(venv.device)["state"])
        res = venv.step(chunks[k])
        episodes += res.episodes
        rew.append(res.rewards), term.append(res.terminated), trunc.append(res.truncated)
    venv.close()
    assert bool(np.any(ref["term"])) and bool(np.any(ref["trunc"]))  # the test exercises both kinds of ending
    torch.testing.assert_close(torch.stack(windows), torch.as_tensor(ref["window"]))  # on-device history, exact
    torch.testing.assert_close(torch.stack(rew), torch.as_tensor(ref["reward"]), rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.stack(term), torch.as_tensor(ref["term"]))
    assert torch.equal(torch.stack(trunc), torch.as_tensor(ref["trunc"]))
    got = sorted((e["env"], e["length"]) for e in episodes)
    assert got == sorted((i, ln) for i, _, ln in ref["episodes"])
    for i in range(N):  # returns per env, in order
        mine = [e["return"] for e in episodes if e["env"] == i]
        np.testing.assert_allclose(mine, [r for j, r, _ in ref["episodes"] if j == i], rtol=1e-5)


class _BoundaryGuard:
    """Wraps the stand-in: asserts that what crosses into the simulator is a torch tensor on its device, and lets
    numpy run only inside it (the simulator's own side)."""

    allowed = False

    def __init__(self, env) -> None:
        self.env = env
        self.num_envs, self.device = env.num_envs, env.device
        self.single_action_space, self.single_observation_space = env.single_action_space, env.single_observation_space
        self.max_episode_length, self.step_dt = env.max_episode_length, env.step_dt
        self.calls = 0

    def _inner(self, fn, *a, **kw):
        _BoundaryGuard.allowed = True
        try:
            out = fn(*a, **kw)
        finally:
            _BoundaryGuard.allowed = False
        return out

    def reset(self, **kw):
        return self._inner(self.env.reset, **kw)

    def step(self, action):
        assert isinstance(action, torch.Tensor) and action.device == self.device and action.shape == (N, 3)
        self.calls += 1
        out = self._inner(self.env.step, action)
        assert all(isinstance(x, torch.Tensor) and x.device == self.device for x in (out[0]["policy"], *out[1:4]))
        return out

    def close(self) -> None:
        self.env.close()


def test_torch_path_never_touches_numpy(monkeypatch) -> None:
    from genpolicy.envs.isaaclab import spec_from_env
    from genpolicy.envs.isaaclab_standin import StandInEnv

    env = _BoundaryGuard(StandInEnv("hopper-v5", N, seed=SEED, max_episode_steps=MAX_STEPS))
    venv = TorchVecChunkEnv(env, spec_from_env(env, TASK), TO, TA, seed=SEED)
    real_numpy, real_array, real_asarray = torch.Tensor.numpy, torch.Tensor.__array__, np.asarray

    def forbid(real):
        def wrapped(*a, **kw):
            if not _BoundaryGuard.allowed:
                raise AssertionError("numpy on the torch rollout path")
            return real(*a, **kw)
        return wrapped

    monkeypatch.setattr(torch.Tensor, "numpy", forbid(real_numpy))
    monkeypatch.setattr(torch.Tensor, "__array__", forbid(real_array))
    monkeypatch.setattr(np, "asarray", forbid(real_asarray))
    dev = venv.device
    g = torch.Generator().manual_seed(0)

    def act(obs):
        assert obs["state"].device == dev and obs["state"].shape == (N, TO, 11)
        return {"actions": torch.rand(N, H, 3, generator=g) * 2 - 1, "noise": torch.zeros(N, 2)}

    roll = collect(venv, act, lambda o: o["state"][:, -1].sum(-1), lambda a: a, 6, dev, reward_offset=0.1,
                   scaler=RewardScaler(0.99))
    monkeypatch.undo()
    assert env.calls == 6 * TA
    for x in (roll.obs["state"], roll.actions, roll.rewards, roll.terminated, roll.final_values, roll.next_value):
        assert isinstance(x, torch.Tensor) and x.device == dev
    assert roll.obs["state"].shape == (6, N, TO, 11) and roll.env_steps == 6 * N * TA
    boot = roll.truncated & ~roll.terminated  # no final obs here: truncated chunks bootstrap from V(their start)
    assert torch.equal(roll.final_values[boot], roll.values[boot]) and bool((roll.final_values[~boot] == 0).all())
    venv.close()


def test_finetune_smoke_on_the_standin(tmp_path: Path) -> None:
    """A tiny untrained flow policy (normaliser fitted on random Hopper data) through the on-policy finetune() loop."""
    from tests.conftest import fitted_tiny_policy

    from genpolicy.config import EvalConfig, FinetuneConfig, PPOConfig, RunConfig, TaskConfig
    from genpolicy.finetune.ppo import finetune
    from genpolicy.training.checkpoint import save_checkpoint

    policy = fitted_tiny_policy(state_dim=11, action_dim=3, type="flow", sampler="euler", steps=4, shortcut=False,
                                n_obs_steps=TO, horizon=H, n_action_steps=TA)
    ckpt = save_checkpoint(tmp_path / "bc", policy, {"task": {"name": TASK}}, step=1, ema=policy)
    cfg = FinetuneConfig(algo="reinflow", ckpt=str(ckpt), task=TaskConfig(name=TASK, max_episode_steps=MAX_STEPS),
                         ppo=PPOConfig(n_envs=4, n_steps=3, iterations=2, epochs=1, minibatch_size=8),
                         eval=EvalConfig(n_episodes=2, n_envs=2, n_videos=0, every=0),
                         run=RunConfig(dir=str(tmp_path / "run"), progress=False, log_every=1, ckpt_every=100))
    cfg.reinflow.steps = 2
    out = finetune(cfg)
    assert out["env_steps"] == 2 * 3 * 4 * TA and out["task"] == TASK
    assert Path(out["final_checkpoint"]).is_dir() and np.isfinite(out["final_return"])


def test_offpolicy_refuses_tasks_without_final_observations(tmp_path: Path) -> None:
    from tests.conftest import fitted_tiny_policy

    from genpolicy.config import FinetuneConfig, RunConfig, TaskConfig
    from genpolicy.finetune.ppo import finetune
    from genpolicy.training.checkpoint import save_checkpoint

    policy = fitted_tiny_policy(state_dim=11, action_dim=3, type="flow", sampler="euler", steps=4, shortcut=False)
    ckpt = save_checkpoint(tmp_path / "bc", policy, {"task": {"name": TASK}}, step=1, ema=policy)
    cfg = FinetuneConfig(algo="dsrl", ckpt=str(ckpt), task=TaskConfig(name=TASK),
                         run=RunConfig(dir=str(tmp_path / "run"), progress=False))
    with pytest.raises(ConfigError, match="final observation"):
        finetune(cfg)
