"""LeRobotDataset (codebase v3.0) <-> genpolicy replay-buffer layout.

`import_lerobot` / `export_lerobot` work on ReplayBuffers; `import_arrays` / `export_arrays` on plain numpy.  ``ledataset`` (PyPI ``lerobot-dataset``)
is imported lazily by ``export_lerobot`` only; ``import_lerobot`` reads the v3 files
directly with pyarrow / PIL / PyAV (all dependencies of ``lerobot-dataset``), because

* per-frame ``LeRobotDataset.__getitem__`` is slow (one HF-datasets row + one torch
  conversion per frame) and returns float32 [0, 1] images, while we want the uint8
  pixels back bit-exactly;
* ledataset's video decoders do not work in this environment: the default
  ``torchcodec`` is not installed and the ``pyav`` fallback calls
  ``torchvision.io.VideoReader``, which torchvision >= 0.2x no longer has.

Replay-buffer layout (genpolicy)::

    data["action"]       float32 (N, Da)
    data["state"]        float32 (N, Ds)
    data["image.<cam>"]  uint8   (N, 3, H, W)   channel-first
    episode_ends         int64   (E,)           cumulative end indices

LeRobot v3 layout (what this module reads / writes)::

    meta/info.json                         codebase_version "v3.0", fps, features, paths
    meta/tasks.parquet                     index = task string, column task_index
    meta/episodes/chunk-XXX/file-XXX.parquet
        episode_index, length, dataset_from_index, dataset_to_index, tasks,
        data/chunk_index, data/file_index,
        videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}, stats/...
    data/chunk-XXX/file-XXX.parquet        one row per frame, many episodes per file
        <features...>, timestamp, frame_index, episode_index, index, task_index
        image features: struct<bytes: binary (PNG), path: string>
    videos/<key>/chunk-XXX/file-XXX.mp4    many episodes concatenated per file
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["export_lerobot", "import_lerobot", "export_arrays", "import_arrays"]

logger = logging.getLogger(__name__)

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGES_PREFIX = "observation.images."
SINGLE_IMAGE_KEY = "observation.image"  # LeRobot's one-camera datasets (pusht) -> image.image
# Columns ledataset adds to every dataset (DEFAULT_FEATURES); never user data.
_DEFAULT_FEATURE_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
def export_arrays(
    data: dict[str, np.ndarray],
    episode_ends: np.ndarray,
    out_dir: str | Path,
    fps: float,
    repo_id: str = "local/genpolicy",
    task: str = "task",
    *,
    use_videos: bool = False,
    vcodec: str = "h264",
    robot_type: str | None = None,
    image_writer_threads: int = 4,
    extra_keys: tuple[str, ...] = (),
) -> None:
    """Write a LeRobotDataset v3 at ``out_dir`` with ``LeRobotDataset.create(..., root=out_dir)``.

    Mapping: ``state`` -> ``observation.state``, ``action`` -> ``action``,
    ``image.<cam>`` -> ``observation.images.<cam>``; keys in ``extra_keys`` (numeric (N,) or (N, D)) are stored
    verbatim as float32 features (bool arrays: bool features) under their own names.  Other keys are skipped with a warning.

    Images are stored with dtype ``"image"`` (PNG bytes embedded in the data parquet) by
    default: PNG is lossless, so ``import_lerobot`` returns the identical uint8 pixels.
    ``use_videos=True`` stores them as mp4 (``vcodec`` in {"h264", "hevc", "libsvtav1"},
    yuv420p, crf 30) which is smaller but lossy -- pixel values will NOT round-trip.

    Image features are declared LeRobot-style as shape (H, W, 3) with
    names ["height", "width", "channels"] (what lerobot's ``dataset_to_policy_features``
    expects); frames are handed to ``add_frame`` as HWC uint8.

    ``out_dir`` must not exist (or be an empty directory).  ``repo_id`` is only written
    into the metadata; nothing is uploaded.
    """
    out_dir = Path(out_dir)
    episode_ends = np.asarray(episode_ends)
    if episode_ends.ndim != 1 or episode_ends.size == 0:
        raise ValueError(f"export_lerobot({out_dir}): episode_ends must be a non-empty 1-D array")
    if not np.issubdtype(episode_ends.dtype, np.integer):
        raise ValueError(f"export_lerobot({out_dir}): episode_ends must be integers, got {episode_ends.dtype}")
    starts = np.concatenate([[0], episode_ends[:-1]])
    if np.any(episode_ends - starts <= 0):
        raise ValueError(
            f"export_lerobot({out_dir}): episode_ends must be strictly increasing and > 0 "
            f"(LeRobot cannot store empty episodes); got {episode_ends.tolist()}"
        )
    n = int(episode_ends[-1])

    if "action" not in data:
        raise ValueError(f"export_lerobot({out_dir}): data has no 'action' key (keys: {sorted(data)})")

    # ---- build the feature spec --------------------------------------------------
    features: dict[str, dict] = {}
    columns: dict[str, np.ndarray] = {}  # lerobot key -> array (N, ...) in add_frame layout
    skipped = []
    for key, arr in data.items():
        arr = np.asarray(arr)
        if arr.shape[0] != n:
            raise ValueError(
                f"export_lerobot({out_dir}): data[{key!r}] has {arr.shape[0]} rows but "
                f"episode_ends[-1] = {n}"
            )
        if key in ("state", "action"):
            lkey = STATE_KEY if key == "state" else ACTION_KEY
            if arr.ndim != 2:
                raise ValueError(f"export_lerobot({out_dir}): data[{key!r}] must be (N, D), got {arr.shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"export_lerobot({out_dir}): data[{key!r}] must be float, got {arr.dtype}")
            features[lkey] = {"dtype": str(arr.dtype), "shape": (arr.shape[1],), "names": None}
            columns[lkey] = np.ascontiguousarray(arr)
        elif key.startswith("image."):
            cam = key[len("image.") :]
            if not cam or "/" in cam:
                raise ValueError(f"export_lerobot({out_dir}): bad camera name in key {key!r}")
            if arr.ndim != 4 or arr.shape[1] != 3:
                raise ValueError(
                    f"export_lerobot({out_dir}): data[{key!r}] must be channel-first (N, 3, H, W), got {arr.shape}"
                )
            if arr.dtype != np.uint8:
                raise ValueError(f"export_lerobot({out_dir}): data[{key!r}] must be uint8, got {arr.dtype}")
            _, _, h, w = arr.shape
            lkey = IMAGES_PREFIX + cam
            features[lkey] = {
                "dtype": "video" if use_videos else "image",
                "shape": (h, w, 3),
                "names": ["height", "width", "channels"],
            }
            # add_frame validates against the declared (H, W, 3) shape -> give it HWC.
            columns[lkey] = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
        elif key in extra_keys:
            # bool flags stay bool (LeRobot's own intervention feature is bool); anything else is float32
            col = arr.reshape(n, -1).astype(bool if arr.dtype == bool else np.float32)
            features[key] = {"dtype": "bool" if arr.dtype == bool else "float32", "shape": (col.shape[1],), "names": None}
            columns[key] = np.ascontiguousarray(col)
        else:
            skipped.append(key)
    if skipped:
        warnings.warn(
            f"export_lerobot({out_dir}): keys not mapped to LeRobot features and skipped: {skipped}",
            stacklevel=2,
        )

    # ---- fps ----------------------------------------------------------------------
    fps_val: int | float = float(fps)
    if fps_val <= 0:
        raise ValueError(f"export_lerobot({out_dir}): fps must be > 0, got {fps}")
    if math.isclose(fps_val, round(fps_val), abs_tol=1e-9):
        fps_val = int(round(fps_val))  # LeRobot tooling (video encoding, info.json) expects int fps
    else:
        warnings.warn(
            f"export_lerobot({out_dir}): non-integer fps {fps} -- LeRobot assumes integer fps; "
            "video encoding and delta_timestamps checks may misbehave",
            stacklevel=2,
        )
        if use_videos:
            raise ValueError(f"export_lerobot({out_dir}): video storage needs an integer fps, got {fps}")

    # ---- output dir ---------------------------------------------------------------
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # LeRobotDatasetMetadata.create does mkdir(exist_ok=False)
        else:
            raise FileExistsError(f"export_lerobot: output directory already exists and is not empty: {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    has_images = any(ft["dtype"] in ("image", "video") for ft in features.values())
    ds = LeRobotDataset.create(
        repo_id=repo_id,
        fps=fps_val,
        features=features,
        root=out_dir,
        robot_type=robot_type,
        use_videos=use_videos,
        image_writer_threads=image_writer_threads if has_images else 0,
        vcodec=vcodec,
    )
    try:
        for ep, (s, e) in enumerate(zip(starts.tolist(), episode_ends.tolist(), strict=True)):
            for t in range(s, e):
                frame = {k: v[t] for k, v in columns.items()}
                frame["task"] = task  # required by validate_frame; popped before feature checks
                ds.add_frame(frame)
            ds.save_episode()
    finally:
        # finalize() closes the parquet writers (data + meta/episodes); without it the
        # parquet footers are missing and the dataset cannot be loaded.  It does NOT stop
        # the async image writer threads -> stop them explicitly.
        ds.finalize()
        ds.stop_image_writer()
    # ledataset leaves an empty images/ dir behind after moving PNGs into the parquet.
    img_dir = out_dir / "images"
    if img_dir.is_dir():
        _rmdir_if_empty_tree(img_dir)


def _rmdir_if_empty_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir():
            try:
                p.rmdir()
            except OSError:
                return
        else:
            return
    try:
        path.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------
def import_arrays(
    root: str | Path,
    state_keys: list[str] | None = None,
    action_key: str = "action",
    image_keys: list[str] | None = None,
    *,
    num_threads: int = 8,
    video_tolerance_s: float | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Read a LeRobotDataset v3 at ``root`` (offline) into the replay-buffer layout.

    Returns ``(data, episode_ends, meta)``:

    * ``data["state"]`` float32 (N, Ds): concatenation of ``state_keys`` along the last
      axis (default ``["observation.state"]``; pass ``[]`` for no state).
    * ``data["action"]`` float32 (N, Da) from ``action_key``.
    * ``data["image.<cam>"]`` uint8 (N, 3, H, W) for each key in ``image_keys``
      (default: every ``observation.images.*`` feature of dtype image or video, and LeRobot's
      single-camera ``observation.image`` as in ``lerobot/pusht``); ``<cam>`` is the key with the
      ``observation.images.`` prefix removed, and ``image`` for ``observation.image``.
    * ``episode_ends`` int64 (E,), from ``meta/episodes`` (``length`` ordered by
      ``episode_index``), cross-checked against the frame table.
    * ``meta``: fps, features, n_episodes, n_frames, source, codebase_version,
      robot_type, tasks, episode_tasks, key_map (output key -> LeRobot key),
      image_storage (LeRobot key -> "image"/"video").

    Frames are ordered by (episode_index, frame_index).  The frame parquet files are read
    wholesale with pyarrow; PNG images are decoded in a thread pool; mp4 videos are
    decoded sequentially with PyAV, one pass per file (lossy codecs give approximate
    pixels, exactly what any LeRobot loader would see).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    info = _load_v3_info(root)
    features: dict = info["features"]
    fps = float(info["fps"])

    # ---- resolve keys -------------------------------------------------------------
    def _require(key: str, what: str) -> dict:
        if key not in features:
            avail = [k for k in features if k not in _DEFAULT_FEATURE_KEYS]
            raise ValueError(f"import_lerobot({root}): {what} key {key!r} not in dataset features {avail}")
        return features[key]

    if state_keys is None:
        state_keys = [STATE_KEY]
    state_keys = list(state_keys)
    for k in state_keys:
        ft = _require(k, "state")
        if ft["dtype"] in ("image", "video", "string"):
            raise ValueError(f"import_lerobot({root}): state key {k!r} has dtype {ft['dtype']!r}")
    ft = _require(action_key, "action")
    if ft["dtype"] in ("image", "video", "string"):
        raise ValueError(f"import_lerobot({root}): action key {action_key!r} has dtype {ft['dtype']!r}")
    if image_keys is None:
        image_keys = [
            k for k, f in features.items()
            if (k.startswith(IMAGES_PREFIX) or k == SINGLE_IMAGE_KEY) and f["dtype"] in ("image", "video")
        ]
    image_keys = list(image_keys)
    for k in image_keys:
        f = _require(k, "image")
        if f["dtype"] not in ("image", "video"):
            raise ValueError(f"import_lerobot({root}): image key {k!r} has dtype {f['dtype']!r}, not image/video")
    key_map: dict[str, str] = {}
    for k in image_keys:
        cam = k[len(IMAGES_PREFIX) :] if k.startswith(IMAGES_PREFIX) else k.rsplit(".", 1)[-1]
        out = f"image.{cam}"
        if out in key_map:
            raise ValueError(f"import_lerobot({root}): image keys {key_map[out]!r} and {k!r} both map to {out!r}")
        key_map[out] = k

    # ---- episodes metadata ----------------------------------------------------------
    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if int(info.get("total_episodes", 0)) == 0:
        raise ValueError(f"import_lerobot({root}): dataset is empty (info.json total_episodes == 0)")
    if not ep_files:
        raise ValueError(
            f"import_lerobot({root}): info.json lists {info['total_episodes']} episodes but meta/episodes/*/*.parquet "
            "is missing (was LeRobotDataset.finalize() called after recording?)"
        )
    ep_tables = []
    for f in ep_files:
        names = pq.read_schema(f).names
        ep_tables.append(pq.read_table(f, columns=[c for c in names if not c.startswith("stats/")]))
    episodes = pa.concat_tables(ep_tables, promote_options="default").to_pydict()
    order = np.argsort(np.asarray(episodes["episode_index"]), kind="stable")
    episodes = {k: [v[i] for i in order] for k, v in episodes.items()}
    ep_index = np.asarray(episodes["episode_index"], dtype=np.int64)
    ep_length = np.asarray(episodes["length"], dtype=np.int64)
    if len(np.unique(ep_index)) != len(ep_index):
        raise ValueError(f"import_lerobot({root}): duplicate episode_index in meta/episodes")
    if np.any(ep_length <= 0):
        raise ValueError(f"import_lerobot({root}): meta/episodes has empty episodes: {ep_index[ep_length <= 0]}")
    episode_ends = np.cumsum(ep_length).astype(np.int64)

    # ---- frame table (all data parquet files at once) ------------------------------
    data_files = sorted((root / "data").glob("*/*.parquet"))
    if not data_files:
        raise ValueError(f"import_lerobot({root}): dataset is empty (no data/*/*.parquet files)")
    parquet_image_keys = [k for k in image_keys if features[k]["dtype"] == "image"]
    video_keys = [k for k in image_keys if features[k]["dtype"] == "video"]
    wanted = list(dict.fromkeys([*state_keys, action_key, *parquet_image_keys, "episode_index", "frame_index", "timestamp"]))
    tables = []
    for f in data_files:
        names = set(pq.read_schema(f).names)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"import_lerobot({root}): column(s) {missing} missing from {f}")
        tables.append(pq.read_table(f, columns=wanted))
    table = pa.concat_tables(tables)
    frame_ep = table.column("episode_index").to_numpy().astype(np.int64)
    frame_idx = table.column("frame_index").to_numpy().astype(np.int64)
    row_order = np.lexsort((frame_idx, frame_ep))
    frame_ep, frame_idx = frame_ep[row_order], frame_idx[row_order]
    n = len(row_order)
    if n != int(episode_ends[-1]):
        raise ValueError(
            f"import_lerobot({root}): data parquet has {n} frames but meta/episodes lengths sum to {int(episode_ends[-1])}"
        )
    expected_ep = np.repeat(ep_index, ep_length)
    if not np.array_equal(frame_ep, expected_ep):
        raise ValueError(f"import_lerobot({root}): frame episode_index column does not match meta/episodes lengths")
    starts = episode_ends - ep_length
    expected_fi = np.arange(n) - np.repeat(starts, ep_length)
    if not np.array_equal(frame_idx, expected_fi):
        warnings.warn(f"import_lerobot({root}): frame_index is not 0..len-1 within every episode", stacklevel=2)

    out: dict[str, np.ndarray] = {}
    if state_keys:
        parts = [_numeric_column(table, k, features[k], root)[row_order] for k in state_keys]
        out["state"] = np.concatenate([p.reshape(n, -1) for p in parts], axis=-1).astype(np.float32, copy=False)
    out["action"] = _numeric_column(table, action_key, features[action_key], root)[row_order].reshape(n, -1).astype(
        np.float32, copy=False
    )

    for out_key, k in key_map.items():
        if features[k]["dtype"] == "image":
            out[out_key] = _decode_png_column(table.column(k), row_order, root, k, num_threads)

    if video_keys:
        timestamps = table.column("timestamp").to_numpy().astype(np.float64)[row_order]
        tol = video_tolerance_s if video_tolerance_s is not None else 0.25 / fps
        for out_key, k in key_map.items():
            if features[k]["dtype"] == "video":
                out[out_key] = _decode_video_key(root, info, episodes, k, ep_length, timestamps, tol)

    tasks = _load_tasks(root)
    meta = {
        "fps": fps,
        "features": features,
        "n_episodes": int(len(ep_index)),
        "n_frames": int(n),
        "source": str(root.resolve()),
        "codebase_version": info.get("codebase_version"),
        "robot_type": info.get("robot_type"),
        "tasks": tasks,
        "task": tasks[0] if len(tasks) == 1 else None,
        "episode_index": ep_index,
        "episode_tasks": [list(t) if t is not None else [] for t in episodes.get("tasks", [None] * len(ep_index))],
        "key_map": {"action": action_key, **({"state": state_keys} if state_keys else {}), **key_map},
        "image_storage": {k: features[k]["dtype"] for k in image_keys},
    }
    return out, episode_ends, meta


def _load_v3_info(root: Path) -> dict:
    if not root.is_dir():
        raise ValueError(f"import_lerobot({root}): not a directory")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"import_lerobot({root}): not a LeRobot dataset (missing meta/info.json)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"import_lerobot({root}): cannot parse meta/info.json: {e}") from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        hint = ""
        if (root / "meta" / "episodes.jsonl").exists() or version.startswith("v2"):
            hint = (
                " (this looks like a v2.x dataset: convert it with "
                "ledataset.datasets.v30.convert_dataset_v21_to_v30)"
            )
        raise ValueError(
            f"import_lerobot({root}): codebase_version {version or '<missing>'!r} is not v3.x{hint}"
        )
    for key in ("fps", "features"):
        if key not in info:
            raise ValueError(f"import_lerobot({root}): meta/info.json has no {key!r}")
    return info


def _load_tasks(root: Path) -> list[str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pandas()
    if "task_index" in t.columns:
        t = t.sort_values("task_index")
    if "task" in t.columns:
        return [str(x) for x in t["task"]]
    return [str(x) for x in t.index]


def _numeric_column(table, key: str, ft: dict, root: Path) -> np.ndarray:
    """(N, *shape) numpy array from a (possibly nested fixed-size) list column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(key)
    if col.null_count:
        raise ValueError(f"import_lerobot({root}): column {key!r} has {col.null_count} null values")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = pc.list_flatten(arr)
    flat = arr.to_numpy(zero_copy_only=False)
    shape = tuple(ft.get("shape") or ())
    if shape == (1,) and flat.size == n:
        return flat.reshape(n, 1)
    try:
        return flat.reshape(n, *shape)
    except ValueError:
        if flat.size % max(n, 1):
            raise ValueError(f"import_lerobot({root}): column {key!r} is ragged ({flat.size} values for {n} rows)")
        return flat.reshape(n, -1)


def _decode_png_column(col, row_order: np.ndarray, root: Path, key: str, num_threads: int) -> np.ndarray:
    """Decode an HF ``Image`` column (struct<bytes, path>) into uint8 (N, 3, H, W)."""
    from PIL import Image

    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_struct(arr.type):
        blobs = arr.field("bytes").to_pylist()
        paths = arr.field("path").to_pylist() if arr.type.get_field_index("path") >= 0 else [None] * len(arr)
    elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        blobs, paths = arr.to_pylist(), [None] * len(arr)
    else:
        raise ValueError(f"import_lerobot({root}): image column {key!r} has unexpected arrow type {arr.type}")

    def load(i: int) -> np.ndarray:
        b = blobs[i]
        if b is None:
            p = paths[i]
            if p is None:
                raise ValueError(f"import_lerobot({root}): image {key!r} row {i} has neither bytes nor path")
            p = Path(p) if Path(p).is_absolute() else root / p
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im.convert("RGB"))

    idx = row_order.tolist()
    first = load(idx[0])
    h, w, _ = first.shape
    out = np.empty((len(idx), 3, h, w), dtype=np.uint8)

    def fill(j: int) -> None:
        img = first if j == 0 else load(idx[j])
        if img.shape != (h, w, 3):
            raise ValueError(f"import_lerobot({root}): image {key!r} frame {j} has shape {img.shape}, expected {(h, w, 3)}")
        out[j] = img.transpose(2, 0, 1)

    if num_threads > 1 and len(idx) > 64:
        with ThreadPoolExecutor(num_threads) as ex:
            list(ex.map(fill, range(len(idx)), chunksize=64))
    else:
        for j in range(len(idx)):
            fill(j)
    return out


def _decode_video_key(
    root: Path,
    info: dict,
    episodes: dict,
    key: str,
    ep_length: np.ndarray,
    timestamps: np.ndarray,
    tol: float,
) -> np.ndarray:
    """Decode every frame of video feature ``key`` into uint8 (N, 3, H, W).

    v3 packs many episodes into one mp4; meta/episodes gives, per episode, the file
    (videos/<key>/chunk_index, file_index) and the episode's start time in it
    (videos/<key>/from_timestamp).  Frame t of an episode lives at
    from_timestamp + timestamp[t] (the same query LeRobotDataset._query_videos makes).
    Each file is decoded once, sequentially, with PyAV.
    """
    import av

    video_path_tpl = info.get("video_path")
    if not video_path_tpl:
        raise ValueError(f"import_lerobot({root}): feature {key!r} is a video but info.json has no video_path")
    cols = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    for c in cols:
        if c not in episodes:
            raise ValueError(f"import_lerobot({root}): meta/episodes has no column {c!r} for video {key!r}")
    n = len(timestamps)
    starts = np.concatenate([[0], np.cumsum(ep_length)[:-1]])
    # group frame rows by file
    by_file: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    for e in range(len(ep_length)):
        ck, fi, t0 = (episodes[c][e] for c in cols)
        rows = np.arange(starts[e], starts[e] + ep_length[e])
        by_file.setdefault((int(ck), int(fi)), []).append((rows, float(t0) + timestamps[rows]))

    out: np.ndarray | None = None
    filled = np.zeros(n, dtype=bool)
    for (ck, fi), parts in sorted(by_file.items()):
        path = root / video_path_tpl.format(video_key=key, chunk_index=ck, file_index=fi)
        if not path.is_file():
            raise ValueError(f"import_lerobot({root}): missing video file {path} for key {key!r}")
        rows = np.concatenate([p[0] for p in parts])
        qts = np.concatenate([p[1] for p in parts])
        srt = np.argsort(qts, kind="stable")
        rows, qts = rows[srt], qts[srt]
        last = qts[-1] + tol
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for k, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else k / float(info["fps"])
                if t > last:
                    break
                lo = np.searchsorted(qts, t - tol, side="left")
                hi = np.searchsorted(qts, t + tol, side="right")
                if hi <= lo:
                    continue
                img = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
                if out is None:
                    out = np.empty((n, 3, img.shape[0], img.shape[1]), dtype=np.uint8)
                chw = img.transpose(2, 0, 1)
                for j in range(lo, hi):
                    out[rows[j]] = chw
                    filled[rows[j]] = True
        missing = ~filled[rows]
        if missing.any():
            raise ValueError(
                f"import_lerobot({root}): {int(missing.sum())} frame(s) of {key!r} not found in {path} "
                f"within {tol:.4g}s (first missing query t={qts[missing][0]:.4f}s)"
            )
    assert out is not None and filled.all()
    return out


# --------------------------------------------------------------------------------------
# ReplayBuffer front-end (what the rest of genpolicy calls)
# --------------------------------------------------------------------------------------
def import_lerobot(root: str | Path, state_keys: list[str] | None = None):  # -> ReplayBuffer
    """Read a LeRobot v3 dataset directory into a validated ReplayBuffer (errors name the path and key)."""
    from genpolicy.datasets.replay_buffer import ReplayBuffer
    from genpolicy.errors import DataError

    try:
        data, ends, meta = import_arrays(root, state_keys=state_keys or None)
    except (ValueError, OSError) as e:
        raise DataError(str(e)) from None
    attrs = {"source": "lerobot", "source_dir": str(root), "fps": meta["fps"], "task": meta.get("task") or "",
             "lerobot_codebase_version": meta.get("codebase_version")}
    rb = ReplayBuffer(data=data, episode_ends=ends, attrs=attrs, source=str(root))
    rb.validate()
    return rb


def export_lerobot(rb, out_dir: str | Path, fps: float, repo_id: str = "local/genpolicy") -> Path:
    """Write a ReplayBuffer as a LeRobot v3 dataset; written beside out_dir and renamed into place on success."""
    import shutil
    import uuid

    from genpolicy.errors import DataError

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir}: already exists; LeRobot export never overwrites a dataset")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        export_arrays(rb.data, rb.episode_ends, tmp, fps=fps, repo_id=repo_id, task=str(rb.attrs.get("task", "task")))
        tmp.rename(out_dir)
    except ValueError as e:
        raise DataError(str(e)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class LeRobotWriter:
    """Stream episodes into a LeRobot v3 dataset (LeRobot's own writer underneath), one episode in memory at a time.

    Unlike `export_arrays`, which needs every frame at once, this suits long recordings: `add_episode` encodes the
    episode's videos and appends them to the dataset's files; `close` finalises the parquet footers. The dataset is
    written beside `out_dir` and renamed into place by `close`, so a crash never leaves a half-written one there.

    Keys as in the replay layout: `state` (L, Ds), `action` (L, Da) float, `image.<cam>` (L, 3, H, W) uint8, and any
    numeric `extra_keys` verbatim."""

    def __init__(self, out_dir: str | Path, fps: int, example: dict[str, np.ndarray], *, repo_id: str = "local/genpolicy",
                 use_videos: bool = True, vcodec: str = "h264", robot_type: str | None = None,
                 extra_keys: tuple[str, ...] = ()) -> None:
        import uuid

        from ledataset.datasets.lerobot_dataset import LeRobotDataset

        self.out_dir = Path(out_dir)
        if self.out_dir.exists():
            raise FileExistsError(f"LeRobotWriter: {self.out_dir} already exists; it never overwrites a dataset")
        self.tmp = self.out_dir.with_name(f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        features: dict[str, dict] = {}
        self.keys: dict[str, str] = {}
        for key, arr in example.items():
            arr = np.asarray(arr)
            if key in ("state", "action") or key in extra_keys:
                lkey = {"state": STATE_KEY, "action": ACTION_KEY}.get(key, key)
                features[lkey] = {"dtype": "float32", "shape": (int(np.prod(arr.shape[1:])) or 1,), "names": None}
            elif key.startswith("image."):
                lkey = IMAGES_PREFIX + key[len("image."):]
                _, _, h, w = arr.shape
                features[lkey] = {"dtype": "video" if use_videos else "image", "shape": (h, w, 3),
                                  "names": ["height", "width", "channels"]}
            else:
                continue
            self.keys[key] = lkey
        self.ds = LeRobotDataset.create(repo_id=repo_id, fps=int(fps), features=features, root=self.tmp,
                                        robot_type=robot_type, use_videos=use_videos, image_writer_threads=0,
                                        vcodec=vcodec)
        self.n_episodes = 0

    def add_episode(self, episode: dict[str, np.ndarray], task: str) -> None:
        n = len(episode["action"])
        cols = {}
        for key, lkey in self.keys.items():
            arr = np.asarray(episode[key])
            cols[lkey] = (np.ascontiguousarray(arr.transpose(0, 2, 3, 1)) if key.startswith("image.")
                          else arr.reshape(n, -1).astype(np.float32))
        for t in range(n):
            self.ds.add_frame({**{k: v[t] for k, v in cols.items()}, "task": task})
        self.ds.save_episode()
        self.n_episodes += 1

    def close(self) -> Path:
        import shutil

        from genpolicy.fsutil import replace_dir

        self.ds.finalize()
        img_dir = self.tmp / "images"
        if img_dir.is_dir():
            shutil.rmtree(img_dir, ignore_errors=True)  # PNG staging of the video encoder, empty once encoded
        replace_dir(self.tmp, self.out_dir)
        return self.out_dir
