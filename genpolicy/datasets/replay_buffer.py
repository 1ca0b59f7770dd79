"""Episodes on disk: a zarr group with data/<key> concatenated over time and meta/episode_ends.

Keys: `action` (N, Da) float32, `state` (N, Ds) float32, optional `image.<cam>` (N, 3, H, W) uint8.
Attributes: fps, task, and whatever produced the data (expert success rate, source file).
Writes go to a temporary sibling and are renamed into place, so an existing store is never half-overwritten.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genpolicy.errors import DataError
from genpolicy.fsutil import replace_dir, temp_sibling


class EpisodeLayout:
    """Counts derived from cumulative `episode_ends` (shared by ReplayBuffer and the lazy datasets)."""

    episode_ends: np.ndarray

    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends]))


@dataclass
class ReplayBuffer(EpisodeLayout):
    """In-memory episodes: arrays concatenated over time plus cumulative episode ends."""

    data: dict[str, np.ndarray]
    episode_ends: np.ndarray  # (E,) int64, cumulative
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def image_keys(self) -> list[str]:
        return sorted(k for k in self.data if k.startswith("image."))

    def read(self, key: str, rows: np.ndarray) -> np.ndarray:
        return self.data[key][rows]

    def image_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.data[key].shape[1:])

    def episode(self, i: int) -> dict[str, np.ndarray]:
        start = 0 if i == 0 else int(self.episode_ends[i - 1])
        end = int(self.episode_ends[i])
        return {k: v[start:end] for k, v in self.data.items()}

    @classmethod
    def from_episodes(cls, episodes: list[dict[str, np.ndarray]], attrs: dict[str, Any] | None = None,
                      source: str = "<memory>") -> "ReplayBuffer":
        """Concatenate a list of per-episode dicts (each key (L, ...))."""
        if not episodes:
            raise DataError(f"{source}: no episodes to store")
        keys = sorted(episodes[0])
        data = {k: np.concatenate([ep[k] for ep in episodes], axis=0) for k in keys}
        ends = np.cumsum([len(ep["action"]) for ep in episodes]).astype(np.int64)
        rb = cls(data=data, episode_ends=ends, attrs=dict(attrs or {}), source=source)
        rb.validate()
        return rb

    def validate(self) -> None:
        """Raise DataError (naming the source and key) unless this is a usable demonstration set."""
        src = self.source
        for key in ("action", "state"):
            if key not in self.data:
                raise DataError(f"{src}: missing key 'data/{key}' (found {sorted(self.data)})")
        ends = np.asarray(self.episode_ends)
        if ends.ndim != 1 or len(ends) == 0:
            raise DataError(f"{src}: 'meta/episode_ends' is empty; the store holds no episodes")
        lengths = np.diff(np.concatenate([[0], ends]))
        if (lengths <= 0).any():
            bad = int(np.argmax(lengths <= 0))
            raise DataError(f"{src}: episode {bad} is empty (meta/episode_ends must be strictly increasing)")
        n = int(ends[-1])
        for key, arr in self.data.items():
            if arr.shape[0] != n:
                raise DataError(f"{src}: 'data/{key}' has {arr.shape[0]} steps but meta/episode_ends says {n} "
                                f"(truncated or inconsistent store)")
        for key in ("action", "state"):
            if not np.issubdtype(self.data[key].dtype, np.floating):
                raise DataError(f"{src}: 'data/{key}' must hold floats, got dtype {self.data[key].dtype}")
            if self.data[key].dtype != np.float32:  # float64 stores are common; the policy computes in float32
                self.data[key] = self.data[key].astype(np.float32)
        act = self.data["action"]
        if act.ndim != 2:
            raise DataError(f"{src}: 'data/action' must be (N, Da), got shape {act.shape}")
        if self.data["state"].ndim != 2:
            raise DataError(f"{src}: 'data/state' must be (N, Ds), got shape {self.data['state'].shape}")
        if not np.isfinite(act).all():
            idx = int(np.argwhere(~np.isfinite(act))[0, 0])
            raise DataError(f"{src}: 'data/action' contains NaN or inf (first at step {idx})")
        if not np.isfinite(self.data["state"]).all():
            idx = int(np.argwhere(~np.isfinite(self.data["state"]))[0, 0])
            raise DataError(f"{src}: 'data/state' contains NaN or inf (first at step {idx})")
        for key in self.image_keys:
            img = self.data[key]
            if img.ndim != 4 or img.shape[1] != 3 or img.dtype != np.uint8:
                raise DataError(f"{src}: '{key}' must be uint8 (N, 3, H, W), got {img.dtype} {img.shape}")

    # --- disk ---------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically to a zarr directory store at `path` (replacing any existing store only on success)."""
        import zarr

        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path)
        try:
            root = zarr.open_group(str(tmp), mode="w")
            data = root.create_group("data")
            for key, arr in self.data.items():
                # frames are read per batch at random rows (datasets/lazy.py ZarrFrames): small image chunks keep a
                # random read cheap; numeric columns are read whole and get large chunks
                chunks = (chunk_rows(key, arr[0].nbytes, len(arr)),) + arr.shape[1:]
                data.array(key, arr, chunks=chunks)
            root.create_group("meta").array("episode_ends", np.asarray(self.episode_ends, dtype=np.int64))
            root.attrs.update(json.loads(json.dumps(self.attrs, default=float)))
            replace_dir(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.source = str(path)
        return path

    @classmethod
    def load(cls, path: str | Path, keys: list[str] | None = None) -> "ReplayBuffer":
        """Read a zarr store fully into memory and validate it."""
        import zarr

        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such dataset")
        try:
            root = zarr.open_group(str(path), mode="r")
        except Exception as e:  # zarr raises several types for a non-store
            raise DataError(f"{path}: not a zarr store ({type(e).__name__}: {e})") from None
        if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
            raise DataError(f"{path}: missing 'data' group or 'meta/episode_ends' (not a genpolicy replay buffer)")
        group = root["data"]
        names = keys if keys is not None else sorted(group.array_keys())
        data = {}
        for key in names:
            if key not in group:
                raise DataError(f"{path}: missing key 'data/{key}' (found {sorted(group.array_keys())})")
            try:
                data[key] = group[key][:]
            except Exception as e:
                raise DataError(f"{path}: cannot read 'data/{key}' (truncated store?): {type(e).__name__}: {e}") from None
        try:
            ends = root["meta"]["episode_ends"][:].astype(np.int64)
        except Exception as e:
            raise DataError(f"{path}: cannot read 'meta/episode_ends': {type(e).__name__}: {e}") from None
        rb = cls(data=data, episode_ends=ends, attrs=dict(root.attrs), source=str(path))
        rb.validate()
        return rb


def chunk_rows(key: str, row_bytes: int, n: int | None = None) -> int:
    """Rows per zarr chunk: small for frames (read at random rows per batch), large for numeric columns."""
    target = 2**19 if key.startswith("image.") else 2e6
    rows = max(1, int(target // max(row_bytes, 1)))
    return rows if n is None else max(1, min(n, rows))


class ZarrEpisodeWriter:
    """Append episodes to a new zarr store chunk by chunk, never holding more than one episode in memory.

    The store is written beside `path` and renamed into place by `close`, so `path` only ever holds a complete
    store. Layout as `ReplayBuffer.save` (data/<key>, meta/episode_ends, attrs)."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_sibling(self.path)
        self.root = zarr.open_group(str(self.tmp), mode="w")
        self.data = self.root.create_group("data")
        self.ends: list[int] = []

    def append(self, episode: dict[str, np.ndarray]) -> None:
        n = len(episode["action"])
        if n == 0:
            raise DataError(f"{self.path}: cannot store an empty episode")
        if self.ends and set(episode) != set(self.data.array_keys()):
            raise DataError(f"{self.path}: episode keys {sorted(episode)} differ from the store's "
                            f"{sorted(self.data.array_keys())}")
        for key, arr in episode.items():
            arr = np.asarray(arr)
            if key in ("action", "state") and arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            if len(arr) != n:
                raise DataError(f"{self.path}: '{key}' has {len(arr)} steps but 'action' has {n}")
            if key not in self.data:
                self.data.create(key, shape=(0, *arr.shape[1:]), dtype=arr.dtype,
                                 chunks=(chunk_rows(key, arr[0].nbytes), *arr.shape[1:]))
            self.data[key].append(arr)
        self.ends.append((self.ends[-1] if self.ends else 0) + n)

    def close(self, attrs: dict[str, Any]) -> Path:
        if not self.ends:
            self.abort()
            raise DataError(f"{self.path}: no episodes to store")
        self.root.create_group("meta").array("episode_ends", np.asarray(self.ends, dtype=np.int64))
        self.root.attrs.update(json.loads(json.dumps(attrs, default=float)))
        replace_dir(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
