"""`genpolicy data view`: a Rerun recording (.rrd) of one dataset episode or one evaluation rollout.

Entities: `cameras/<cam>` (images), `state/<i>` and `action/<i>` (scalar plots; series named after the LeRobot
feature names when the dataset has them), `success` (and `reward` when known), on the timelines `frame_index`
(sequence) and `time` (seconds at the dataset's fps). The recording is written beside `out` and renamed into place.
`serve=true` also serves it over gRPC with Rerun's web viewer, for a browser on another machine.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np

from genpolicy.errors import DataError

SUCCESS_KEYS = ("next.success", "success", "is_success")
REWARD_KEYS = ("next.reward", "reward")


def _rr():
    try:
        import rerun as rr
    except ImportError:
        raise DataError("genpolicy data view needs rerun-sdk (pip install rerun-sdk==0.41.0)") from None
    return rr


def episode_frames(path: str | Path, episode: int) -> dict[str, Any]:
    """One episode of a dataset (zarr or LeRobot): images, state, action, and success/reward columns if present."""
    from genpolicy.datasets.lazy import is_lerobot, open_demos, resolve_path

    p = resolve_path(path)
    demos = open_demos(p)
    if not 0 <= episode < demos.n_episodes:
        raise DataError(f"{p}: episode {episode} does not exist (the dataset has {demos.n_episodes}: 0..{demos.n_episodes - 1})")
    start = 0 if episode == 0 else int(demos.episode_ends[episode - 1])
    rows = np.arange(start, int(demos.episode_ends[episode]))
    out: dict[str, Any] = {"state": demos.data["state"][rows], "action": demos.data["action"][rows],
                           "images": {k.split(".", 1)[1]: demos.read(k, rows) for k in demos.image_keys},
                           "fps": float(demos.attrs.get("fps", 10.0) or 10.0), "names": {}, "source": str(p),
                           "title": f"{p.name} episode {episode}"}
    tasks = demos.attrs.get("episode_tasks")
    if tasks and episode < len(tasks) and tasks[episode]:
        out["task"] = "; ".join(tasks[episode])
    if is_lerobot(p):
        out.update(_lerobot_extras(p, episode, demos.key_map))
    return out


def _lerobot_extras(root: Path, episode: int, key_map: dict) -> dict[str, Any]:
    """Series names from the LeRobot features and the episode's success / reward columns, if the dataset has them."""
    import json

    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    info = json.loads((root / "meta" / "info.json").read_text())
    feats = info["features"]
    names: dict[str, list[str]] = {}
    state_names: list[str] = []
    for k in key_map.get("state", []):
        n = feats[k].get("names")
        dim = int(np.prod(feats[k].get("shape") or (1,)))
        n = n if isinstance(n, list) and len(n) == dim else [f"{k}[{i}]" for i in range(dim)]
        state_names += [str(x) for x in n]
    names["state"] = state_names
    n = feats.get("action", {}).get("names")
    if isinstance(n, list):
        names["action"] = [str(x) for x in n]
    extra: dict[str, Any] = {"names": names}
    wanted = [k for k in (*SUCCESS_KEYS, *REWARD_KEYS) if k in feats]
    if wanted:
        ds = pads.dataset(sorted((root / "data").glob("*/*.parquet")), format="parquet")
        t = ds.to_table(columns=[*wanted, "frame_index"], filter=pc.field("episode_index") == episode)
        order = np.argsort(t.column("frame_index").to_numpy())
        for k in wanted:
            col = np.asarray(t.column(k).to_pylist(), dtype=np.float64).reshape(len(order), -1)[order, 0]
            extra["success" if k in SUCCESS_KEYS else "reward"] = col
    return extra


def rollout_frames(ckpt: str | Path, seed: int = 100000, task: str = "", use_ema: bool = True) -> dict[str, Any]:
    """One evaluation episode of a checkpoint on its task: what the policy saw, what it did, and success."""
    import torch

    from genpolicy.envs.registry import make_env
    from genpolicy.training.checkpoint import load_policy, read_config

    policy = load_policy(ckpt, use_ema=use_ema, device=torch.device("cpu"))
    task = task or read_config(ckpt).get("task", {}).get("name", "")
    if not task:
        raise DataError(f"{ckpt}: the checkpoint does not name its task; pass task=<suite/name>")
    images = bool(policy.shape.cameras)
    env = make_env(task, seed=seed, images=images, image_size=policy.shape.image_size if images else 0)
    try:
        policy.eval()
        policy.reset()
        obs = env.reset(seed=seed)
        states, actions, rewards, success = [], [], [], []
        frames: dict[str, list[np.ndarray]] = {}
        done, ok = False, False
        torch.manual_seed(seed)  # select_action draws its sampling noise from the global generator
        while not done:
            a = policy.select_action(obs).cpu().numpy()
            states.append(np.asarray(obs["state"], np.float32))
            actions.append(a.astype(np.float32))
            for k, v in obs.items():
                if k.startswith("image."):
                    frames.setdefault(k.split(".", 1)[1], []).append(np.asarray(v))
            if not images:
                frames.setdefault("render", []).append(np.asarray(env.render()).transpose(2, 0, 1))
            obs, r, term, trunc, info = env.step(a)
            ok = ok or bool(info.get("success", False))
            rewards.append(float(r))
            success.append(float(ok))
            done = term or trunc
    finally:
        env.close()
    return {"state": np.stack(states), "action": np.stack(actions), "images": {k: np.stack(v) for k, v in frames.items()},
            "fps": float(env.spec.fps), "reward": np.asarray(rewards), "success": np.asarray(success),
            "names": {}, "source": str(ckpt), "title": f"{task} rollout seed {seed}", "task": task}


def log_episode(rec: Any, ep: dict[str, Any]) -> None:
    """Log an episode dict (from `episode_frames` / `rollout_frames`) into a Rerun RecordingStream."""
    rr = _rr()
    names = ep.get("names", {})
    for key in ("state", "action"):
        dim = ep[key].shape[1]
        n = names.get(key) or [f"{key}[{i}]" for i in range(dim)]
        for i in range(dim):
            rec.log(f"{key}/{i}", rr.SeriesLines(names=[n[i]]), static=True)
    if "task" in ep:
        rec.log("task", rr.TextDocument(str(ep["task"])), static=True)
    fps = ep["fps"]
    for t in range(len(ep["action"])):
        rec.set_time("frame_index", sequence=t)
        rec.set_time("time", duration=t / fps)
        for cam, frames in ep["images"].items():
            rec.log(f"cameras/{cam}", rr.Image(np.ascontiguousarray(frames[t].transpose(1, 2, 0))))
        for key in ("state", "action"):
            for i, v in enumerate(ep[key][t]):
                rec.log(f"{key}/{i}", rr.Scalars(float(v)))
        for key in ("success", "reward"):
            if key in ep:
                rec.log(key, rr.Scalars(float(ep[key][t])))


def write_recording(ep: dict[str, Any], out: str | Path) -> Path:
    """Write the episode as an .rrd file (atomically: beside `out`, then renamed)."""
    rr = _rr()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    rec = rr.RecordingStream("genpolicy", recording_id=str(uuid.uuid4()))
    try:
        rec.save(str(tmp))
        log_episode(rec, ep)
        rec.flush()
        rec.disconnect()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def serve(ep: dict[str, Any], grpc_port: int = 9876, web_port: int = 9090, host: str = "localhost",
          seconds: Optional[float] = None) -> None:
    """Serve the episode over gRPC plus Rerun's web viewer (both listen on all interfaces) until Ctrl-C.

    The browser page connects to the gRPC server at `host`: the default suits an SSH tunnel of both ports
    (`ssh -L 9090:localhost:9090 -L 9876:localhost:9876 <machine>`); for direct access pass the machine's address."""
    rr = _rr()
    rec = rr.RecordingStream("genpolicy", recording_id=str(uuid.uuid4()))
    rec.serve_grpc(grpc_port=grpc_port)
    rr.serve_web_viewer(web_port=web_port, open_browser=False, connect_to=f"rerun+http://{host}:{grpc_port}/proxy")
    log_episode(rec, ep)
    rec.flush()
    print(f"serving {ep['title']}: open http://{host}:{web_port} (gRPC port {grpc_port}; from another machine "
          f"tunnel both ports with ssh -L, or pass view_host=<this machine's address>); Ctrl-C to stop", flush=True)
    t0 = time.time()
    try:
        while seconds is None or time.time() - t0 < seconds:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
