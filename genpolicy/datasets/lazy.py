"""Datasets read where they lie: LeRobot v3 directories and zarr stores, images fetched per batch.

`open_demos(path)` returns a `LazyDemos`: the cheap numeric columns (`state`, `action`) are read into memory once;
camera frames stay on disk behind one `FrameSource` per camera and are fetched only for the rows a batch needs:

* `VideoFrames`: mp4 files of a LeRobot v3 dataset, decoded at the frames' timestamps (PyAV), in whichever process
  asks (DataLoader workers in training). Each process keeps a small LRU of open decoders; reads are grouped by file
  and sorted by time, so a window of To frames costs one seek (to the keyframe before it) and a short forward decode.
  A frame is accepted only within `tolerance_s` of its timestamp; otherwise the error names the file and episode.
* `ZarrFrames`: a zarr array read chunk by chunk, with a small per-process LRU of decompressed chunks.
* `PngFrames`: LeRobot "image" features (PNG bytes in parquet); the compressed bytes stay in memory.

Memory is O(rows x (Ds + Da)) for the columns plus a bounded cache per process, never O(frames x pixels).

`StepBatches` is the torch Dataset the BC loop iterates: item `s` is step s's whole batch, drawn from (seed, s)
exactly as `bc.step_batch` draws it, so the batches (and a resumed run) do not depend on the number of workers.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np

from genpolicy.datasets.replay_buffer import EpisodeLayout
from genpolicy.errors import DataError

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = "action"
IMAGES_PREFIX = "observation.images."
SINGLE_IMAGE_KEY = "observation.image"
LEROBOT_TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s


# ----------------------------------------------------------------------------------------------------------------
# frame sources
# ----------------------------------------------------------------------------------------------------------------
class FrameSource(Protocol):
    shape: tuple[int, int, int]  # (3, H, W)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), 3, H, W) for global row indices `rows` (any order, repeats allowed)."""


class ArrayFrames:
    """Frames already in memory (a ReplayBuffer's arrays)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = tuple(arr.shape[1:])

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.arr[rows]


class _LRU:
    """A per-process LRU: after a fork the child starts empty (decoders and file handles are not fork-safe)."""

    def __init__(self, capacity: int, close: Callable[[Any], None] | None = None) -> None:
        self.capacity, self.close = capacity, close
        self.pid = os.getpid()
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if self.pid != os.getpid():  # inherited through fork: never touch the parent's objects
            self.items = OrderedDict()
            self.pid = os.getpid()
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        while len(self.items) > self.capacity:
            _, old = self.items.popitem(last=False)
            if self.close is not None:
                self.close(old)
        return value

    def drop(self, key: Any) -> None:
        old = self.items.pop(key, None)
        if old is not None and self.close is not None:
            self.close(old)

    def clear(self) -> None:
        for key in list(self.items):
            self.drop(key)


class ZarrFrames:
    """uint8 (N, 3, H, W) zarr array, read chunk by chunk; at most `cache_mb` of decompressed chunks per process."""

    def __init__(self, arr: Any, source: str, key: str, cache_mb: float = 64.0) -> None:
        self.arr, self.source, self.key = arr, source, key
        self.shape = tuple(arr.shape[1:])
        self.chunk = int(arr.chunks[0])
        chunk_bytes = self.chunk * int(np.prod(self.shape))
        self.cache = _LRU(max(2, int(cache_mb * 2**20 // max(chunk_bytes, 1))))

    def _chunk(self, c: int) -> np.ndarray:
        def load() -> np.ndarray:
            try:
                return self.arr[c * self.chunk:(c + 1) * self.chunk]
            except Exception as e:  # zarr raises several types for a damaged chunk
                raise DataError(f"{self.source}: cannot read chunk {c} of 'data/{self.key}' "
                                f"({type(e).__name__}: {e})") from None
        return self.cache.get(c, load)

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        chunk_of = rows // self.chunk
        for c in np.unique(chunk_of):
            sel = np.nonzero(chunk_of == c)[0]
            out[sel] = self._chunk(int(c))[rows[sel] - c * self.chunk]
        return out


class PngFrames:
    """LeRobot "image" features: PNG bytes from the data parquet, decoded per row."""

    def __init__(self, blobs: list, shape: tuple[int, int, int], source: str, key: str) -> None:
        self.blobs, self.shape, self.source, self.key = blobs, shape, source, key

    def read(self, rows: np.ndarray) -> np.ndarray:
        import io

        from PIL import Image

        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for j, r in enumerate(np.asarray(rows).tolist()):
            with Image.open(io.BytesIO(self.blobs[r])) as im:
                out[j] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        return out


class _Decoder:
    """One open mp4: a PyAV container positioned somewhere in its stream, reused for forward reads."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"  # one thread per worker: workers are the parallelism
        self.time_base = float(self.stream.time_base)
        self.frames = None  # the live decode iterator after the last seek
        self.last: Any = None  # (t, frame) most recently decoded
        self.done = False  # reached the end of the stream

    def seek(self, t: float) -> None:
        # to the keyframe at or before t; frames then come forward from there
        self.container.seek(max(int(t / self.time_base), 0), stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.last, self.done = None, False

    def next(self) -> Any:
        """(t, frame) of the next frame, or None at the end of the stream."""
        try:
            frame = next(self.frames)  # type: ignore[arg-type]
        except StopIteration:
            self.done = True
            return None
        t = frame.time if frame.time is not None else float(frame.pts) * self.time_base
        self.last = (t, frame)
        return self.last

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - a broken file may fail again on close; nothing to keep
            pass


_DECODERS = _LRU(int(os.environ.get("GENPOLICY_VIDEO_DECODERS", "8")), close=lambda d: d.close())


class VideoFrames:
    """One camera of a LeRobot v3 dataset: row -> (mp4 file, time in it, episode), decoded on demand.

    Row r of episode e is the frame at `from_timestamp[e] + timestamp[r]` in that episode's file, the query
    LeRobotDataset makes. Forward decoding continues from the decoder's position when the next wanted frame is
    less than `seek_gap_s` ahead (cheaper than a seek); otherwise it seeks to the keyframe before it."""

    def __init__(self, root: Path, key: str, paths: list[Path], file_of_row: np.ndarray, t_of_row: np.ndarray,
                 episode_of_row: np.ndarray, shape: tuple[int, int, int], fps: float,
                 tolerance_s: float = LEROBOT_TOLERANCE_S, seek_gap_s: float = 0.5, backend: str = "pyav") -> None:
        if backend not in VIDEO_BACKENDS:
            raise DataError(f"unknown video backend {backend!r} (use one of {VIDEO_BACKENDS})")
        self.backend = backend
        self.root, self.key, self.paths = root, key, paths
        self.file_of_row, self.t_of_row, self.episode_of_row = file_of_row, t_of_row, episode_of_row
        self.shape, self.fps, self.tol, self.seek_gap = shape, fps, tolerance_s, seek_gap_s
        self._row = 0  # the row being decoded, for error messages

    def _where(self, path: Path, row: int) -> str:
        return f"{path} (video {self.key!r}, episode {int(self.episode_of_row[row])})"

    def _decoder(self, f: int, row: int) -> _Decoder:
        path = self.paths[f]

        def make() -> _Decoder:
            if not path.is_file():
                raise DataError(f"{self._where(path, row)}: video file is missing")
            try:
                return _Decoder(path)
            except Exception as e:  # av.error.* (truncated, not a video)
                raise DataError(f"{self._where(path, row)}: cannot open video ({type(e).__name__}: {e})") from None
        return _DECODERS.get(str(path), make)

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        files = self.file_of_row[rows]
        for f in np.unique(files):
            sel = np.nonzero(files == f)[0]
            ts = self.t_of_row[rows[sel]]
            order = np.argsort(ts, kind="stable")
            try:
                self._read_file(int(f), rows[sel][order], ts[order], sel[order], out)
            except DataError:
                _DECODERS.drop(str(self.paths[int(f)]))
                raise
            except Exception as e:  # av.error.InvalidDataError etc. from a damaged file
                _DECODERS.drop(str(self.paths[int(f)]))
                r = self._row  # the row being decoded when it failed
                raise DataError(f"{self._where(self.paths[int(f)], r)}: cannot decode video "
                                f"({type(e).__name__}: {e}); the file may be truncated") from None
        return out

    def _read_file(self, f: int, rows: np.ndarray, ts: np.ndarray, dst: np.ndarray, out: np.ndarray) -> None:
        if self.backend == "torchcodec":
            return self._read_file_torchcodec(f, rows, ts, dst, out)
        dec = self._decoder(f, int(rows[0]))
        prev_t, prev_img = None, None  # the last frame converted, for repeated timestamps
        for row, t, j in zip(rows.tolist(), ts.tolist(), dst.tolist()):
            self._row = row
            if prev_t is not None and abs(prev_t - t) <= self.tol:
                out[j] = prev_img
                continue
            last_t = dec.last[0] if dec.last is not None else None
            if dec.frames is None or last_t is None or t < last_t - self.tol or t - last_t > self.seek_gap:
                dec.seek(t)
            hit = dec.last if dec.last is not None and abs(dec.last[0] - t) <= self.tol else None
            while hit is None:
                nxt = dec.next()
                if nxt is None:
                    seen = "no frame at or after it" if last_t is None else f"last frame at {last_t:.4f}s"
                    raise DataError(f"{self._where(dec.path, row)}: timestamp {t:.4f}s is beyond the end of the video "
                                    f"({seen}); the file may be truncated")
                if abs(nxt[0] - t) <= self.tol:
                    hit = nxt
                elif nxt[0] > t + self.tol:
                    raise DataError(f"{self._where(dec.path, row)}: no frame within {self.tol:g}s of timestamp {t:.4f}s "
                                    f"(nearest decoded {nxt[0]:.4f}s); frames are missing or the fps is wrong")
                last_t = nxt[0]
            img = hit[1].to_ndarray(format="rgb24")
            if img.shape != (self.shape[1], self.shape[2], 3):
                raise DataError(f"{self._where(dec.path, row)}: frame is {img.shape[1]}x{img.shape[0]} but info.json "
                                f"declares {self.shape[2]}x{self.shape[1]}")
            prev_t, prev_img = t, img.transpose(2, 0, 1)
            out[j] = prev_img


    def _read_file_torchcodec(self, f: int, rows: np.ndarray, ts: np.ndarray, dst: np.ndarray,
                              out: np.ndarray) -> None:
        """torchcodec: the frames at round(t * fps) (LeRobot's query), checked against the tolerance."""
        path = self.paths[f]

        def make() -> Any:
            from torchcodec.decoders import VideoDecoder

            if not path.is_file():
                raise DataError(f"{self._where(path, int(rows[0]))}: video file is missing")
            return VideoDecoder(str(path), seek_mode="approximate", num_ffmpeg_threads=1, dimension_order="NCHW")

        dec = _DECODERS.get(("torchcodec", str(path)), make)
        fps = float(dec.metadata.average_fps or self.fps)
        idx = np.rint(ts * fps).astype(np.int64)
        n = dec.metadata.num_frames
        if n is not None and idx.max() >= n:
            row = int(rows[int(np.argmax(idx))])
            self._row = row
            raise DataError(f"{self._where(path, row)}: timestamp {ts.max():.4f}s is beyond the end of the video "
                            f"({n} frames); the file may be truncated")
        batch = dec.get_frames_at(indices=idx.tolist())
        pts = batch.pts_seconds.numpy()
        bad = np.abs(pts - ts) > self.tol
        if bad.any():
            k = int(np.argmax(bad))
            self._row = int(rows[k])
            raise DataError(f"{self._where(path, int(rows[k]))}: no frame within {self.tol:g}s of timestamp "
                            f"{ts[k]:.4f}s (nearest decoded {pts[k]:.4f}s); frames are missing or the fps is wrong")
        out[dst] = batch.data.numpy()


VIDEO_BACKENDS = ("pyav", "torchcodec")


# ----------------------------------------------------------------------------------------------------------------
# the dataset object training uses
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class LazyDemos(EpisodeLayout):
    """Episodes with numeric columns in memory and camera frames behind `frames` (same surface as ReplayBuffer)."""

    data: dict[str, np.ndarray]  # state (N, Ds), action (N, Da) float32
    episode_ends: np.ndarray
    frames: dict[str, FrameSource]  # image.<cam> -> source
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    key_map: dict[str, Any] = field(default_factory=dict)  # genpolicy key -> source key(s)

    @property
    def image_keys(self) -> list[str]:
        return sorted(self.frames)

    def read(self, key: str, rows: np.ndarray) -> np.ndarray:
        if key in self.frames:
            return self.frames[key].read(rows)
        return self.data[key][rows]

    def image_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.frames[key].shape)

    def drop_images(self) -> "LazyDemos":
        return LazyDemos(self.data, self.episode_ends, {}, self.attrs, self.source, self.key_map)


# ----------------------------------------------------------------------------------------------------------------
# opening datasets
# ----------------------------------------------------------------------------------------------------------------
def resolve_path(path: str | Path) -> Path:
    """A path on disk, or a LeRobot repo_id ("owner/name") found in the local cache; never downloads."""
    p = Path(path)
    if p.exists():
        return p
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(path)):
        home = Path(os.environ.get("HF_LEROBOT_HOME",
                                   Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "lerobot"))
        cand = [home.expanduser() / str(path)]
        hub = Path(os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
                                  / "hub")).expanduser()
        snaps = hub / f"datasets--{str(path).replace('/', '--')}" / "snapshots"
        if snaps.is_dir():
            cand += sorted(snaps.iterdir(), key=lambda q: q.stat().st_mtime, reverse=True)
        for c in cand:
            if (c / "meta" / "info.json").is_file():
                return c
        raise DataError(f"{path}: no such path, and no LeRobot dataset with that repo_id in the local cache "
                        f"({cand[0]} or {snaps}); nothing is downloaded")
    raise DataError(f"{path}: no such dataset")


def is_lerobot(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def open_demos(path: str | Path, *, images: bool = True, state_dim: int | None = None, action_dim: int | None = None,
               state_keys: Optional[list[str]] = None, tolerance_s: float = LEROBOT_TOLERANCE_S,
               task: str = "", video_backend: str = "pyav") -> LazyDemos:
    """Open a LeRobot v3 directory (or cached repo_id) or a zarr store without reading frames.

    `state_dim`/`action_dim` (the task's spec) choose and check the state mapping; a mismatch is refused with the
    key names. `images=False` opens no frame source."""
    p = resolve_path(path)
    if is_lerobot(p):
        return open_lerobot(p, images=images, state_dim=state_dim, action_dim=action_dim, state_keys=state_keys,
                            tolerance_s=tolerance_s, task=task, video_backend=video_backend)
    return open_zarr(p, images=images, state_dim=state_dim, action_dim=action_dim, task=task)


def open_zarr(path: Path, *, images: bool = True, state_dim: int | None = None, action_dim: int | None = None,
              task: str = "") -> LazyDemos:
    import zarr

    from genpolicy.datasets.replay_buffer import ReplayBuffer

    rb = ReplayBuffer.load(path, keys=["action", "state"])  # validates the numeric part
    frames: dict[str, FrameSource] = {}
    if images:
        group = zarr.open_group(str(path), mode="r")["data"]
        for key in sorted(k for k in group.array_keys() if k.startswith("image.")):
            arr = group[key]
            if arr.ndim != 4 or arr.shape[1] != 3 or arr.dtype != np.uint8:
                raise DataError(f"{path}: '{key}' must be uint8 (N, 3, H, W), got {arr.dtype} {arr.shape}")
            if arr.shape[0] != rb.n_steps:
                raise DataError(f"{path}: 'data/{key}' has {arr.shape[0]} steps but meta/episode_ends says "
                                f"{rb.n_steps} (truncated or inconsistent store)")
            frames[key] = ZarrFrames(arr, str(path), key)
    demos = LazyDemos(rb.data, rb.episode_ends, frames, rb.attrs, str(path),
                      {"state": ["data/state"], "action": "data/action", **{k: f"data/{k}" for k in frames}})
    _check_dims(demos, state_dim, action_dim, task, {"state": ["data/state"]})
    return demos


def _check_dims(demos: LazyDemos, state_dim: int | None, action_dim: int | None, task: str,
                state_parts: dict[str, list[str]], part_dims: dict[str, int] | None = None) -> None:
    """Refuse a dataset whose action or state does not fit the task, naming the source keys."""
    what = f"task '{task}'" if task else "the task"
    a = demos.data["action"].shape[1]
    if action_dim is not None and a != action_dim:
        raise DataError(f"{demos.source}: '{demos.key_map.get('action')}' has dimension {a} but {what} "
                        f"expects {action_dim}")
    s = demos.data["state"].shape[1]
    if state_dim is not None and s != state_dim:
        keys = state_parts["state"]
        name = f"'{keys[0]}'" if len(keys) == 1 else f"state from {keys}"
        avail = ", ".join(f"{k}: {d}" for k, d in (part_dims or {}).items() if k != ACTION_KEY)
        raise DataError(f"{demos.source}: {name} has dimension {s} but {what} expects {state_dim}"
                        + (f" (numeric features: {avail}; choose with data.state_keys=[...])" if avail else ""))


def _lerobot_cam(key: str) -> str:
    return key[len(IMAGES_PREFIX):] if key.startswith(IMAGES_PREFIX) else key.rsplit(".", 1)[-1]


def lerobot_mapping(features: dict, state_dim: int | None = None,
                    state_keys: Optional[list[str]] = None) -> dict[str, Any]:
    """Which LeRobot keys become the policy's state, action and image.<cam>.

    Default state: observation.state, followed by observation.environment_state (PushT keypoints) when the task's
    state dimension asks for both (or when there is no observation.state)."""
    def dim(k: str) -> int:
        return int(np.prod(features[k].get("shape") or (1,)))

    numeric = {k: f for k, f in features.items() if f.get("dtype") not in ("image", "video", "string")}
    if state_keys:
        missing = [k for k in state_keys if k not in numeric]
        if missing:
            raise DataError(f"data.state_keys {missing} are not numeric features of the dataset "
                            f"(numeric: {sorted(numeric)})")
        chosen = list(state_keys)
    else:
        chosen = [k for k in (STATE_KEY,) if k in numeric]
        if ENV_STATE_KEY in numeric and (not chosen or (state_dim is not None and
                                                        sum(map(dim, chosen)) + dim(ENV_STATE_KEY) == state_dim)):
            chosen.append(ENV_STATE_KEY)
    cams = {f"image.{_lerobot_cam(k)}": k for k, f in features.items()
            if (k.startswith(IMAGES_PREFIX) or k == SINGLE_IMAGE_KEY) and f.get("dtype") in ("image", "video")}
    return {"state": chosen, "action": ACTION_KEY, **dict(sorted(cams.items())),
            "_dims": {k: dim(k) for k in numeric}}


def open_lerobot(root: Path, *, images: bool = True, state_dim: int | None = None, action_dim: int | None = None,
                 state_keys: Optional[list[str]] = None, tolerance_s: float = LEROBOT_TOLERANCE_S,
                 task: str = "", video_backend: str = "pyav") -> LazyDemos:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genpolicy.datasets.lerobot import _load_v3_info, _numeric_column

    try:
        info = _load_v3_info(root)
    except ValueError as e:
        raise DataError(str(e)) from None
    features, fps = info["features"], float(info["fps"])
    mapping = lerobot_mapping(features, state_dim, state_keys)
    if ACTION_KEY not in features:
        raise DataError(f"{root}: no 'action' feature (features: {sorted(features)})")
    if not mapping["state"]:
        raise DataError(f"{root}: no observation.state or observation.environment_state feature; name the state "
                        f"with data.state_keys=[...] (features: {sorted(features)})")

    # ---- episodes ----------------------------------------------------------------------------------------------
    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not ep_files:
        raise DataError(f"{root}: meta/episodes/*/*.parquet is missing (was LeRobotDataset.finalize() called?)")
    tables = []
    for f in ep_files:
        names = pq.read_schema(f).names
        tables.append(pq.read_table(f, columns=[c for c in names if not c.startswith("stats/")]))
    eps = pa.concat_tables(tables, promote_options="default").to_pydict()
    order = np.argsort(np.asarray(eps["episode_index"]), kind="stable")
    eps = {k: [v[i] for i in order] for k, v in eps.items()}
    ep_index = np.asarray(eps["episode_index"], dtype=np.int64)
    ep_len = np.asarray(eps["length"], dtype=np.int64)
    if len(ep_index) == 0 or np.any(ep_len <= 0):
        raise DataError(f"{root}: meta/episodes lists no episodes or empty ones")
    ends = np.cumsum(ep_len).astype(np.int64)
    starts = ends - ep_len
    n = int(ends[-1])

    # ---- numeric columns from the data parquet files the episodes name --------------------------------------------
    data_tpl = info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
    want_files: dict[Path, list[int]] = {}
    for e in range(len(ep_index)):
        ck = eps.get("data/chunk_index", [0] * len(ep_index))[e]
        fi = eps.get("data/file_index", [0] * len(ep_index))[e]
        want_files.setdefault(root / data_tpl.format(chunk_index=int(ck), file_index=int(fi)), []).append(e)
    img_keys = [mapping[k] for k in mapping if k.startswith("image.")] if images else []
    png_keys = [k for k in img_keys if features[k]["dtype"] == "image"]
    cols = list(dict.fromkeys([*mapping["state"], ACTION_KEY, *png_keys, "episode_index", "frame_index", "timestamp"]))
    parts = []
    for f, es in want_files.items():
        if not f.is_file():
            raise DataError(f"{f}: data file of episode {int(ep_index[es[0]])} is missing "
                            f"({len(es)} episode(s) listed in meta/episodes point to it)")
        try:
            names = set(pq.read_schema(f).names)
            missing = [c for c in cols if c not in names]
            if missing:
                raise DataError(f"{f}: column(s) {missing} missing (episode {int(ep_index[es[0]])})")
            parts.append(pq.read_table(f, columns=cols))
        except DataError:
            raise
        except Exception as e:  # pyarrow.ArrowInvalid for a truncated parquet
            raise DataError(f"{f}: cannot read data file of episode {int(ep_index[es[0]])} "
                            f"({type(e).__name__}: {e})") from None
    table = pa.concat_tables(parts)
    f_ep = table.column("episode_index").to_numpy().astype(np.int64)
    f_idx = table.column("frame_index").to_numpy().astype(np.int64)
    row_order = np.lexsort((f_idx, f_ep))
    if len(row_order) != n or not np.array_equal(f_ep[row_order], np.repeat(ep_index, ep_len)):
        have = dict(zip(*np.unique(f_ep, return_counts=True)))
        bad = next((int(e) for e, L in zip(ep_index, ep_len) if have.get(e, 0) != L), int(ep_index[0]))
        raise DataError(f"{root}: episode {bad} has {have.get(bad, 0)} frames in data/ but meta/episodes says "
                        f"{int(ep_len[list(ep_index).index(bad)]) if bad in ep_index else '?'}")
    try:
        state_parts = [_numeric_column(table, k, features[k], root)[row_order].reshape(n, -1) for k in mapping["state"]]
        action = _numeric_column(table, ACTION_KEY, features[ACTION_KEY], root)[row_order].reshape(n, -1)
    except ValueError as e:
        raise DataError(str(e)) from None
    data = {"state": np.concatenate(state_parts, axis=1).astype(np.float32),
            "action": action.astype(np.float32)}
    for k in ("state", "action"):
        if not np.isfinite(data[k]).all():
            r = int(np.argwhere(~np.isfinite(data[k]))[0, 0])
            e = int(np.searchsorted(ends, r, side="right"))
            raise DataError(f"{root}: {k} ({mapping[k]}) has NaN or inf (episode {int(ep_index[e])}, frame {r - starts[e]})")
    timestamps = table.column("timestamp").to_numpy().astype(np.float64)[row_order]
    ep_of_row = np.repeat(ep_index, ep_len)

    # ---- camera sources -------------------------------------------------------------------------------------------
    frames: dict[str, FrameSource] = {}
    for out_key, k in ((o, mapping[o]) for o in mapping if o.startswith("image.")):
        if not images:
            break
        h, w, c = _hwc(features[k], root, k)
        if features[k]["dtype"] == "image":
            col = table.column(k).combine_chunks()
            blobs = col.field("bytes").to_pylist() if pa.types.is_struct(col.type) else col.to_pylist()
            frames[out_key] = PngFrames([blobs[i] for i in row_order], (3, h, w), str(root), k)
            continue
        frames[out_key] = _video_source(root, info, eps, ep_index, ep_len, starts, timestamps, ep_of_row, k,
                                        (3, h, w), fps, tolerance_s, video_backend)
    tasks = _tasks(root)
    attrs = {"source": "lerobot", "source_dir": str(root), "fps": fps, "task": tasks[0] if len(tasks) == 1 else "",
             "lerobot_codebase_version": info.get("codebase_version"), "robot_type": info.get("robot_type"),
             "tasks": tasks,
             "episode_tasks": [list(t) if t is not None else [] for t in eps.get("tasks", [None] * len(ep_index))]}
    key_map = {k: v for k, v in mapping.items() if not k.startswith("_") and (images or not k.startswith("image."))}
    demos = LazyDemos(data, ends, frames, attrs, str(root), key_map)
    _check_dims(demos, state_dim, action_dim, task, {"state": mapping["state"]}, mapping["_dims"])
    return demos


def _hwc(ft: dict, root: Path, key: str) -> tuple[int, int, int]:
    shape = list(ft.get("shape") or [])
    names = ft.get("names") or []
    if len(shape) != 3:
        raise DataError(f"{root}: image feature {key!r} has shape {shape}, expected 3 dims")
    if list(names)[:1] == ["channels"] or (shape[0] == 3 and shape[2] != 3):
        c, h, w = shape
    else:
        h, w, c = shape
    if c != 3:
        raise DataError(f"{root}: image feature {key!r} has {c} channels; only RGB is supported")
    return int(h), int(w), int(c)


def _video_source(root: Path, info: dict, eps: dict, ep_index: np.ndarray, ep_len: np.ndarray, starts: np.ndarray,
                  timestamps: np.ndarray, ep_of_row: np.ndarray, key: str, shape: tuple[int, int, int], fps: float,
                  tolerance_s: float, backend: str = "pyav") -> VideoFrames:
    """Per-row (file, time) for one video key; files checked to exist, open, and have the dataset's fps."""
    import av

    tpl = info.get("video_path")
    if not tpl:
        raise DataError(f"{root}: feature {key!r} is a video but meta/info.json has no video_path")
    cols = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    for c in cols:
        if c not in eps:
            raise DataError(f"{root}: meta/episodes has no column {c!r} for video {key!r}")
    paths: list[Path] = []
    index: dict[Path, int] = {}
    file_of_row = np.empty(len(timestamps), dtype=np.int32)
    t_of_row = np.empty(len(timestamps), dtype=np.float64)
    first_ep: dict[int, int] = {}
    to_ts = eps.get(f"videos/{key}/to_timestamp")
    for e in range(len(ep_index)):
        p = root / tpl.format(video_key=key, chunk_index=int(eps[cols[0]][e]), file_index=int(eps[cols[1]][e]))
        f = index.setdefault(p, len(paths))
        if f == len(paths):
            paths.append(p)
            first_ep[f] = int(ep_index[e])
        rows = slice(int(starts[e]), int(starts[e] + ep_len[e]))
        file_of_row[rows] = f
        t_of_row[rows] = float(eps[cols[2]][e]) + timestamps[rows]
        if to_ts is not None and t_of_row[rows][-1] > float(to_ts[e]) + tolerance_s:
            raise DataError(f"{p} (video {key!r}, episode {int(ep_index[e])}): timestamp {t_of_row[rows][-1]:.4f}s "
                            f"is beyond the end of the episode's part of the video ({float(to_ts[e]):.4f}s)")
    # Every file is opened once here (headers only): a missing file, an unreadable one, a wrong fps, or an episode
    # that runs past the end of its file is refused before training starts rather than in a worker.
    end_of_file: dict[int, float] = {}
    for f, p in enumerate(paths):
        where = f"{p} (video {key!r}, episode {first_ep[f]})"
        if not p.is_file():
            raise DataError(f"{where}: video file is missing")
        try:
            with av.open(str(p)) as c:
                s = c.streams.video[0]
                rate = float(s.average_rate or s.guessed_rate or 0)
                dur = (float(s.duration * s.time_base) if s.duration is not None
                       else float(c.duration) / 1e6 if c.duration is not None else float("inf"))
                if s.frames:
                    dur = min(dur, s.frames / max(rate, 1e-9)) if rate else dur
        except Exception as e:  # av.error.InvalidDataError for a truncated moov, etc.
            raise DataError(f"{where}: cannot open video ({type(e).__name__}: {e}); the file may be truncated") from None
        if rate and abs(rate - fps) > 0.01 * fps:
            raise DataError(f"{where}: video is {rate:g} fps but meta/info.json says {fps:g} fps")
        end_of_file[f] = dur
    for f, dur in end_of_file.items():
        rows = np.nonzero(file_of_row == f)[0]
        last = int(rows[np.argmax(t_of_row[rows])])
        # a frame at time t occupies [t, t + 1/fps): the last one starts one frame before the stream's end
        if t_of_row[last] > dur - 1.0 / fps + max(tolerance_s, 1e-3):
            raise DataError(f"{paths[f]} (video {key!r}, episode {int(ep_of_row[last])}): timestamp "
                            f"{t_of_row[last]:.4f}s is beyond the end of the video ({dur:.4f}s); "
                            f"the file may be truncated")
    return VideoFrames(root, key, paths, file_of_row, t_of_row, ep_of_row.astype(np.int32), shape, fps, tolerance_s,
                       backend=backend)


def _tasks(root: Path) -> list[str]:
    from genpolicy.datasets.lerobot import _load_tasks

    try:
        return _load_tasks(root)
    except Exception:  # noqa: BLE001 - tasks are metadata; a dataset without them still trains
        return []


# ----------------------------------------------------------------------------------------------------------------
# describing
# ----------------------------------------------------------------------------------------------------------------
def describe_lerobot(root: Path, state_dim: int | None = None) -> str:
    """The LeRobot feature table and how each key maps onto the policy's inputs (`genpolicy data info`)."""
    from genpolicy.datasets.lerobot import _load_v3_info

    try:
        info = _load_v3_info(root)
    except ValueError as e:
        raise DataError(str(e)) from None
    features = info["features"]
    m = lerobot_mapping(features, state_dim)
    dims = m["_dims"]
    lines = [f"dataset: {root} (LeRobot {info.get('codebase_version')}, robot {info.get('robot_type')})",
             f"episodes: {info.get('total_episodes')}   frames: {info.get('total_frames')}   fps: {info['fps']}",
             "mapping (LeRobot key -> policy input):",
             f"  {'LeRobot key':<36} {'dtype':<10} {'shape':<14} -> policy"]
    off = 0
    target: dict[str, str] = {}
    for k in m["state"]:
        target[k] = f"state[{off}:{off + dims[k]}]"
        off += dims[k]
    target[ACTION_KEY] = f"action[0:{dims.get(ACTION_KEY, 0)}]"
    for out, k in m.items():
        if out.startswith("image."):
            target[k] = f"{out} (3, H, W) uint8"
    skip = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
    for k, f in features.items():
        if k in skip:
            continue
        store = " mp4" if f.get("dtype") == "video" else ""
        lines.append(f"  {k:<36} {str(f.get('dtype')) + store:<10} {str(tuple(f.get('shape') or ())):<14} -> "
                     f"{target.get(k, '(not used)')}")
    lines.append(f"  state dimension {off}" + ("" if state_dim is None else f" (task expects {state_dim})"))
    tasks = _tasks(root)
    if tasks:
        lines.append(f"tasks ({len(tasks)}, kept as metadata): " + "; ".join(repr(t) for t in tasks[:5])
                     + (" ..." if len(tasks) > 5 else ""))
    n_files = len(list((root / "videos").glob("*/*/*.mp4"))) if (root / "videos").is_dir() else 0
    if n_files:
        lines.append(f"video files: {n_files} (decoded on demand while training)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------------------
def worker_init(_: int) -> None:
    """DataLoader workers decode with one thread each: the workers are the parallelism."""
    import torch

    torch.set_num_threads(1)
