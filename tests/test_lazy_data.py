"""Training straight from LeRobot v3 (mp4 decoded per batch) and zarr (chunk reads), against LeRobot's own loader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.errors import DataError

pytest.importorskip("ledataset")

FPS = 10
ROOT = Path(__file__).resolve().parents[1]


def write_two_camera_dataset(root: Path, lengths=(12, 9, 15), hw: int = 32, seed: int = 0) -> None:
    """Two mp4 cameras, recorded with LeRobot's own writer; frames vary with every row so a wrong frame shows."""
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    cam = {"dtype": "video", "shape": (hw, hw, 3), "names": ["height", "width", "channels"]}
    feats = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
             "action": {"dtype": "float32", "shape": (2,), "names": None},
             "observation.images.top": cam, "observation.images.wrist": cam}
    ds = LeRobotDataset.create(repo_id="local/two", fps=FPS, features=feats, root=root, use_videos=True,
                               image_writer_threads=0, vcodec="h264")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:hw, 0:hw]
    k = 0
    for ep, n in enumerate(lengths):
        for _ in range(n):
            img = np.stack([(xx * 4 + k * 7) % 256, (yy * 4 + k * 3) % 256, np.full((hw, hw), k * 11 % 256)], -1)
            img = img.astype(np.uint8)
            ds.add_frame({"observation.state": rng.uniform(-1, 1, 2).astype(np.float32),
                          "action": rng.uniform(-1, 1, 2).astype(np.float32),
                          "observation.images.top": img, "observation.images.wrist": 255 - img,
                          "task": f"reach goal {ep % 2}"})
            k += 1
        ds.save_episode()
    ds.finalize()


@pytest.fixture(scope="module")
def two_cam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lr") / "two"
    write_two_camera_dataset(root)
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _torchcodec_works() -> bool:
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
        from torchcodec import _core  # noqa: F401  (loads the FFmpeg libraries)
    except Exception:  # noqa: BLE001 - absent package or missing system FFmpeg
        return False
    return True


def test_batches_equal_lerobot_loader(two_cam: Path) -> None:
    """Every window (To=2, H=4) equals what LeRobotDataset returns for the same index with delta_timestamps."""
    if not _torchcodec_works():
        pytest.skip("LeRobot's loader decodes video only with torchcodec here (its pyav path needs torchvision's "
                    "removed VideoReader); torchcodec needs the system FFmpeg libraries")
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    from genpolicy.datasets.lazy import open_demos
    from genpolicy.datasets.sequence import SequenceSampler

    demos = open_demos(two_cam, state_dim=2, action_dim=2)
    assert demos.image_keys == ["image.top", "image.wrist"]
    assert demos.attrs["episode_tasks"] == [["reach goal 0"], ["reach goal 1"], ["reach goal 0"]]
    sampler = SequenceSampler(demos, np.arange(demos.n_episodes), n_obs_steps=2, horizon=4)
    idx = np.random.default_rng(0).permutation(len(sampler))  # random order: seeks back and forth in the files
    batch = sampler.batch(idx)
    dt = 1.0 / FPS
    lr = LeRobotDataset("local/two", root=two_cam, video_backend="torchcodec",
                        delta_timestamps={"observation.images.top": [-dt, 0.0], "observation.images.wrist": [-dt, 0.0],
                                          "observation.state": [-dt, 0.0], "action": [0, dt, 2 * dt, 3 * dt]})
    worst = 0
    for j, i in enumerate(idx.tolist()):
        item = lr[i]
        for cam in ("top", "wrist"):
            ref = (item[f"observation.images.{cam}"] * 255).round().to(torch.uint8)
            worst = max(worst, int((ref.int() - batch["obs"][f"image.{cam}"][j].int()).abs().max()))
        assert torch.equal(item["observation.state"], batch["obs"]["state"][j]), i
        assert torch.equal(item["action"], batch["action"][j]), i
        assert torch.equal(item["action_is_pad"], batch["action_is_pad"][j]), i
    assert worst <= 2, worst  # same decoder library underneath: identical up to colour-conversion rounding


def test_frames_are_the_recorded_ones(two_cam: Path) -> None:
    """Independent of any loader: each decoded frame is closest to the frame recorded at that row (h264 is lossy)."""
    from genpolicy.datasets.lazy import open_demos

    demos = open_demos(two_cam)
    hw, n = 32, demos.n_steps
    yy, xx = np.mgrid[0:hw, 0:hw]
    recorded = np.stack([np.stack([(xx * 4 + k * 7) % 256, (yy * 4 + k * 3) % 256, np.full((hw, hw), k * 11 % 256)])
                         for k in range(n)]).astype(np.int16)
    rows = np.random.default_rng(1).permutation(n)
    # one read per row in random order: backward seeks, short forward decodes, and seeks to odd (non-key) frames
    got = np.concatenate([demos.read("image.top", np.array([r])) for r in rows]).astype(np.int16)
    err = np.abs(got[:, None] - recorded[None]).mean(axis=(2, 3, 4))  # (rows, recorded)
    assert np.array_equal(err.argmin(axis=1), rows)


def test_trains_directly_with_workers_and_resumes_exactly(two_cam: Path, tmp_path: Path) -> None:
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.sequence import SequenceSampler
    from genpolicy.training.bc import batch_stream, load_demos, step_batch, train
    from genpolicy.training.dist import DistInfo
    from tests.conftest import tiny_policy_cfg

    def cfg(run: str, workers: int, steps: int = 6, resume: bool = False) -> TrainConfig:
        return TrainConfig(task=TaskConfig(name="toy/bimodal", images=True),
                           data=DataConfig(path=str(two_cam), val_fraction=0.0, num_workers=workers),
                           policy=tiny_policy_cfg(image_encoder="conv", image_size=32, crop_ratio=0.9),
                           train=OptimConfig(steps=steps, batch_size=8, warmup_steps=1),
                           eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                           run=RunConfig(dir=str(tmp_path / run), progress=False, ckpt_every=3, resume=resume))

    # batches read in 2 workers are the batches step_batch draws in this process
    c = cfg("a", workers=2)
    demos = load_demos(c)
    assert demos.image_keys == ["image.top"]  # the camera toy/bimodal renders; image.wrist stays unread
    sampler = SequenceSampler(demos, np.arange(demos.n_episodes), 2, c.policy.horizon)
    for step, b in zip(range(2, 6), batch_stream(sampler, c, 2, DistInfo())):
        ref, _ = step_batch(sampler, c, step, torch.device("cpu"))
        assert torch.equal(b["obs"]["image.top"], ref["obs"]["image.top"]) and torch.equal(b["action"], ref["action"])

    res = train(c)
    assert Path(res["final_checkpoint"]).exists()
    # the run's step-3 checkpoint resumed (workers and all) ends where the uninterrupted run did
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for d in ("0000006", "best"):
        shutil.rmtree(tmp_path / "b" / "checkpoints" / d, ignore_errors=True)
    assert (tmp_path / "b" / "checkpoints" / "0000003").is_dir()
    resumed = train(cfg("b", workers=1, steps=6, resume=True))
    from safetensors.torch import load_file

    w_full = load_file(Path(res["final_checkpoint"]) / "model.safetensors")
    w_res = load_file(Path(resumed["final_checkpoint"]) / "model.safetensors")
    assert all(torch.equal(w_full[k], w_res[k]) for k in w_full)


# ---- errors: one line, naming the file and the episode ----------------------------------------------------------
def _read_all(root: Path) -> None:
    from genpolicy.datasets.lazy import open_demos
    from genpolicy.datasets.sequence import SequenceSampler

    demos = open_demos(root, state_dim=2, action_dim=2)
    s = SequenceSampler(demos, np.arange(demos.n_episodes), 2, 4)
    s.batch(np.arange(len(s)))


def _one_line(e: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)


def test_truncated_video_names_file_and_episode(two_cam: Path, tmp_path: Path) -> None:
    root = _copy(two_cam, tmp_path)
    mp4 = root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    data = mp4.read_bytes()
    mp4.write_bytes(data[: int(len(data) * 0.6)])  # the header (faststart) survives, the frames after ~row 13 do not
    with pytest.raises(DataError) as e:
        _read_all(root)
    _one_line(e, str(mp4), "episode 1", "truncated")  # rows 12..20 are episode 1: the first damaged one is named


def test_missing_episode_files_are_named(two_cam: Path, tmp_path: Path) -> None:
    """Refused when the dataset is opened, before any training step (tmp_path itself contains 'missing')."""
    from genpolicy.datasets.lazy import open_demos

    root = _copy(two_cam, tmp_path)
    mp4 = root / "videos" / "observation.images.wrist" / "chunk-000" / "file-000.mp4"
    mp4.unlink()
    with pytest.raises(DataError) as e:
        open_demos(root)
    _one_line(e, str(mp4), "episode 0", "video file is missing")
    data = root / "data" / "chunk-000" / "file-000.parquet"
    data.unlink()
    with pytest.raises(DataError) as e:
        open_demos(root)
    _one_line(e, str(data), "episode 0", "data file of episode 0 is missing")


def test_timestamp_beyond_video_end_is_named(two_cam: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _copy(two_cam, tmp_path)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(path)
    ts = t.column("timestamp").to_numpy().copy()
    ep = t.column("episode_index").to_numpy()
    last = np.nonzero(ep == 2)[0][-1]
    ts[last] += 5.0  # the last frame of episode 2 claims a time 5 s after the video ends
    pq.write_table(t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(ts, pa.float32())), path)
    with pytest.raises(DataError) as e:
        _read_all(root)
    _one_line(e, "file-000.mp4", "episode 2", "beyond the end")


def test_mismatched_fps_is_named(two_cam: Path, tmp_path: Path) -> None:
    root = _copy(two_cam, tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["fps"] = 15
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DataError) as e:
        _read_all(root)
    _one_line(e, "file-000.mp4", "episode 0", "10 fps", "15 fps")


def test_error_in_a_worker_reaches_the_cli_as_one_line(two_cam: Path, tmp_path: Path) -> None:
    """Decoding fails inside a DataLoader worker: still one line naming the file and the episode, exit status 2."""
    root = _copy(two_cam, tmp_path)
    mp4 = root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    mp4.write_bytes(mp4.read_bytes()[: int(mp4.stat().st_size * 0.6)])
    r = subprocess.run([sys.executable, "-m", "genpolicy.cli", "train", "task=toy/bimodal", "task.images=true",
                        f"data.path={root}", "data.num_workers=1", "data.val_fraction=0", "train.steps=400",
                        "train.batch_size=64", "policy.image_encoder=conv", "policy.width=32", "policy.depth=1",
                        "policy.down_dims=[16,32]", "policy.n_groups=4", f"run.dir={tmp_path / 'run'}",
                        "run.progress=false", "eval.n_episodes=1"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(mp4) in lines[0] and "episode" in lines[0], r.stderr[-2000:]


def test_state_mismatch_refused_with_key_names(two_cam: Path) -> None:
    from genpolicy.datasets.lazy import open_demos

    with pytest.raises(DataError) as e:
        open_demos(two_cam, state_dim=5, action_dim=2, task="pusht/pusht")
    _one_line(e, "'observation.state' has dimension 2", "task 'pusht/pusht' expects 5", "observation.state: 2")
    with pytest.raises(DataError) as e:
        open_demos(two_cam, state_dim=2, action_dim=4, task="x/y")
    _one_line(e, "'action' has dimension 2", "expects 4")


def test_environment_state_joins_state_and_info_prints_the_mapping(tmp_path: Path) -> None:
    """PushT-style keypoints: observation.state (2) + observation.environment_state (4) -> state (6)."""
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    from genpolicy.cli import main
    from genpolicy.datasets.lazy import describe_lerobot, open_demos

    root = tmp_path / "kp"
    feats = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
             "observation.environment_state": {"dtype": "float32", "shape": (4,), "names": None},
             "action": {"dtype": "float32", "shape": (2,), "names": None}}
    ds = LeRobotDataset.create(repo_id="local/kp", fps=FPS, features=feats, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(2):
        for _ in range(5):
            fr = {k: rng.uniform(-1, 1, f["shape"]).astype(np.float32) for k, f in feats.items()}
            rows.append(fr)
            ds.add_frame({**fr, "task": "push the T"})
        ds.save_episode()
    ds.finalize()
    demos = open_demos(root, state_dim=6, action_dim=2)
    want = np.stack([np.concatenate([r["observation.state"], r["observation.environment_state"]]) for r in rows])
    assert np.array_equal(demos.data["state"], want)
    assert demos.key_map["state"] == ["observation.state", "observation.environment_state"]
    assert open_demos(root, state_dim=2).data["state"].shape == (10, 2)  # the task asks for the agent alone
    text = describe_lerobot(root, state_dim=6)
    assert "observation.environment_state" in text and "state[2:6]" in text and "state[0:2]" in text
    assert "'push the T'" in text
    assert main(["data", "info", str(root)]) == 0


def test_zarr_images_are_read_by_chunks(tmp_path: Path) -> None:
    """A zarr store's frames are read per batch from small chunks; never the whole array."""
    from genpolicy.datasets.lazy import ZarrFrames, open_demos
    from tests.test_data import make_buffer

    rb = make_buffer(lengths=(300, 400, 300), images=True)  # 16x16 frames: 682 a chunk
    rb.save(tmp_path / "d.zarr")
    demos = open_demos(tmp_path / "d.zarr")
    src = demos.frames["image.front"]
    assert isinstance(src, ZarrFrames) and src.chunk < rb.n_steps
    rows = np.random.default_rng(0).integers(0, rb.n_steps, 50)
    key = next(iter(demos.frames))
    assert np.array_equal(demos.read(key, rows), rb.data[key][rows])
    assert len(src.cache.items) <= src.cache.capacity


# ---- bounded memory -------------------------------------------------------------------------------------------
_RSS_SCRIPT = r"""
import resource, sys
import numpy as np, torch
from genpolicy.config import DataConfig, OptimConfig, TaskConfig, TrainConfig
from genpolicy.datasets.sequence import SequenceSampler
from genpolicy.policies import ShapeMeta, make_policy
from genpolicy.training.bc import batch_stream, load_demos, step_generator, to_device
from genpolicy.training.dist import DistInfo
from tests.conftest import tiny_policy_cfg
# the BC loop's data path and updates (bc._train without its checkpoints and final evaluation)
cfg = TrainConfig(task=TaskConfig(name="toy/bimodal", images=True),
                  data=DataConfig(path=sys.argv[1], val_fraction=0.0, num_workers=1),
                  policy=tiny_policy_cfg(image_encoder="conv", image_size=128, width=32, depth=1, down_dims=[16, 32],
                                         n_groups=4),
                  train=OptimConfig(steps=4, batch_size=8, warmup_steps=1))
demos = load_demos(cfg)
sampler = SequenceSampler(demos, np.arange(demos.n_episodes), cfg.policy.n_obs_steps, cfg.policy.horizon)
policy = make_policy(cfg.policy, ShapeMeta(state_dim=2, action_dim=2, cameras=["top"], image_size=128))
policy.normalizer.fit({"state": demos.data["state"], "action": demos.data["action"]})
opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
for step, batch in zip(range(cfg.train.steps), batch_stream(sampler, cfg, 0, DistInfo())):
    loss = policy.loss(to_device(batch, torch.device("cpu")), generator=step_generator(cfg, step, torch.device("cpu")))["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("RSS_KB", own, kids)
"""


def _peak_rss_kb(*jobs: tuple[Path, Path]) -> list[tuple[int, int]]:
    """Train on each dataset in its own fresh process, all at once; (own, largest child) peak RSS in KB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _RSS_SCRIPT, str(root), str(run)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) for root, run in jobs]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        own, kids = (int(x) for x in stdout.split("RSS_KB")[1].split())
        out.append((own, kids))
    return out


def test_peak_rss_does_not_grow_with_dataset_size(tmp_path: Path) -> None:
    """10x the frames (2 cameras of 128x128: 8 MB vs 79 MB decoded) costs the trainer and its worker < 20 MB more
    (decoding everything up front, as `data convert` does, costs ~35 MB more; run-to-run noise is ~12 MB)."""
    small, large = tmp_path / "small", tmp_path / "large"
    write_two_camera_dataset(small, lengths=(80,), hw=128)
    write_two_camera_dataset(large, lengths=(400, 400), hw=128)  # few long episodes: faster to record
    (s_own, s_kid), (l_own, l_kid) = _peak_rss_kb((small, tmp_path / "rs"), (large, tmp_path / "rl"))
    assert l_own - s_own < 20_000, (s_own, l_own)
    assert l_kid - s_kid < 20_000, (s_kid, l_kid)


# ---- Rerun recordings ------------------------------------------------------------------------------------------
def _entities(rrd: Path) -> dict[str, int]:
    """Rows per entity path, read back with rerun's own RRD reader."""
    from rerun.chunk import RrdReader

    rows: dict[str, int] = {}
    for chunk in RrdReader(rrd).stream():
        rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
    return rows


def test_view_writes_a_rerun_recording_of_an_episode(two_cam: Path, tmp_path: Path) -> None:
    pytest.importorskip("rerun")
    from genpolicy.cli import main

    out = tmp_path / "ep1.rrd"
    assert main(["data", "view", str(two_cam), "episode=1", f"output={out}"]) == 0
    rows = _entities(out)
    assert rows["/cameras/top"] == rows["/cameras/wrist"] == 9  # episode 1 has 9 frames
    for k in ("/state/0", "/state/1", "/action/0", "/action/1"):
        assert rows[k] == 9 + 1, (k, rows)  # 9 values + the static series style
    assert rows["/task"] == 1
    assert not list(tmp_path.glob(".*tmp*"))  # written beside and renamed into place
    from genpolicy.datasets.view import episode_frames

    with pytest.raises(DataError, match="episode 7 does not exist"):
        episode_frames(two_cam, 7)


def test_view_writes_a_rerun_recording_of_a_rollout(tmp_path: Path) -> None:
    pytest.importorskip("rerun")
    from genpolicy.cli import main
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.collect import generate
    from genpolicy.training.bc import train
    from tests.conftest import tiny_policy_cfg

    generate("toy/bimodal", 3, progress=False).save(tmp_path / "toy.zarr")
    res = train(TrainConfig(task=TaskConfig(name="toy/bimodal"), data=DataConfig(path=str(tmp_path / "toy.zarr")),
                            policy=tiny_policy_cfg(), train=OptimConfig(steps=2, batch_size=8, warmup_steps=1),
                            eval=EvalConfig(n_episodes=1, n_envs=1), run=RunConfig(dir=str(tmp_path / "run"),
                                                                                   progress=False)))
    out = tmp_path / "roll.rrd"
    assert main(["data", "view", f"ckpt={res['final_checkpoint']}", "rollout_seed=3", f"output={out}"]) == 0
    rows = _entities(out)
    n = rows["/cameras/render"]
    assert n >= 2 and rows["/success"] == rows["/reward"] == n and rows["/action/0"] == n + 1, rows


def test_frames_are_resized_on_the_device_to_task_image_size(two_cam: Path, tmp_path: Path) -> None:
    """32 px frames trained at task.image_size=40: resized in the loop (after the workers), policy and eval at 40."""
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.training.bc import to_device, train
    from genpolicy.training.checkpoint import load_policy
    from tests.conftest import tiny_policy_cfg

    x = torch.full((2, 2, 3, 32, 32), 77, dtype=torch.uint8)
    y = to_device({"obs": {"image.top": x, "state": torch.zeros(2, 2, 2)}}, torch.device("cpu"), 40)["obs"]
    assert y["image.top"].shape == (2, 2, 3, 40, 40) and y["image.top"].dtype == torch.uint8
    assert bool((y["image.top"] == 77).all()) and y["state"].shape == (2, 2, 2)
    res = train(TrainConfig(task=TaskConfig(name="toy/bimodal", images=True, image_size=40),
                            data=DataConfig(path=str(two_cam), val_fraction=0.3, num_workers=0),
                            policy=tiny_policy_cfg(image_encoder="conv"),
                            train=OptimConfig(steps=2, batch_size=4, warmup_steps=1),
                            eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                            run=RunConfig(dir=str(tmp_path / "r"), progress=False, log_every=1)))
    assert load_policy(res["final_checkpoint"]).shape.image_size == 40
    assert res["eval"]["n_episodes"] == 1


def test_generate_streams_episodes_into_a_chunked_zarr(tmp_path: Path) -> None:
    """`data generate` appends each episode to the store as it finishes; the result equals the in-memory path."""
    import zarr

    from genpolicy.datasets.collect import generate
    from genpolicy.datasets.replay_buffer import ReplayBuffer, chunk_rows

    mem = generate("toy/bimodal", 3, images=True, image_size=64, progress=False)
    lazy = generate("toy/bimodal", 3, images=True, image_size=64, progress=False, out=tmp_path / "s.zarr")
    back = ReplayBuffer.load(tmp_path / "s.zarr")
    assert lazy.n_episodes == 3 and np.array_equal(back.episode_ends, mem.episode_ends)
    assert sorted(back.data) == sorted(mem.data) == ["action", "image.top", "state"]
    for k in mem.data:
        assert np.array_equal(back.data[k], mem.data[k]), k
    assert back.attrs["expert_success_rate"] == mem.attrs["expert_success_rate"]
    chunks = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["data"]["image.top"].chunks
    assert chunks[0] == chunk_rows("image.top", 3 * 64 * 64) < back.n_steps  # frames in small chunks
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written beside, renamed into place


def test_view_serves_the_web_viewer_and_grpc(two_cam: Path) -> None:
    """serve=true: Rerun's web viewer answers over HTTP and the gRPC port accepts connections, on all interfaces."""
    pytest.importorskip("rerun")
    import socket
    import threading
    import time
    import urllib.request

    from genpolicy.datasets.view import episode_frames, serve

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    grpc, web = free_port(), free_port()
    t = threading.Thread(target=serve, args=(episode_frames(two_cam, 0),),
                         kwargs=dict(grpc_port=grpc, web_port=web, seconds=4), daemon=True)
    t.start()
    deadline, page = time.time() + 3.5, b""
    while time.time() < deadline and not page:
        try:
            page = urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=2).read()
        except OSError:
            time.sleep(0.2)
    assert page, "the web viewer did not answer"
    with socket.create_connection(("127.0.0.1", grpc), timeout=2):
        pass
    t.join(timeout=10)


def test_repo_id_is_found_in_the_local_cache_never_downloaded(two_cam: Path, tmp_path: Path, monkeypatch) -> None:
    from genpolicy.datasets.lazy import open_demos

    home = tmp_path / "lerobot_home"
    shutil.copytree(two_cam, home / "someone" / "two_cams")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert open_demos("someone/two_cams").source == str(home / "someone" / "two_cams")
    with pytest.raises(DataError) as e:
        open_demos("someone/elsewhere")
    _one_line(e, "someone/elsewhere", "local cache", "nothing is downloaded")


def test_data_loading_report_judges_the_targets_from_its_rows(tmp_path: Path) -> None:
    """benchmarks/data_loading.py's verdicts: speed-up at equal workers per backend, memory on RSS-sum and PSS,
    training against the slowest loader row; a row that misses is reported as a miss."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import data_loading

    row = lambda loader, be, w, sps, rss, pss: {"loader": loader, "backend": be, "workers": w,  # noqa: E731
                                                "samples_per_s": sps, "peak_rss_mb": rss, "peak_pss_mb": pss}
    res = {"rows": [row("genpolicy", "pyav", 2, 130, 1600, 700), row("genpolicy", "torchcodec", 2, 90, 3500, 1500),
                    row("lerobot", "torchcodec", 2, 64, 2700, 1500), row("genpolicy", "pyav", 4, 100, 2000, 800),
                    row("genpolicy", "torchcodec", 4, 120, 3400, 1600), row("lerobot", "torchcodec", 4, 60, 2900, 1700)],
           "training": [{"network": "mlp", "samples_per_s": 100.0}]}
    text = "\n".join(data_loading.target_lines(res))
    assert "genpolicy/pyav (the default): throughput vs LeRobotDataset 2.03x at 2 workers, 1.67x at 4 workers -> met" in text
    assert "peak memory 2000 MB RSS-sum / 800 MB PSS -> met on both measures" in text
    # one worker count below 1.5x is a miss, however fast the other; over 3 GB on RSS-sum is not "met"
    assert "1.41x at 2 workers, 2.00x at 4 workers -> MISSED (>= 1.5x)" in text
    assert "peak memory 3500 MB RSS-sum / 1600 MB PSS -> RSS-sum over 3 GB (PSS under it)" in text
    assert "delivers 90 samples/s, 1x what the fastest network here consumes (100 samples/s) -> MISSED" in text
