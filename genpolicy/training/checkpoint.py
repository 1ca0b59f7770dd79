"""Checkpoints: a directory with config.json, model.safetensors (weights + EMA + normaliser) and manifest.json.

Written into a temporary directory and renamed into place, so a crash never leaves half a checkpoint. Loading is
strict (missing or unexpected keys are errors), verifies sha256 of every file, and never unpickles anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

import genpolicy
from genpolicy.config import policy_config_from_dict
from genpolicy.errors import CheckpointError
from genpolicy.fsutil import replace_dir, temp_sibling
from genpolicy.policies import GenerativePolicy, ShapeMeta, make_policy

MODEL_FILE, CONFIG_FILE, MANIFEST_FILE = "model.safetensors", "config.json", "manifest.json"
TRAINER_FILE, TRAINER_META = "trainer.safetensors", "trainer.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensors(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{name}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    for key, val in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, policy: GenerativePolicy, config: dict[str, Any], step: int,
                    ema: Optional[GenerativePolicy] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                    trainer_state: Optional[dict[str, Any]] = None,
                    modules: Optional[dict[str, torch.nn.Module]] = None,
                    optimizers: Optional[dict[str, torch.optim.Optimizer]] = None) -> Path:
    """Atomically write a checkpoint directory at `path` (an existing one is replaced only after success)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        full = {"policy": {"config": asdict(policy.cfg), "shape": policy.shape.to_dict()}, **config}
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2, default=str))
        weights = _tensors("model.", policy.state_dict())
        if ema is not None:
            weights.update(_tensors("ema.", ema.state_dict()))
        save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "genpolicy", "step": str(step)})
        if optimizer is not None:
            opt_t, opt_meta = _flatten_optimizer(optimizer)
            save_file(opt_t, str(tmp / TRAINER_FILE)) if opt_t else None
            (tmp / TRAINER_META).write_text(json.dumps({"optimizer": opt_meta, **(trainer_state or {})}, default=str))
        elif modules is not None or optimizers is not None:  # fine-tuning: critics, noise nets, several optimisers
            tensors: dict[str, torch.Tensor] = {}
            metas = {}
            for name, mod in (modules or {}).items():
                tensors.update(_tensors(f"mod.{name}.", mod.state_dict()))
            for name, opt in (optimizers or {}).items():
                opt_t, metas[name] = _flatten_optimizer(opt)
                tensors.update({f"optim.{name}.{k}": v for k, v in opt_t.items()})
            save_file(tensors, str(tmp / TRAINER_FILE))
            (tmp / TRAINER_META).write_text(json.dumps({"optimizers": metas, **(trainer_state or {})}, default=str))
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "genpolicy_version": genpolicy.__version__, "torch_version": torch.__version__, "step": step,
            "files": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and verify manifest.json: every listed file exists and matches its sha256."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    mpath = path / MANIFEST_FILE
    if not mpath.exists():
        raise CheckpointError(f"{mpath}: missing (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: not valid JSON ({e})") from None
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: sha256 mismatch (file corrupted or changed after saving)")
    for required in (CONFIG_FILE, MODEL_FILE):
        if required not in manifest.get("files", {}):
            raise CheckpointError(f"{path}: manifest does not list {required}")
    return manifest


def read_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def load_policy(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> GenerativePolicy:
    """Rebuild the policy from config.json and load weights strictly (EMA copy by default, when present)."""
    path = Path(path)
    read_manifest(path)
    config = read_config(path)
    try:
        pcfg = policy_config_from_dict(config["policy"]["config"], str(path / CONFIG_FILE))
        shape = ShapeMeta(**config["policy"]["shape"])
    except KeyError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: missing key {e}") from None
    policy = make_policy(pcfg, shape)
    weights = load_file(str(path / MODEL_FILE))
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in weights) else "model."
    sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        policy.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path / MODEL_FILE}: weights do not match the policy config: {str(e).splitlines()[0]}") from None
    policy.eval()
    return policy.to(device)


def load_training_state(path: str | Path, policy: GenerativePolicy, ema: GenerativePolicy,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, EMA and optimizer in place for resuming; returns the trainer state dict (step etc.)."""
    path = Path(path)
    read_manifest(path)
    weights = load_file(str(path / MODEL_FILE))
    try:
        policy.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")}, strict=True)
        ema.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("ema.")}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path / MODEL_FILE}: cannot resume from these weights: {str(e).splitlines()[0]}") from None
    meta_path = path / TRAINER_META
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path}: missing; this checkpoint cannot resume training")
    meta = json.loads(meta_path.read_text())
    if "optimizer" not in meta or "step" not in meta:
        raise CheckpointError(f"{meta_path}: missing 'optimizer' or 'step'; this checkpoint cannot resume training")
    tensors = load_file(str(path / TRAINER_FILE)) if (path / TRAINER_FILE).exists() else {}
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta.pop("optimizer")))
    return meta


def load_finetune_state(path: str | Path, policy: GenerativePolicy, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore a fine-tuning checkpoint in place (policy, named modules and optimisers); returns the trainer state."""
    path = Path(path)
    read_manifest(path)
    weights = load_file(str(path / MODEL_FILE))
    meta_path = path / TRAINER_META
    if not meta_path.exists() or not (path / TRAINER_FILE).exists():
        raise CheckpointError(f"{path}: no trainer state; this checkpoint cannot resume fine-tuning")
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(path / TRAINER_FILE))
    try:
        policy.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")}, strict=True)
        for name, mod in modules.items():
            pre = f"mod.{name}."
            mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, strict=True)
        for name, opt in optimizers.items():
            pre = f"optim.{name}."
            opt.load_state_dict(_unflatten_optimizer({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)},
                                                     meta["optimizers"][name]))
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot resume fine-tuning from it: {str(e).splitlines()[0]}") from None
    meta.pop("optimizers", None)
    return meta
