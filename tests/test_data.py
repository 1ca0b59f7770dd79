"""Replay buffer, sequence windows, normaliser, robomimic import, and bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.datasets.sequence import SequenceSampler, split_episodes
from genpolicy.errors import DataError
from genpolicy.policies.normalizer import Normalizer


def make_buffer(lengths=(5, 7, 4), ds=4, da=2, images: bool = False, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    eps = []
    for L in lengths:
        ep = {"state": rng.normal(size=(L, ds)).astype(np.float32), "action": rng.normal(size=(L, da)).astype(np.float32)}
        if images:
            ep["image.front"] = rng.integers(0, 256, size=(L, 3, 16, 16), dtype=np.uint8)
        eps.append(ep)
    return ReplayBuffer.from_episodes(eps, {"fps": 10.0, "task": "test"})


def test_zarr_roundtrip_keeps_every_value(tmp_path: Path) -> None:
    rb = make_buffer(images=True)
    rb.save(tmp_path / "d.zarr")
    back = ReplayBuffer.load(tmp_path / "d.zarr")
    assert np.array_equal(back.episode_ends, [5, 12, 16])
    for k in rb.data:
        assert np.array_equal(back.data[k], rb.data[k]) and back.data[k].dtype == rb.data[k].dtype
    assert back.attrs["fps"] == 10.0


def test_failed_save_keeps_existing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: a crash in the middle of writing leaves the old store intact and no temp dirs."""
    path = tmp_path / "d.zarr"
    make_buffer(seed=0).save(path)
    import zarr.hierarchy

    real = zarr.hierarchy.Group.array
    calls = {"n": 0}

    def boom(self, name, data, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return real(self, name, data, **kw)

    monkeypatch.setattr(zarr.hierarchy.Group, "array", boom)
    with pytest.raises(OSError, match="injected"):
        make_buffer(seed=1).save(path)
    monkeypatch.undo()
    kept = ReplayBuffer.load(path)
    assert np.array_equal(kept.data["state"], make_buffer(seed=0).data["state"])
    assert [p.name for p in tmp_path.iterdir()] == ["d.zarr"]


def test_sequence_windows_pad_at_episode_edges() -> None:
    rb = make_buffer(lengths=(3, 4))
    s = SequenceSampler(rb, np.array([0, 1]), n_obs_steps=2, horizon=4)
    assert len(s) == 7  # every step of every episode is a current step
    b = s.batch(np.arange(7))
    st, act, pad = b["obs"]["state"].numpy(), b["action"].numpy(), b["action_is_pad"].numpy()
    S, A = rb.data["state"], rb.data["action"]
    # episode 0, t=0: obs repeats frame 0; actions 0,1,2 then edge pad with action 2
    assert np.array_equal(st[0], S[[0, 0]]) and np.array_equal(act[0], A[[0, 1, 2, 2]])
    assert pad[0].tolist() == [False, False, False, True]
    # episode 1, t=0 (buffer row 3): never reaches into episode 0
    assert np.array_equal(st[3], S[[3, 3]]) and np.array_equal(act[3], A[[3, 4, 5, 6]])
    assert pad[3].tolist() == [False] * 4
    # last step of episode 1: obs (5, 6); actions 6 repeated
    assert np.array_equal(st[6], S[[5, 6]]) and np.array_equal(act[6], A[[6, 6, 6, 6]])
    assert pad[6].tolist() == [False, True, True, True]


def test_episode_split_is_disjoint_and_deterministic() -> None:
    tr, va = split_episodes(20, 0.1, seed=3)
    assert len(va) == 2 and not set(tr) & set(va) and len(tr) + len(va) == 20
    tr2, va2 = split_episodes(20, 0.1, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr3, _ = split_episodes(20, 0.1, seed=3, max_train=5)
    assert len(tr3) == 5 and set(tr3) <= set(tr)


def test_normalizer_minmax_and_meanstd() -> None:
    rng = np.random.default_rng(0)
    x = np.c_[rng.uniform(-3, 7, 500), np.full(500, 2.0)]  # second dim is constant
    n = Normalizer({"a": 2, "b": 2}, {"a": "minmax", "b": "meanstd"})
    n.fit({"a": x, "b": x})
    y = n.normalize("a", torch.as_tensor(x, dtype=torch.float32))
    assert torch.allclose(y[:, 0].min(), torch.tensor(-1.0)) and torch.allclose(y[:, 0].max(), torch.tensor(1.0))
    assert torch.allclose(y[:, 1], torch.zeros(500))  # degenerate dim is centred, not blown up
    z = n.normalize("b", torch.as_tensor(x, dtype=torch.float32))
    assert abs(float(z[:, 0].mean())) < 1e-5 and abs(float(z[:, 0].std(unbiased=False)) - 1) < 1e-4
    back = n.unnormalize("a", y)
    assert torch.allclose(back, torch.as_tensor(x, dtype=torch.float32), atol=1e-5)
    assert bool(n.fitted)


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d.pop("action"), "missing key 'data/action'"),
    (lambda d: d["action"].__setitem__((3, 1), np.nan), "NaN or inf"),
    (lambda d: d["action"].__setitem__((0, 0), np.inf), "NaN or inf"),
    (lambda d: d.__setitem__("state", d["state"][:-2]), "truncated or inconsistent"),
    (lambda d: d.__setitem__("action", d["action"][:, :, None]), "must be \\(N, Da\\)"),
])
def test_bad_buffers_are_rejected_with_the_key(break_it, message) -> None:
    rb = make_buffer()
    break_it(rb.data)
    rb.source = "demo.zarr"
    with pytest.raises(DataError, match=message) as e:
        rb.validate()
    assert "demo.zarr" in str(e.value)


def test_empty_episode_and_truncated_store_on_disk(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "d.zarr"
    make_buffer().save(path)
    root = zarr.open_group(str(path), mode="r+")
    root["meta"]["episode_ends"][:] = np.array([5, 5, 16])
    with pytest.raises(DataError, match="episode 1 is empty"):
        ReplayBuffer.load(path)
    # a store whose chunk files were cut off
    path2 = tmp_path / "t.zarr"
    make_buffer().save(path2)
    for f in (path2 / "data" / "action").iterdir():
        if not f.name.startswith("."):
            f.write_bytes(f.read_bytes()[:7])
    with pytest.raises(DataError, match="data/action"):
        ReplayBuffer.load(path2)
    with pytest.raises(DataError, match="no such dataset"):
        ReplayBuffer.load(tmp_path / "missing.zarr")


def _write_robomimic(path: Path, lengths=(6, 9)) -> dict:
    import h5py

    rng = np.random.default_rng(0)
    truth = {"actions": [], "eef": [], "obj": [], "img": []}
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        g.attrs["env_args"] = '{"env_name": "Lift", "env_kwargs": {"control_freq": 20}}'
        for i, L in enumerate(lengths):
            d = g.create_group(f"demo_{i}")
            a, eef, obj = rng.normal(size=(L, 7)), rng.normal(size=(L, 3)), rng.normal(size=(L, 10))
            img = rng.integers(0, 256, (L, 12, 12, 3), dtype=np.uint8)
            d.create_dataset("actions", data=a)
            d.create_dataset("obs/robot0_eef_pos", data=eef)
            d.create_dataset("obs/object", data=obj)
            d.create_dataset("obs/agentview_image", data=img)
            d.attrs["num_samples"] = L
            for k, v in zip(("actions", "eef", "obj", "img"), (a, eef, obj, img)):
                truth[k].append(v)
    return {k: np.concatenate(v) for k, v in truth.items()}


def test_robomimic_import(tmp_path: Path) -> None:
    from genpolicy.datasets.robomimic import import_robomimic

    truth = _write_robomimic(tmp_path / "demo.hdf5")
    rb = import_robomimic(tmp_path / "demo.hdf5", state_keys=["robot0_eef_pos", "object"])
    assert np.array_equal(rb.episode_ends, [6, 15])
    assert np.allclose(rb.data["state"], np.c_[truth["eef"], truth["obj"]].astype(np.float32))
    assert np.allclose(rb.data["action"], truth["actions"].astype(np.float32))
    assert np.array_equal(rb.data["image.agentview"], truth["img"].transpose(0, 3, 1, 2))
    assert rb.attrs["fps"] == 20.0
    with pytest.raises(DataError, match="obs/nope"):
        import_robomimic(tmp_path / "demo.hdf5", state_keys=["nope"])


def test_robomimic_missing_data_group(tmp_path: Path) -> None:
    import h5py

    from genpolicy.datasets.robomimic import import_robomimic

    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(DataError, match="bad.hdf5.*'data'"):
        import_robomimic(tmp_path / "bad.hdf5")


def test_float64_store_is_read_as_float32_and_ints_are_refused(tmp_path: Path) -> None:
    rb = make_buffer()
    rb.data["action"] = rb.data["action"].astype(np.float64)
    rb.validate()
    assert rb.data["action"].dtype == np.float32
    rb.data["state"] = np.zeros_like(rb.data["state"], dtype=np.int64)
    with pytest.raises(DataError, match="'data/state' must hold floats"):
        rb.validate()
