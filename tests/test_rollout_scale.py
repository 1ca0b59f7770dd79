"""rollout.backend=ray: the same seeds give the same rollouts, and the same fine-tuning, as the local backend
(skipped without Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genpolicy.config import RolloutConfig
from genpolicy.errors import ConfigError
from genpolicy.finetune.ray_rollout import split
from genpolicy.finetune.rollout import RewardScaler, VecChunkEnv, collect


def test_split_and_config_errors() -> None:
    assert [list(r) for r in split(5, 2)] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ConfigError, match="rollout.workers"):
        split(2, 3)
    with pytest.raises(ConfigError, match="rollout.backend"):
        RolloutConfig(backend="dask")


def test_ray_backend_equals_local_backend(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from genpolicy.finetune.ray_rollout import RaySlices, init_ray

    task, n, seed = "toy/bimodal", 5, 3  # 5 envs over 2 workers: uneven slices; short episodes: resets across slices
    init_ray(num_cpus=2)
    try:
        venvs = {"local": VecChunkEnv(task, n, 2, 4, seed=seed, max_episode_steps=12),
                 "ray": VecChunkEnv(task, n, 2, 4, seed=seed, max_episode_steps=12,
                                    runner=RaySlices(task, list(range(seed, seed + n)), 2, 4, 12, workers=2))}
        rolls = {}
        for name, venv in venvs.items():
            g = torch.Generator().manual_seed(0)
            act = lambda o: {"actions": torch.rand(o["state"].shape[0], 8, 2, generator=g) * 2 - 1}  # noqa: E731
            rolls[name] = collect(venv, act, lambda o: o["state"][:, -1].sum(-1), lambda a: a, 8,
                                  torch.device("cpu"), scaler=RewardScaler(0.99))
        a, b = rolls["local"], rolls["ray"]
        assert len(a.episodes) > n  # envs were reset with seeds handed out across both workers
        for k in ("obs",):
            assert torch.equal(getattr(a, k)["state"], getattr(b, k)["state"])
        for k in ("rewards", "raw_rewards", "terminated", "truncated", "final_values", "next_value"):
            assert torch.equal(getattr(a, k), getattr(b, k)), k
        assert a.episodes == b.episodes and a.env_steps == b.env_steps
        assert venvs["local"].next_seed == venvs["ray"].next_seed
        venvs["ray"].restart(100)  # resume path: fresh episodes with continued seeds, on every worker
        venvs["local"].restart(100)
        assert torch.equal(venvs["ray"].batch_obs(torch.device("cpu"))["state"],
                           venvs["local"].batch_obs(torch.device("cpu"))["state"])
        for v in venvs.values():
            v.close()
        with pytest.raises(ConfigError, match="one Ray CPU each"):  # 3 actors on a 2-CPU Ray would wait forever
            RaySlices(task, [0, 1, 2], 2, 4, workers=3)
        # the config switch end to end: finetune() with rollout.backend=ray learns exactly what the local one does
        assert _tiny_finetune(tmp_path / "local", "local") == _tiny_finetune(tmp_path / "ray", "ray")
    finally:
        ray.shutdown()


def _tiny_finetune(run_dir: Path, backend: str) -> dict:
    from genpolicy.config import EvalConfig, FinetuneConfig, PPOConfig, RunConfig, TaskConfig
    from genpolicy.finetune.ppo import finetune
    from genpolicy.training.checkpoint import save_checkpoint
    from tests.conftest import fitted_tiny_policy

    policy = fitted_tiny_policy(state_dim=2, action_dim=2, type="flow", sampler="euler", steps=4, shortcut=False,
                                n_obs_steps=1)
    ckpt = save_checkpoint(run_dir / "bc", policy, {"task": {"name": "toy/bimodal"}}, step=1, ema=policy)
    cfg = FinetuneConfig(algo="reinflow", ckpt=str(ckpt), task=TaskConfig(name="toy/bimodal", max_episode_steps=12),
                         ppo=PPOConfig(n_envs=3, n_steps=4, iterations=2, epochs=1, minibatch_size=6),
                         rollout=RolloutConfig(backend=backend, workers=2),
                         eval=EvalConfig(n_episodes=2, n_envs=2, n_videos=0, every=0),
                         run=RunConfig(dir=str(run_dir / "run"), progress=False, ckpt_every=100))
    cfg.reinflow.steps = 2
    out = finetune(cfg)
    return {k: out[k] for k in ("final_return", "final_success", "env_steps", "start_return")}
