"""The behaviour-cloning loop: AdamW + cosine warm-up, grad clipping, EMA, periodic evaluation, best checkpoint, resume.

Each step's batch indices and noise come from generators seeded by (seed, step), so a resumed run continues
exactly where an uninterrupted one would have gone.

Under `torchrun` (data parallel, genpolicy/training/dist.py) every process trains a replica wrapped in
DistributedDataParallel on its slice of the global batch; gradients are averaged, so parameters and EMA stay
identical on every rank. Rank 0 alone writes run files, and the others wait for it at a barrier.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from genpolicy.datasets.lazy import LazyDemos, open_demos, worker_init
from genpolicy.datasets.sequence import SequenceSampler, split_episodes
from genpolicy.envs.registry import task_spec
from genpolicy.errors import CheckpointError, ConfigError, DataError
from genpolicy.fsutil import copy_dir_atomic
from genpolicy.policies import GenerativePolicy, ShapeMeta, make_policy
from genpolicy.training import dist
from genpolicy.training.checkpoint import (load_training_state, read_config, read_manifest, read_trainer_meta,
                                           save_checkpoint)
from genpolicy.training.config import TrainConfig
from genpolicy.training.ema import EMA
from genpolicy.training.evaluate import evaluate
from genpolicy.training.runs import MetricsLogger, make_run_dir, progress_bar, resolve_device, slug


def default_data_path(task: str) -> Path:
    return Path("data") / f"{slug(task.replace('/', '_'))}.zarr"


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.train
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
    return o.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def load_demos(cfg: TrainConfig) -> LazyDemos:
    """Open the configured dataset (zarr store, LeRobot v3 directory or cached LeRobot repo_id) and check that it
    fits the task. Numeric columns are read into memory; camera frames stay on disk and are read per batch."""
    path = cfg.data.path or str(default_data_path(cfg.task.name))
    if not cfg.data.path and not Path(path).exists():
        raise DataError(f"{path}: no such dataset; create it with `genpolicy data generate task={cfg.task.name}` "
                        f"or point data.path at a zarr store or LeRobot v3 dataset")
    # The spec of the mode we train in: PushT's state is 5-d without images and 2-d (LeRobot layout) with them.
    spec = task_spec(cfg.task.name, images=cfg.task.images)
    rb = open_demos(path, images=cfg.task.images, state_dim=spec.state_dim, action_dim=spec.action_dim,
                    state_keys=list(cfg.data.state_keys) or None, tolerance_s=cfg.data.tolerance_s, task=cfg.task.name,
                    video_backend=cfg.data.video_backend)
    if cfg.task.images and not rb.image_keys:
        raise DataError(f"{path}: task.images=true but the dataset has no camera ('data/image.<camera>' arrays or "
                        f"LeRobot observation.images.* features)")
    if cfg.task.images and spec.cameras:
        # the policy sees the cameras the task renders at evaluation; other cameras of the dataset stay unread
        want = [f"image.{c}" for c in spec.cameras]
        missing = [k for k in want if k not in rb.frames]
        if missing:
            have = {k: rb.key_map.get(k, k) for k in rb.image_keys}
            raise DataError(f"{path}: task '{cfg.task.name}' renders cameras {list(spec.cameras)} but the dataset has "
                            f"{have}; missing {missing}")
        rb.frames = {k: rb.frames[k] for k in want}
    return rb


class StepBatches(torch.utils.data.Dataset):
    """Item s = this process's CPU batch of step s (`step_batch` without the device), so DataLoader workers can
    decode frames ahead of the loop while the batches stay a function of (seed, step) only."""

    def __init__(self, train_set: SequenceSampler, cfg: TrainConfig, info: dist.DistInfo) -> None:
        self.train_set, self.cfg, self.info = train_set, cfg, info

    def __len__(self) -> int:
        return self.cfg.train.steps

    def __getitem__(self, step: int) -> dict:
        try:
            return step_indices_batch(self.train_set, self.cfg, step, "cpu", self.info)
        except DataError as e:
            # DataLoader would re-raise it with the worker's traceback glued to the message: send the line instead
            return {"data_error": str(e)}


def batch_stream(train_set: SequenceSampler, cfg: TrainConfig, start: int, info: dist.DistInfo):
    """CPU batches of steps start, start+1, ...: read in `data.num_workers` worker processes when frames are read
    from disk, in this process otherwise (in-memory columns are cheaper to gather than to pickle)."""
    workers = cfg.data.num_workers
    if workers < 0:  # auto: workers only when there are frames to decode
        workers = min(4, max(1, (os.cpu_count() or 2) - 1)) if train_set.buffer.image_keys else 0
    if workers == 0:
        for step in range(start, cfg.train.steps):
            yield step_indices_batch(train_set, cfg, step, "cpu", info)
        return
    loader = torch.utils.data.DataLoader(StepBatches(train_set, cfg, info), batch_size=None,
                                         sampler=range(start, cfg.train.steps), num_workers=workers,
                                         prefetch_factor=cfg.data.prefetch, worker_init_fn=worker_init,
                                         pin_memory=torch.cuda.is_available(), persistent_workers=False)
    for batch in loader:
        if "data_error" in batch:
            raise DataError(batch["data_error"])
        yield batch


def _step_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((p for p in (run_dir / "checkpoints").glob("[0-9]*") if p.name.isdigit()), key=lambda p: int(p.name))


def _latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest checkpoint that verifies; a damaged newest one falls back to the one before."""
    for ckpt in reversed(_step_checkpoints(run_dir)):
        try:
            read_manifest(ckpt)
            return ckpt
        except CheckpointError:
            continue
    return None


NO_BEST = {"success_rate": -1.0, "step": -1}


def _best_held(run_dir: Path) -> dict[str, Any] | None:
    """The record {success_rate, step} of the complete copy in checkpoints/best, or None when there is none.

    A best copy is a step checkpoint whose trainer state names itself the best (see `run_eval`)."""
    best_dir = run_dir / "checkpoints" / "best"
    if not best_dir.exists():
        return None
    try:
        manifest = read_manifest(best_dir)
        held = read_trainer_meta(best_dir).get("best")
    except CheckpointError:
        return None
    if not isinstance(held, dict) or held.get("step") != manifest.get("step"):
        return None
    return held


def _restore_best(run_dir: Path, recorded: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
    """On resume: make checkpoints/best hold the best that the resumed state records; returns (record, held step).

    A kill during the copy to `best` leaves the record (saved in the step checkpoint before the copy) without the
    copy: finish the copy from that step's checkpoint. If that checkpoint is gone too, fall back to what `best`
    holds, or to no best at all, so that the next evaluation that is at least as good makes the copy again."""
    held = _best_held(run_dir)
    if recorded is not None and recorded["step"] >= 0 and (held is None or held["step"] != recorded["step"]):
        src = run_dir / "checkpoints" / f"{recorded['step']:07d}"
        try:
            read_manifest(src)
        except CheckpointError:
            pass
        else:
            copy_dir_atomic(src, run_dir / "checkpoints" / "best")
            return dict(recorded), recorded["step"]
    if held is None:
        return dict(NO_BEST), -1
    return dict(held), held["step"]


def _rotate(run_dir: Path, step: int, best: dict[str, Any], best_held: int) -> None:
    """Delete step checkpoints older than the one before `step`, except the recorded best's while checkpoints/best
    does not hold a copy of it (`best_held` is the step it holds): that checkpoint is the only copy of the best."""
    keep = {best["step"]} if best["step"] != best_held else set()
    for old in [p for p in _step_checkpoints(run_dir) if int(p.name) < step][:-1]:
        if int(old.name) not in keep:
            shutil.rmtree(old, ignore_errors=True)


def step_indices_batch(train_set: SequenceSampler, cfg: TrainConfig, step: int, device: torch.device | str,
                       info: dist.DistInfo = dist.DistInfo()) -> dict:
    """This process's share of step `step`'s batch: train.batch_size windows drawn from (seed, step), rank r's slice."""
    rng = np.random.default_rng([cfg.run.seed, step])
    idx = rng.integers(0, len(train_set), size=cfg.train.batch_size)
    per_rank = cfg.train.batch_size // info.world_size
    return train_set.batch(idx[info.rank * per_rank:(info.rank + 1) * per_rank], device)


def step_generator(cfg: TrainConfig, step: int, device: torch.device, info: dist.DistInfo = dist.DistInfo()
                   ) -> torch.Generator:
    """The noise stream of step `step` on this rank, seeded by (seed, step, rank)."""
    return torch.Generator(device=device).manual_seed(cfg.run.seed * 1_000_003 + step + info.rank * 2**40)


def step_batch(train_set: SequenceSampler, cfg: TrainConfig, step: int, device: torch.device,
               info: dist.DistInfo = dist.DistInfo()) -> tuple[dict, torch.Generator]:
    """This process's share of step `step`'s batch, and the generator for its noise.

    The global batch (train.batch_size windows) is drawn from (seed, step) and rank r takes its r-th equal slice;
    its noise comes from a stream of its own, seeded by (seed, step, rank). A resumed run with the same number of
    processes therefore replays exactly, and a single process draws what it always did.
    """
    return step_indices_batch(train_set, cfg, step, device, info), step_generator(cfg, step, device, info)


def to_device(batch: dict, device: torch.device, image_size: int = 0) -> dict:
    """Move a CPU batch to the device and, when `image_size` differs from the stored frames, resize them there
    (bilinear, antialiased, back to uint8). Crops (random in training) happen on the device too, inside the policy's
    encoder: the workers only decode."""
    if device.type != "cpu":
        batch = {k: (to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True))
                 for k, v in batch.items()}
    if image_size and "obs" in batch:
        batch = {**batch, "obs": {k: _resize(v, image_size) if k.startswith("image.") else v
                                  for k, v in batch["obs"].items()}}
    return batch


def _check_frames(batch: dict, size: int, source: str) -> None:
    """The policy's encoder crops whatever it is given; frames of another size than it was built (and is evaluated)
    for would train it on a different view, silently."""
    for k, v in batch["obs"].items():
        if k.startswith("image.") and tuple(v.shape[-2:]) != (size, size):
            raise DataError(f"{source}: '{k}' frames are {v.shape[-1]}x{v.shape[-2]} but the policy takes {size}x{size}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, To, 3, H, W) uint8 -> (B, To, 3, size, size) uint8 on x's device."""
    if x.shape[-2:] == (size, size):
        return x
    b, to = x.shape[:2]
    y = torch.nn.functional.interpolate(x.flatten(0, 1).float(), size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).view(b, to, 3, size, size)


class _Loss(nn.Module):
    """`policy.loss` as forward(): DDP all-reduces the gradients of what runs through its forward."""

    def __init__(self, policy: GenerativePolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.policy.loss(batch, generator=generator)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a policy by behaviour cloning; returns {run_dir, best_checkpoint, final_checkpoint, eval, rank}.

    Under torchrun it joins the process group first; `eval` is None on ranks other than 0, which evaluate nothing.
    """
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    with dist.process_group(cfg.train.dist_backend, device, cfg.train.dist_timeout_s) as info:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        return _train(cfg, info, device)


def _train(cfg: TrainConfig, info: dist.DistInfo, device: torch.device) -> dict[str, Any]:
    rb = load_demos(cfg)
    if cfg.train.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must be divisible by the "
                          f"number of processes (WORLD_SIZE={info.world_size})")
    # the default run name holds the clock time, so rank 0 names (and creates) the directory for everyone
    run_dir = make_run_dir(cfg.run, f"train-{cfg.task.name}-{cfg.policy.type}") if info.is_main else Path()
    run_dir = Path(dist.broadcast_str(str(run_dir), info, device))
    latest = _latest_checkpoint(run_dir) if cfg.run.resume else None
    if cfg.run.resume and latest is None:
        raise CheckpointError(f"{run_dir}: run.resume=true but no complete checkpoint under {run_dir / 'checkpoints'}")
    if not cfg.run.resume and _step_checkpoints(run_dir):
        raise ConfigError(f"{run_dir}: already holds checkpoints of another run; continue it with run.resume=true "
                          f"or choose a new run.dir")
    if latest is not None:
        saved = read_config(latest)["policy"]["config"]
        diff = sorted(k for k, v in asdict(cfg.policy).items() if saved.get(k) != v)
        if diff:
            raise ConfigError(f"{latest / 'config.json'}: cannot resume with a different policy config "
                              f"(changed: {', '.join(diff)})")
    if info.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    train_eps, val_eps = split_episodes(rb.n_episodes, cfg.data.val_fraction, cfg.data.seed, cfg.data.max_train_episodes)
    p = cfg.policy
    train_set = SequenceSampler(rb, train_eps, p.n_obs_steps, p.horizon)
    val_set = SequenceSampler(rb, val_eps, p.n_obs_steps, p.horizon) if len(val_eps) else None
    cams = [k.split(".", 1)[1] for k in rb.image_keys] if cfg.task.images else []
    # the policy sees square frames of task.image_size when set (resized on the device), else as stored
    resize = 0
    if cams:
        h, w = rb.image_shape(rb.image_keys[0])[-2:]
        resize = cfg.task.image_size if cfg.task.image_size and (h, w) != (cfg.task.image_size,) * 2 else 0
        if not resize and h != w:
            raise DataError(f"{rb.source}: frames of {rb.key_map.get(rb.image_keys[0], rb.image_keys[0])} are {w}x{h}; "
                            f"the policy takes square frames: set task.image_size=<pixels> to resize them on the device")
    image_size = (resize or int(rb.image_shape(rb.image_keys[0])[-1])) if cams else p.image_size
    shape = ShapeMeta(state_dim=rb.data["state"].shape[1], action_dim=rb.data["action"].shape[1], cameras=cams,
                      image_size=image_size)
    torch.manual_seed(cfg.run.seed)
    policy = make_policy(p, shape)
    rows = np.concatenate([np.arange(s, e) for s, e in _episode_ranges(rb, train_eps)])
    policy.normalizer.fit({"state": rb.data["state"][rows], "action": rb.data["action"][rows]})
    if cfg.train.init_from and latest is None:  # a resumed run restores its own weights instead
        _warm_start(policy, cfg.train.init_from)
    policy.to(device).train()
    ema = EMA(policy, cfg.train.ema_power, cfg.train.ema_max_decay)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            weight_decay=cfg.train.weight_decay)
    start, best = 0, dict(NO_BEST)
    best_held = -1  # the step whose copy checkpoints/best holds (-1: none)
    if latest is not None:
        state = load_training_state(latest, policy, ema.model, opt)
        start = state["step"]
        if info.is_main:
            best, best_held = _restore_best(run_dir, state.get("best"))
    # DDP broadcasts rank 0's weights (and buffers: the normaliser statistics) at construction, so replicas start equal
    loss_fn: nn.Module = _Loss(policy)
    if info.enabled:
        loss_fn = DistributedDataParallel(loss_fn, device_ids=[device.index] if device.type == "cuda" else None)
    # rows after the resumed step were written by the killed run and are about to be written again
    logger = MetricsLogger(run_dir, resume_step=start) if info.is_main else None
    ckpt_meta = {"task": asdict(cfg.task), "data": asdict(cfg.data), "train": asdict(cfg.train),
                 "dataset": {"source": rb.source, "n_episodes": rb.n_episodes, "attrs": rb.attrs}}

    def save(step: int, record: dict[str, Any] | None = None) -> Path:
        path = save_checkpoint(run_dir / "checkpoints" / f"{step:07d}", policy, ckpt_meta, step, ema=ema.model,
                               optimizer=opt, trainer_state={"step": step, "best": record or best,
                                                               "world_size": info.world_size})
        _rotate(run_dir, step, best, best_held)
        return path

    def checkpoint(step: int) -> Path:
        """Rank 0 writes; every rank waits at the barrier until the checkpoint is complete."""
        path = save(step) if info.is_main else run_dir / "checkpoints" / f"{step:07d}"
        dist.barrier(info)
        return path

    def run_eval(step: int, n_episodes: int, out: Path, n_videos: int = 0) -> dict[str, Any]:
        """Rank 0 only: roll out the EMA policy, log it, keep the best checkpoint."""
        assert logger is not None
        res = evaluate(ema.model, cfg.task.name, n_episodes=n_episodes, n_envs=cfg.eval.n_envs, seed=cfg.eval.seed,
                       out_dir=out, n_videos=n_videos, images=cfg.task.images,
                       max_episode_steps=cfg.task.max_episode_steps, progress=False)
        logger.log(step, {"eval/success_rate": res["success_rate"], "eval/mean_return": res["mean_return"],
                          "eval/n_episodes": res["n_episodes"]})
        nonlocal best_held
        if res["success_rate"] > best["success_rate"]:
            # Order matters for a kill at any point: (1) the step checkpoint, whose trainer state names itself the
            # new best, so a resume can finish an interrupted copy from it; (2) the atomic copy to `best`; (3) only
            # then the in-memory record that later checkpoints carry.
            record = {"success_rate": res["success_rate"], "step": step}
            ckpt = save(step, record)
            copy_dir_atomic(ckpt, run_dir / "checkpoints" / "best")
            best.update(record)
            best_held = step
        return res

    bar = progress_bar(cfg.train.steps, f"train {p.type}", "step", cfg.run.progress and info.is_main, initial=start)
    t_last = time.time()
    stop = _StopFlag()
    with stop:
        batches = batch_stream(train_set, cfg, start, info)
        for step, cpu_batch in zip(range(start, cfg.train.steps), batches):
            batch, gen = to_device(cpu_batch, device, resize), step_generator(cfg, step, device, info)
            _check_frames(batch, shape.image_size, rb.source)
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            out = loss_fn(batch, gen)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.train.grad_clip)
            opt.step()
            ema.update(policy, step)
            bar.update(1)
            done = step + 1
            if done % cfg.run.log_every == 0 or done == cfg.train.steps:
                now = time.time()
                row = dist.mean_over_ranks({k: float(v.detach()) for k, v in out.items() if k.startswith("loss")},
                                           info, device)
                row.update(lr=lr, grad_norm=float(gnorm), steps_per_s=cfg.run.log_every / max(now - t_last, 1e-9))
                if logger is not None:
                    if val_set is not None:
                        row["val_loss"] = validation_loss(ema.model, val_set, cfg.train.batch_size, device, cfg.run.seed,
                                                          image_size=resize)
                    logger.log(done, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                t_last = now
            if dist.any_rank(stop.requested, info, device):  # ranks may see the signal at different steps
                # Ctrl-C / SIGTERM: finish the step, keep its state, and let `run.resume=true` continue exactly
                bar.close()
                checkpoint(done)
                if logger is not None:
                    logger.close()
                raise KeyboardInterrupt
            if cfg.eval.every > 0 and done % cfg.eval.every == 0 and done < cfg.train.steps:
                if info.is_main:
                    run_eval(done, cfg.eval.n_episodes, run_dir / "eval" / f"step_{done:07d}")
                dist.barrier(info)
            if done % cfg.run.ckpt_every == 0:
                checkpoint(done)
    bar.close()
    final = checkpoint(cfg.train.steps)
    res = run_eval(cfg.train.steps, cfg.eval.n_episodes, run_dir / "eval", cfg.eval.n_videos) if info.is_main else None
    dist.barrier(info)
    if logger is not None:
        logger.close()
    best_path = run_dir / "checkpoints" / "best"
    return {"run_dir": str(run_dir), "final_checkpoint": str(final), "rank": info.rank,
            "best_checkpoint": str(best_path if best_path.exists() else final), "best": best, "eval": res}


def _warm_start(policy: GenerativePolicy, ckpt: str) -> None:
    """Copy the weights and normaliser of `ckpt` (its EMA copy) into `policy`. The normaliser comes along so the
    weights keep their meaning: refitting it to new data would silently change what every input and output means."""
    from genpolicy.training.checkpoint import load_policy

    prev = load_policy(ckpt, use_ema=True)
    diff = sorted(k for k, v in asdict(policy.cfg).items() if asdict(prev.cfg).get(k) != v)
    if diff:
        raise ConfigError(f"train.init_from={ckpt}: its policy config differs (changed: {', '.join(diff)})")
    try:
        policy.load_state_dict(prev.state_dict(), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"train.init_from={ckpt}: weights do not fit ({' '.join(str(e).split())[:160]})") from None


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so an interrupted run saves a consistent state."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _episode_ranges(rb: LazyDemos, episodes: np.ndarray) -> list[tuple[int, int]]:
    starts = np.concatenate([[0], rb.episode_ends[:-1]])
    return [(int(starts[e]), int(rb.episode_ends[e])) for e in episodes]


@torch.no_grad()
def validation_loss(policy: GenerativePolicy, val_set: SequenceSampler, batch_size: int, device: torch.device,
                    seed: int, max_windows: int = 2048, image_size: int = 0) -> float:
    """Mean BC loss over held-out episodes, with fixed noise so values are comparable across steps."""
    was = policy.training
    policy.eval()
    gen = torch.Generator(device=device).manual_seed(seed + 12345)
    losses, n = 0.0, 0
    for batch in val_set.iter_batches(batch_size, "cpu", limit=max_windows):
        batch = to_device(batch, device, image_size)
        _check_frames(batch, policy.shape.image_size, "validation")
        out = policy.loss(batch, generator=gen)
        b = out["per_sample"].shape[0]
        losses += float(out["loss"]) * b
        n += b
    policy.train(was)
    return losses / max(n, 1)
