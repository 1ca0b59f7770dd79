"""Import robomimic HDF5 files (data/demo_N/obs/<key>, data/demo_N/actions) into a ReplayBuffer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import DataError


def import_robomimic(path: str | Path, state_keys: Optional[list[str]] = None, fps: float = 0.0) -> ReplayBuffer:
    """Read every demo in order. state = concatenation of `state_keys` (default: every low-dim obs key, sorted);
    obs keys ending in `_image` become `image.<name>` (uint8, channel-first)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if "data" not in f:
            raise DataError(f"{path}: missing group 'data' (not a robomimic file)")
        demos = sorted((k for k in f["data"].keys() if re.fullmatch(r"demo_\d+", k)), key=lambda k: int(k[5:]))
        if not demos:
            raise DataError(f"{path}: 'data' holds no demo_N groups")
        first = f["data"][demos[0]]
        if "obs" not in first:
            raise DataError(f"{path}: missing 'data/{demos[0]}/obs'")
        obs_keys = sorted(first["obs"].keys())
        image_keys = [k for k in obs_keys if k.endswith("_image")]
        if state_keys is None or len(state_keys) == 0:
            state_keys = [k for k in obs_keys if k not in image_keys]
        episodes = []
        for name in demos:
            g = f["data"][name]
            for key in ("actions", "obs"):
                if key not in g:
                    raise DataError(f"{path}: missing 'data/{name}/{key}'")
            ep: dict[str, np.ndarray] = {"action": np.asarray(g["actions"], dtype=np.float32)}
            parts = []
            for k in state_keys:
                if k not in g["obs"]:
                    raise DataError(f"{path}: missing 'data/{name}/obs/{k}'")
                v = np.asarray(g["obs"][k], dtype=np.float32)
                parts.append(v.reshape(len(v), -1))
            ep["state"] = np.concatenate(parts, axis=1)
            for k in image_keys:
                img = np.asarray(g["obs"][k])
                if img.ndim != 4 or img.shape[-1] != 3:
                    raise DataError(f"{path}: 'data/{name}/obs/{k}' must be (T, H, W, 3), got {img.shape}")
                ep[f"image.{k[: -len('_image')]}"] = np.ascontiguousarray(img.transpose(0, 3, 1, 2)).astype(np.uint8)
            if len(ep["action"]) == 0:
                raise DataError(f"{path}: 'data/{name}' is an empty episode")
            lengths = {k: len(v) for k, v in ep.items()}
            if len(set(lengths.values())) != 1:
                raise DataError(f"{path}: 'data/{name}' has arrays of different lengths {lengths}")
            episodes.append(ep)
        if not fps:
            fps = 20.0  # robosuite's default control frequency
            try:
                env_args = json.loads(f["data"].attrs.get("env_args", "{}"))
                fps = float(env_args.get("env_kwargs", {}).get("control_freq", fps))
            except (TypeError, ValueError):
                pass
    rb = ReplayBuffer.from_episodes(episodes, {"source": "robomimic", "source_file": str(path), "fps": fps,
                                               "state_keys": list(state_keys)}, source=str(path))
    return rb
