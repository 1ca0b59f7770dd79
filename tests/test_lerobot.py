"""LeRobot v3 format through the real `lerobot-dataset` library: round trips and training on its output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import DataError
from tests.test_data import make_buffer

pytest.importorskip("ledataset")


def test_zarr_to_lerobot_to_zarr_keeps_every_value(tmp_path: Path) -> None:
    from genpolicy.datasets.io import convert

    rb = make_buffer(lengths=(5, 7, 4), images=True)
    rb.save(tmp_path / "a.zarr")
    convert(tmp_path / "a.zarr", tmp_path / "lr", fmt="lerobot")
    assert (tmp_path / "lr" / "meta" / "info.json").exists()
    convert(tmp_path / "lr", tmp_path / "b.zarr")
    back = ReplayBuffer.load(tmp_path / "b.zarr")
    assert np.array_equal(back.episode_ends, rb.episode_ends)
    for k in rb.data:
        assert np.array_equal(back.data[k], rb.data[k]), k
    assert back.attrs["fps"] == 10.0
    with pytest.raises(DataError, match="already exists"):
        convert(tmp_path / "a.zarr", tmp_path / "lr", fmt="lerobot")


def _write_with_ledataset(root: Path, lengths=(12, 9, 15)) -> dict[str, np.ndarray]:
    """A dataset recorded with LeRobot's own API (not our exporter), toy-task shaped."""
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    feats = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
             "action": {"dtype": "float32", "shape": (2,), "names": None}}
    ds = LeRobotDataset.create(repo_id="local/toy", fps=10, features=feats, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    states, actions = [], []
    for L in lengths:
        for _ in range(L):
            s = rng.uniform(-1, 1, 2).astype(np.float32)
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            ds.add_frame({"observation.state": s, "action": a, "task": "reach the goal"})
            states.append(s)
            actions.append(a)
        ds.save_episode()
    ds.finalize()
    return {"state": np.stack(states), "action": np.stack(actions)}


def test_dataset_written_by_lerobot_imports_and_trains(tmp_path: Path) -> None:
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.io import convert
    from genpolicy.training.bc import train
    from tests.conftest import tiny_policy_cfg

    truth = _write_with_ledataset(tmp_path / "lr")
    out = convert(tmp_path / "lr", tmp_path / "toy.zarr")
    rb = ReplayBuffer.load(out)
    assert np.array_equal(rb.episode_ends, [12, 21, 36])
    assert np.array_equal(rb.data["state"], truth["state"]) and np.array_equal(rb.data["action"], truth["action"])
    cfg = TrainConfig(task=TaskConfig(name="toy/bimodal"), policy=tiny_policy_cfg(type="flow", sampler="euler"),
                      data=DataConfig(path=str(out)), train=OptimConfig(steps=6, batch_size=8, warmup_steps=2),
                      eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                      run=RunConfig(dir=str(tmp_path / "run"), log_every=3, ckpt_every=100, progress=False))
    res = train(cfg)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and res["eval"]["n_episodes"] == 1


def test_lerobot_errors_name_path_and_key(tmp_path: Path) -> None:
    from genpolicy.datasets.lerobot import import_lerobot

    _write_with_ledataset(tmp_path / "lr", lengths=(3,))
    with pytest.raises(DataError, match="lr.*observation.velocity"):
        import_lerobot(tmp_path / "lr", state_keys=["observation.velocity"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="info.json"):
        import_lerobot(tmp_path / "empty")
