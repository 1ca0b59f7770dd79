"""Checkpoints: a directory with config.json, model.safetensors (weights + EMA + normaliser) and manifest.json.

Written into a temporary directory and renamed into place, so a crash never leaves half a checkpoint. Loading is
strict (missing or unexpected keys are errors), verifies sha256 of every file, and never unpickles anything.

A checkpoint directory may come from anyone, so reading it is defensive: the manifest may only name regular files
directly inside the directory (no paths, symlinks, FIFOs or devices), each read stops at the size the manifest
records, JSON files are size-capped, and every malformed part (JSON, safetensors, config values, optimizer state)
is a CheckpointError or ConfigError that names the file and the key.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import asdict
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import genpolicy
from genpolicy.errors import CheckpointError, ConfigError
from genpolicy.fsutil import replace_dir, temp_sibling
from genpolicy.policies import GenerativePolicy, ShapeMeta, make_policy
from genpolicy.policies.config import policy_config_from_dict

MODEL_FILE, CONFIG_FILE, MANIFEST_FILE = "model.safetensors", "config.json", "manifest.json"
TRAINER_FILE, TRAINER_META = "trainer.safetensors", "trainer.json"
MAX_JSON_BYTES = 64 * 2**20  # config.json, trainer.json, manifest.json (a fine-tuning curve stays far below)
MAX_FILE_BYTES = 64 * 2**30  # a manifest without sizes (older checkpoints): no file may be larger
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # no separators, no leading dot, so never '..'
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _open_regular(path: Path) -> tuple[int, int]:
    """Open `path` for reading only if it is a regular file (not a symlink, FIFO or device); returns (fd, size).

    O_NOFOLLOW refuses a symlink and O_NONBLOCK keeps a FIFO from blocking the open; fstat then checks the object
    that was opened, so it cannot be swapped between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        kind = "a symlink" if path.is_symlink() else e.strerror
        raise CheckpointError(f"{path}: cannot be opened as a regular file ({kind})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file")
    return fd, st.st_size


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    fd, size = _open_regular(path)
    try:
        if size > max_bytes:
            raise CheckpointError(f"{path}: {size} bytes, more than the {max_bytes} allowed")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    """A small JSON file, refused with the file's name when it is missing, not a regular file or not JSON."""
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(_read_bounded(path, MAX_JSON_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _sha256(path: Path, size: Optional[int] = None) -> str:
    """sha256 of a regular file, reading at most `size` bytes (the manifest's) and refusing a different size."""
    fd, actual = _open_regular(path)
    try:
        limit = MAX_FILE_BYTES if size is None else size
        if actual > limit or (size is not None and actual != size):
            raise CheckpointError(f"{path}: size mismatch ({actual} bytes, the manifest records "
                                  f"{size if size is not None else f'at most {limit}'}; file corrupted or changed)")
        h = hashlib.sha256()
        left = limit
        with os.fdopen(fd, "rb", closefd=False) as f:
            while left > 0:
                block = f.read(min(1 << 20, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
        return h.hexdigest()
    finally:
        os.close(fd)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file (already verified against the manifest), refused in one line when it is not one."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None


def _load_module(module: torch.nn.Module, sd: dict[str, torch.Tensor], source: Path, what: str) -> None:
    """load_state_dict(strict=True), but a mismatch names the tensor and both shapes (torch's message does not
    survive being cut to one line)."""
    if hasattr(module, "resize_for"):  # buffers that grow with use (finetune/pixels.FrameReplay) take the saved sizes
        module.resize_for(sd)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = [f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
                 f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}" if unexpected else ""]
        raise CheckpointError(f"{source}: {what} do not match the policy config: tensors "
                              f"{'; '.join(p for p in parts if p)}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {what} do not match the policy config: tensor '{k}' has shape "
                                  f"{tuple(sd[k].shape)} in the checkpoint, the config builds {tuple(v.shape)}")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: {what} do not match the policy config: "
                              f"{' '.join(str(e).split())[:300]}") from None


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
            "sizes": {name: (tmp / name).stat().st_size for name in files},  # reads of a loaded file stop here
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and verify manifest.json: every listed file is a regular file directly inside the checkpoint directory,
    of the recorded size, and matches its sha256."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    mpath = path / MANIFEST_FILE
    if not mpath.exists() and not mpath.is_symlink():
        raise CheckpointError(f"{mpath}: missing (incomplete checkpoint)")
    manifest = _read_json(mpath)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mpath}: must be a JSON object, got {type(manifest).__name__}")
    files, sizes = manifest.get("files"), manifest.get("sizes", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) and _SHA256.match(v) for v in files.values()):
        raise CheckpointError(f"{mpath}: 'files' must map file names to sha256 hex digests")
    if not isinstance(sizes, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_FILE_BYTES
                                              for v in sizes.values()):
        raise CheckpointError(f"{mpath}: 'sizes' must map file names to byte counts")
    for name, digest in files.items():
        if not _PLAIN_NAME.match(name) or name == MANIFEST_FILE:
            raise CheckpointError(f"{mpath}: 'files' entry {name!r} is not a file name inside the checkpoint")
        f = path / name
        if not f.exists() and not f.is_symlink():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if _sha256(f, sizes.get(name)) != digest:
            raise CheckpointError(f"{f}: sha256 mismatch (file corrupted or changed after saving)")
    for required in (CONFIG_FILE, MODEL_FILE):
        if required not in files:
            raise CheckpointError(f"{path}: manifest does not list {required}")
    step = manifest.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{mpath}: 'step' must be a non-negative integer, got {step!r}")
    return manifest


def _need(cond: bool, source: Path, msg: str) -> None:
    if not cond:
        raise CheckpointError(f"{source}: {msg}")


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json, with the structure every reader relies on checked: a `policy` object holding `config` and
    `shape` objects, and, when present, a `task` object whose `name` is a string."""
    src = Path(path) / CONFIG_FILE
    config = _read_json(src)
    _need(isinstance(config, dict), src, f"must be a JSON object, got {type(config).__name__}")
    policy = config.get("policy")
    _need(isinstance(policy, dict), src, "'policy' must be an object with 'config' and 'shape'")
    for key in ("config", "shape"):
        _need(isinstance(policy.get(key), dict), src, f"'policy.{key}' must be an object, got {policy.get(key)!r:.60}")
    task = config.get("task", {})
    _need(isinstance(task, dict), src, f"'task' must be an object like {{\"name\": \"suite/name\"}}, got {task!r:.60}")
    _need(isinstance(task.get("name", ""), str), src, f"'task.name' must be a string, got {task.get('name')!r:.60}")
    mes = task.get("max_episode_steps", 0)
    _need(isinstance(mes, int) and not isinstance(mes, bool) and mes >= 0, src,
          f"'task.max_episode_steps' must be a non-negative integer, got {mes!r:.60}")
    return config


def read_trainer_meta(path: str | Path) -> dict[str, Any]:
    """trainer.json of a checkpoint that can resume; refused with its name when missing or malformed."""
    src = Path(path) / TRAINER_META
    if not src.exists() and not src.is_symlink():
        raise CheckpointError(f"{src}: missing; this checkpoint cannot resume training")
    meta = _read_json(src)
    _need(isinstance(meta, dict), src, f"must be a JSON object, got {type(meta).__name__}")
    return meta


def _policy_from_config(path: Path, config: dict[str, Any]) -> GenerativePolicy:
    src = path / CONFIG_FILE
    pcfg = policy_config_from_dict(config["policy"]["config"], str(src))
    shape_d = config["policy"]["shape"]
    known = {"state_dim", "action_dim", "cameras", "image_size"}
    _need(not set(shape_d) - known, src, f"unknown policy.shape keys {sorted(set(shape_d) - known)}")
    _need({"state_dim", "action_dim"} <= set(shape_d), src,
          f"policy.shape misses {sorted({'state_dim', 'action_dim'} - set(shape_d))}")
    try:
        shape = ShapeMeta(**shape_d)
        return make_policy(pcfg, shape)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}") from None


def load_policy(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> GenerativePolicy:
    """Rebuild the policy from config.json and load weights strictly (EMA copy by default, when present)."""
    path = Path(path)
    read_manifest(path)
    policy = _policy_from_config(path, read_config(path))
    weights = _load_tensors(path / MODEL_FILE)
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in weights) else "model."
    sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    _load_module(policy, sd, path / MODEL_FILE, "weights")
    policy.eval()
    return policy.to(device)


def _check_optimizer_meta(meta: Any, optimizer: torch.optim.Optimizer, source: Path, key: str) -> None:
    """The optimizer part of trainer.json fits `optimizer`: as many param groups, each with as many parameters."""
    _need(isinstance(meta, dict), source, f"'{key}' must be an object")
    groups = meta.get("param_groups")
    _need(isinstance(groups, list) and len(groups) == len(optimizer.param_groups), source,
          f"'{key}.param_groups' must be a list of {len(optimizer.param_groups)} group(s), got "
          f"{len(groups) if isinstance(groups, list) else type(groups).__name__}")
    for i, (g, own) in enumerate(zip(groups, optimizer.param_groups)):
        _need(isinstance(g, dict) and isinstance(g.get("params"), list) and len(g["params"]) == len(own["params"]),
              source, f"'{key}.param_groups[{i}].params' must list {len(own['params'])} parameters")
    _need(isinstance(meta.get("scalars", {}), dict), source, f"'{key}.scalars' must be an object")


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    source: Path, key: str) -> None:
    _check_optimizer_meta(meta, optimizer, source, key)
    try:
        sd = _unflatten_optimizer(tensors, meta)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for idx, st in sd["state"].items():
            _need(0 <= idx < len(params), source, f"'{key}' has state for parameter {idx} of {len(params)}")
            for name, val in st.items():  # per-parameter moments must have the parameter's shape
                if torch.is_tensor(val) and val.dim() > 0 and tuple(val.shape) != tuple(params[idx].shape):
                    raise CheckpointError(f"{source}: optimizer state '{key}.{idx}.{name}' has shape "
                                          f"{tuple(val.shape)}, the parameter has {tuple(params[idx].shape)}")
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{source}: '{key}' cannot be restored ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None


def load_training_state(path: str | Path, policy: GenerativePolicy, ema: GenerativePolicy,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, EMA and optimizer in place for resuming; returns the trainer state dict (step etc.)."""
    path = Path(path)
    read_manifest(path)
    meta_path = path / TRAINER_META
    meta = read_trainer_meta(path)
    if "optimizer" not in meta or "step" not in meta:
        raise CheckpointError(f"{meta_path}: missing 'optimizer' or 'step'; this checkpoint cannot resume training")
    step = meta["step"]
    _need(isinstance(step, int) and not isinstance(step, bool) and step >= 0, meta_path,
          f"'step' must be a non-negative integer, got {step!r:.60}")
    best = meta.get("best")
    if best is not None:
        _need(isinstance(best, dict) and isinstance(best.get("step"), int) and not isinstance(best.get("step"), bool)
              and isinstance(best.get("success_rate"), (int, float)) and not isinstance(best.get("success_rate"), bool),
              meta_path, f"'best' must be {{\"success_rate\": number, \"step\": integer}}, got {best!r:.80}")
        _need(-1 <= best["step"] <= step, meta_path, f"'best.step' must be in [-1, {step}], got {best['step']}")
    weights = _load_tensors(path / MODEL_FILE)
    _load_module(policy, {k[6:]: v for k, v in weights.items() if k.startswith("model.")}, path / MODEL_FILE,
                 "weights ('model.')")
    _load_module(ema, {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}, path / MODEL_FILE,
                 "EMA weights ('ema.')")
    tensors = _load_tensors(path / TRAINER_FILE) if (path / TRAINER_FILE).exists() else {}
    _load_optimizer(optimizer, tensors, meta.pop("optimizer"), meta_path, "optimizer")
    return meta


def load_finetune_state(path: str | Path, policy: GenerativePolicy, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore a fine-tuning checkpoint in place (policy, named modules and optimisers); returns the trainer state."""
    path = Path(path)
    read_manifest(path)
    meta_path = path / TRAINER_META
    if not meta_path.exists() or not (path / TRAINER_FILE).exists():
        raise CheckpointError(f"{path}: no trainer state; this checkpoint cannot resume fine-tuning")
    meta = read_trainer_meta(path)
    for key in ("iteration", "env_steps", "env_next_seed", "updates"):  # counters the loops resume from
        if key in meta:
            v = meta[key]
            _need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, meta_path,
                  f"'{key}' must be a non-negative integer, got {v!r:.60}")
    optim_meta = meta.get("optimizers")
    _need(isinstance(optim_meta, dict), meta_path, "'optimizers' must be an object")
    weights = _load_tensors(path / MODEL_FILE)
    tensors = _load_tensors(path / TRAINER_FILE)
    _load_module(policy, {k[6:]: v for k, v in weights.items() if k.startswith("model.")}, path / MODEL_FILE,
                 "weights ('model.')")
    for name, mod in modules.items():
        pre = f"mod.{name}."
        _load_module(mod, {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, path / TRAINER_FILE,
                     f"module '{name}'")
    for name, opt in optimizers.items():
        pre = f"optim.{name}."
        _need(name in optim_meta, meta_path, f"'optimizers' has no entry '{name}'")
        _load_optimizer(opt, {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, optim_meta[name],
                        meta_path, f"optimizers.{name}")
    meta.pop("optimizers", None)
    return meta
