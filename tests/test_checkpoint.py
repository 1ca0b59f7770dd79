"""Checkpoints: atomic, strict, verified, pickle-free; reload gives identical actions; resume is exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.errors import CheckpointError
from genpolicy.policies import ShapeMeta, make_policy
from genpolicy.training.checkpoint import load_policy, save_checkpoint
from tests.conftest import tiny_policy_cfg


def resign(ck: Path) -> None:
    """Re-sign a tampered checkpoint's manifest (hashes and sizes), as an attacker could: only the checks after
    the manifest can catch what was changed."""
    from genpolicy.training.checkpoint import _sha256

    man = json.loads((ck / "manifest.json").read_text())
    for name in man["files"]:
        f = ck / name
        if f.is_file() and not f.is_symlink():
            man["files"][name] = _sha256(f)
            man["sizes"][name] = f.stat().st_size
    (ck / "manifest.json").write_text(json.dumps(man))


def _policy(ptype: str = "diffusion", sampler: str = "ddim", cams: list[str] | None = None, px: int = 32, **kw):
    torch.manual_seed(0)
    shape = ShapeMeta(state_dim=4, action_dim=2, cameras=cams or [], image_size=px)
    p = make_policy(tiny_policy_cfg(type=ptype, sampler=sampler, **kw), shape)
    p.normalizer.fit({"state": np.random.default_rng(0).normal(size=(50, 4)),
                      "action": np.random.default_rng(1).normal(size=(50, 2))})
    return p.eval()


@pytest.mark.parametrize("ptype,sampler", [("diffusion", "ddim"), ("flow", "euler")])
def test_reload_gives_identical_actions(tmp_path: Path, ptype: str, sampler: str) -> None:
    p = _policy(ptype, sampler)
    save_checkpoint(tmp_path / "ck", p, {"task": {"name": "toy/bimodal"}}, step=7)
    q = load_policy(tmp_path / "ck", use_ema=False)
    obs = {"state": torch.randn(3, 2, 4)}
    noise = torch.randn(3, 8, 2)
    assert torch.equal(p.predict_chunk(obs, noise=noise), q.predict_chunk(obs, noise=noise))
    names = sorted(x.name for x in (tmp_path / "ck").iterdir())
    assert names == ["config.json", "manifest.json", "model.safetensors"]
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    assert manifest["step"] == 7 and set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert "_target_" not in (tmp_path / "ck" / "config.json").read_text()


@pytest.mark.parametrize("encoder", ["resnet18", "conv"])
def test_camera_policy_reloads(tmp_path: Path, encoder: str) -> None:
    px = 64 if encoder == "resnet18" else 32  # ResNet-18 needs >= 64 px (see the next test)
    p = _policy("flow", "euler", cams=["front"], px=px, image_encoder=encoder)
    save_checkpoint(tmp_path / "ck", p, {}, step=1)
    q = load_policy(tmp_path / "ck", use_ema=False)
    assert q.cfg.image_encoder == encoder
    obs = {"state": torch.randn(2, 2, 4), "image.front": torch.randint(0, 255, (2, 2, 3, px, px), dtype=torch.uint8)}
    noise = torch.randn(2, 8, 2)
    assert torch.allclose(p.predict_chunk(obs, noise=noise), q.predict_chunk(obs, noise=noise))
    # the frame reaches the conditioning (the untrained net's zero-initialised output layer hides it from actions)
    other = dict(obs, **{"image.front": 255 - obs["image.front"]})
    with torch.no_grad():
        assert not torch.allclose(p.encode(obs), p.encode(other))


def test_resnet_on_too_small_images_is_refused() -> None:
    from genpolicy.errors import ConfigError

    with pytest.raises(ConfigError, match="32 px .* 1x1 feature map"):
        _policy("flow", "euler", cams=["front"], px=32, image_encoder="resnet18")


def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _policy()
    save_checkpoint(tmp_path / "ck", p, {}, step=1)
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()
    import genpolicy.training.checkpoint as ck

    def boom(*a, **k):
        raise OSError("power cut (injected)")

    monkeypatch.setattr(ck, "save_file", boom)
    with torch.no_grad():
        for prm in p.parameters():
            prm.add_(1.0)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(tmp_path / "ck", p, {}, step=2)
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ck"]  # no temp directories left behind
    load_policy(tmp_path / "ck")


def test_corrupt_and_incomplete_checkpoints_are_refused(tmp_path: Path) -> None:
    p = _policy()
    save_checkpoint(tmp_path / "ck", p, {}, step=1)
    f = tmp_path / "ck" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_policy(tmp_path / "ck")
    os.remove(tmp_path / "ck" / "manifest.json")
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_policy(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_policy(tmp_path / "nope")


def test_strict_load_rejects_mismatched_weights(tmp_path: Path) -> None:
    """A config that does not match the weights (e.g. edited width) is an error, not a silent partial load."""
    p = _policy()
    save_checkpoint(tmp_path / "ck", p, {}, step=1)
    cfg_path = tmp_path / "ck" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["policy"]["config"]["width"] = 32
    cfg_path.write_text(json.dumps(cfg))
    resign(tmp_path / "ck")  # so only the strict key/shape check can catch it
    with pytest.raises(CheckpointError, match="do not match"):
        load_policy(tmp_path / "ck")


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Train 8 steps straight vs 4 + resume 4: identical weights (per-step seeded batches and noise)."""
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.training.bc import train
    from safetensors.torch import load_file

    generate("toy/bimodal", 6, progress=False).save(tmp_path / "toy.zarr")

    def cfg(run: str, steps: int, resume: bool = False) -> TrainConfig:
        return TrainConfig(task=TaskConfig(name="toy/bimodal"), policy=tiny_policy_cfg(type="diffusion"),
                           data=DataConfig(path=str(tmp_path / "toy.zarr")),
                           train=OptimConfig(steps=steps, batch_size=16, warmup_steps=2),
                           eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                           run=RunConfig(dir=str(tmp_path / run), log_every=2, ckpt_every=4, resume=resume,
                                         progress=False))

    train(cfg("straight", 8))
    # interrupt the second run with a real SIGINT during step 3; it finishes that step, saves and stops
    import signal

    from genpolicy.training.ema import EMA

    real_update = EMA.update

    def interrupting_update(self, model, step):
        real_update(self, model, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    EMA.update = interrupting_update  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg("split", 8))
    finally:
        EMA.update = real_update  # type: ignore[method-assign]
    assert (tmp_path / "split" / "checkpoints" / "0000003" / "manifest.json").exists()
    train(cfg("split", 8, resume=True))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "0000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "0000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(cfg("fresh", 8, resume=True))


def test_no_pickle_in_package() -> None:
    root = Path(__file__).resolve().parents[1] / "genpolicy"
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert "pickle.load" not in text and "torch.load(" not in text, f


def test_ema_weights_are_what_load_policy_returns(tmp_path: Path) -> None:
    p = _policy()
    ema = _policy()
    with torch.no_grad():
        for prm in ema.parameters():
            prm.mul_(0.5)
    save_checkpoint(tmp_path / "ck", p, {}, step=1, ema=ema)
    got_ema = load_policy(tmp_path / "ck")
    got_raw = load_policy(tmp_path / "ck", use_ema=False)
    first = next(iter(dict(p.named_parameters())))
    assert torch.equal(dict(got_ema.named_parameters())[first], dict(ema.named_parameters())[first])
    assert torch.equal(dict(got_raw.named_parameters())[first], dict(p.named_parameters())[first])


def test_reusing_a_run_dir_and_damaged_latest(tmp_path: Path) -> None:
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.errors import ConfigError
    from genpolicy.training.bc import _latest_checkpoint, train

    generate("toy/bimodal", 4, progress=False).save(tmp_path / "toy.zarr")
    cfg = TrainConfig(task=TaskConfig(name="toy/bimodal"), policy=tiny_policy_cfg(type="flow", sampler="euler"),
                      data=DataConfig(path=str(tmp_path / "toy.zarr")), train=OptimConfig(steps=4, batch_size=8),
                      eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                      run=RunConfig(dir=str(tmp_path / "run"), ckpt_every=2, progress=False))
    train(cfg)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(cfg)  # a new run must not mix into (and prune) an old run's checkpoints
    run = tmp_path / "run"
    assert _latest_checkpoint(run).name == "0000004"
    (run / "checkpoints" / "0000004" / "model.safetensors").write_bytes(b"garbage")
    assert _latest_checkpoint(run).name == "0000002"  # damaged newest falls back to the previous one
    from dataclasses import replace

    with pytest.raises(ConfigError, match="changed: width"):
        train(replace(cfg, policy=tiny_policy_cfg(type="flow", sampler="euler", width=32),
                      run=replace(cfg.run, resume=True)))
