"""Fine-tuning camera policies: the camera check, the frame replay, and the encoder modes.

Encoder modes (`finetune.encoder_mode`, recorded in the fine-tuned checkpoint's config):
- frozen: the BC image encoder, frozen. Its features feed everything: the base policy, the actor side (DPPO/FPO/
  ReinFlow conditioning, DSRL's noise actor, EXPO's edit policy) and the critics. One encoder pass per batch serves all
  of them; on a 2-core CPU the image encoder is the most expensive network in an update, and frozen features are a
  fixed function of the window, so the off-policy loop computes them once when a transition is stored (cond /
  next_cond, centre crop) and updates never run the image encoder: a separate critic encoder would bring that cost
  back on every update for features a BC-trained encoder already has.
- finetuned: the critics get their own copy of the BC encoder, trained by the critic loss on random crops (train-mode
  `ImageEncoder` crops are random shifts of up to (1 - crop_ratio) of the frame: DrQ's augmentation). The actor side
  keeps the frozen BC features, because the base policy that DSRL/EXPO steer and that DPPO/FPO/ReinFlow fine-tune is
  conditioned on them: changing them would change the policy under the algorithm. So the saved policy acts exactly as
  during fine-tuning, and the critic encoder is a training module (saved with checkpoints for resume).

Replay (`FrameReplay`): chunk transitions whose frames are stored once, as uint8, in a ring of single frames; each
transition keeps the indices of its To-frame windows (obs and next_obs), so the history is rebuilt by index. With
Ta >= To every decision window brings To new frames; a new episode adds one (its first frame, repeated by index).
Memory: capacity * (To + 1/8) * cameras * 3 * H * W bytes of frames, the 1/8 being headroom for episode starts
(when exceeded the oldest transitions stop being sampled early). `frame_bytes(...)` computes it.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from genpolicy.errors import ConfigError

IMG = "image."


def check_cameras(ckpt: str, task: str, cameras: list[str] | tuple[str, ...]) -> None:
    """Refuse a camera checkpoint on a task without those cameras (one-line errors naming the keys)."""
    if not cameras:
        return
    from genpolicy.envs.registry import task_spec

    have = tuple(task_spec(task, images=True).cameras)
    want = [f"{IMG}{c}" for c in cameras]
    if not have:
        raise ConfigError(f"{ckpt}: the policy sees cameras {want} but task '{task}' is state-only (no camera keys); "
                          "fine-tune it on a task that renders them")
    missing = [c for c in cameras if c not in have]
    if missing:
        raise ConfigError(f"{ckpt}: the policy sees cameras {want} but task '{task}' renders "
                          f"{[f'{IMG}{c}' for c in have]} (missing {[f'{IMG}{c}' for c in missing]})")


def window(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A replay batch's observation window as the policy takes it: {state: batch[prefix], image.<cam>: ...}."""
    obs = {"state": batch[prefix]}
    head = f"{prefix}.{IMG}"
    obs.update({k[len(prefix) + 1:]: v for k, v in batch.items() if k.startswith(head)})
    return obs


def frame_bytes(capacity: int, n_obs_steps: int, n_cameras: int, image_size: int) -> int:
    """Bytes of uint8 frames a full `FrameReplay` of `capacity` transitions holds (it grows to this as frames come)."""
    return _n_frames(capacity, n_obs_steps) * n_cameras * 3 * image_size * image_size


def _n_frames(capacity: int, n_obs_steps: int) -> int:
    return capacity * n_obs_steps + max(capacity // 8, 1)


class FrameReplay(nn.Module):
    """Ring buffer of chunk transitions with frames stored once (module buffers: checkpoints hold it).

    Non-image keys are stored per transition as in `DictReplay` (obs/next_obs are the small state windows). Frames
    live in a ring of `n_frames` single frames per camera; a transition holds the absolute numbers of its obs and
    next_obs window frames. A transition is sampled only while all its frames are still in the ring.

    Online use, per env: `start(env_ids, windows)` stores the first window of an episode (one frame); `add(...)`
    stores a batch of transitions from the envs' current frame indices and the next windows (the frames that the
    chunk's n executed steps pushed into the window are new; the others are the previous window's, by index)."""

    def __init__(self, specs: dict[str, tuple[int, ...]], cameras: list[str], image_size: int, n_obs_steps: int,
                 capacity: int, n_envs: int = 0, n_frames: int = 0) -> None:
        super().__init__()
        self.keys, self.capacity, self.To = list(specs), int(capacity), int(n_obs_steps)
        self.cameras = list(cameras)
        self.n_frames = int(n_frames or _n_frames(capacity, n_obs_steps))
        for k, shape in specs.items():
            self.register_buffer(f"buf_{k}", torch.zeros(capacity, *shape))
        self.image_size = int(image_size)
        for c in self.cameras:  # grown as frames arrive (up to n_frames): memory and checkpoints hold what is used
            self.register_buffer(f"frames_{c}", torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8))
        self.register_buffer("obs_idx", torch.zeros(capacity, n_obs_steps, dtype=torch.long))
        self.register_buffer("next_idx", torch.zeros(capacity, n_obs_steps, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # transitions written
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))
        self.register_buffer("frames_written", torch.zeros((), dtype=torch.long))
        self.register_buffer("env_idx", torch.zeros(max(n_envs, 1), n_obs_steps, dtype=torch.long))  # current windows

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def __len__(self) -> int:
        return int(min(self.count.item(), self.capacity))

    def _grow(self, size: int) -> None:
        for c in self.cameras:
            old = getattr(self, f"frames_{c}")
            if old.shape[0] < size:
                new = torch.empty(size, *old.shape[1:], dtype=torch.uint8)
                new[: old.shape[0]] = old
                setattr(self, f"frames_{c}", new)  # a registered buffer stays registered under its name

    def resize_for(self, state: dict[str, torch.Tensor]) -> None:
        """Before loading a checkpoint: take the saved frame buffers' sizes (they grow with use)."""
        for c in self.cameras:
            saved = state.get(f"frames_{c}")
            if saved is not None and saved.shape[0] <= self.n_frames:
                setattr(self, f"frames_{c}", torch.empty_like(saved))

    def _put_frames(self, frames: dict[str, torch.Tensor]) -> torch.Tensor:
        """Store frames {cam: (n, 3, H, W)}; returns their absolute numbers (n,)."""
        n = next(iter(frames.values())).shape[0]
        num = self.frames_written + torch.arange(n)
        have = getattr(self, f"frames_{self.cameras[0]}").shape[0]
        need = min(int(self.frames_written) + n, self.n_frames)
        if have < need:  # doubling: amortised copies while the ring fills once
            self._grow(min(self.n_frames, max(need, 2 * have, 1024)))
        for c in self.cameras:
            getattr(self, f"frames_{c}")[num % self.n_frames] = frames[f"{IMG}{c}"].to(torch.uint8).cpu()
        self.frames_written += n
        return num

    def start(self, env_ids: list[int], windows: dict[str, torch.Tensor]) -> None:
        """Episodes start in `env_ids` with first windows {image.<cam>: (n, To, 3, H, W)} (one frame, repeated)."""
        if not env_ids:
            return
        num = self._put_frames({k: v[:, -1] for k, v in windows.items() if k.startswith(IMG)})
        self.env_idx[torch.as_tensor(env_ids)] = num[:, None].expand(-1, self.To)

    def next_indices(self, next_windows: dict[str, torch.Tensor], n_steps: torch.Tensor) -> torch.Tensor:
        """Store the new frames of each env's next window and return the window indices (N, To): after n executed
        steps the last min(n, To) frames are new, the first To - n (if any) are the current window's last ones."""
        N = n_steps.shape[0]
        out = torch.empty(N, self.To, dtype=torch.long)
        for i in range(N):
            new = int(min(max(int(n_steps[i]), 1), self.To))
            num = self._put_frames({k: v[i, self.To - new:] for k, v in next_windows.items() if k.startswith(IMG)})
            out[i] = torch.cat([self.env_idx[i, new:], num])
        return out

    def add(self, batch: dict[str, torch.Tensor], next_windows: dict[str, torch.Tensor], n_steps: torch.Tensor,
            ended: torch.Tensor, reset_windows: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Transitions from every env (N rows of `batch`, env i in row i): their obs frames are the envs' current
        windows; next windows {image.<cam>: (N, To, 3, H, W)} after n_steps (N,) executed steps. Envs that `ended`
        start over from `reset_windows` (the first windows of their new episodes, same layout, all N rows)."""
        N = n_steps.shape[0]
        nxt = self.next_indices(next_windows, n_steps)
        rows = (self.cursor + torch.arange(N)) % self.capacity
        for k in self.keys:
            getattr(self, f"buf_{k}")[rows] = batch[k].detach().to(self.count.device).float()
        self.obs_idx[rows] = self.env_idx[:N].clone()
        self.next_idx[rows] = nxt
        self.cursor.copy_((self.cursor + N) % self.capacity)
        self.count += N
        self.env_idx[:N] = nxt
        ids = [i for i in range(N) if bool(ended[i])]
        if ids and reset_windows is not None:
            self.start(ids, {k: v[ids] for k, v in reset_windows.items()})

    def add_windows(self, batch: dict[str, torch.Tensor], obs_frames: dict[str, torch.Tensor],
                    obs_idx: torch.Tensor, next_idx: torch.Tensor) -> None:
        """Offline use (demonstrations): all frames at once (frame j of camera c is obs_frames[c][j]) and the windows
        as indices into them. Call once, on an empty replay with n_frames >= the number of frames."""
        num = self._put_frames(obs_frames)
        n = obs_idx.shape[0]
        rows = torch.arange(n)
        for k in self.keys:
            getattr(self, f"buf_{k}")[rows] = batch[k].detach().float()
        self.obs_idx[rows], self.next_idx[rows] = num[obs_idx], num[next_idx]
        self.count += n
        self.cursor.copy_(torch.tensor(n % self.capacity))

    def _valid_rows(self) -> torch.Tensor:
        n = len(self)
        oldest = self.frames_written - self.n_frames  # frames numbered below this were overwritten
        first = torch.minimum(self.obs_idx[:n].min(1).values, self.next_idx[:n].min(1).values)
        return (first >= oldest).nonzero().squeeze(-1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        valid = self._valid_rows()
        idx = valid[torch.randint(0, valid.numel(), (n,), generator=generator)]
        return self.gather(idx)

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows idx as a batch: the stored keys plus obs.image.<cam>/next_obs.image.<cam> windows (B, To, 3, H, W)."""
        out = {k: getattr(self, f"buf_{k}")[idx] for k in self.keys}
        for c in self.cameras:
            frames = getattr(self, f"frames_{c}")
            out[f"obs.{IMG}{c}"] = frames[self.obs_idx[idx] % self.n_frames]
            out[f"next_obs.{IMG}{c}"] = frames[self.next_idx[idx] % self.n_frames]
        return out


@torch.no_grad()
def frozen_encode(policy: Any, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The frozen encoder's conditioning of windows (centre crops, whatever mode the policy is in)."""
    was = policy.obs_encoder.training
    policy.obs_encoder.eval()
    try:
        return policy.encode(obs)
    finally:
        policy.obs_encoder.train(was)


def demo_frame_transitions(rb: Any, n_obs_steps: int, horizon: int, n_action_steps: int, normalize: Any,
                           cameras: list[str], image_size: int, encode: Any = None) -> FrameReplay:
    """`offpolicy.demo_transitions` for camera policies: the same transitions, each demonstration frame stored once
    and the windows kept as indices (edge-padded like the state windows). With `encode` (the frozen encoder), each
    window's conditioning is stored as cond / next_cond."""
    from genpolicy.finetune.offpolicy import demo_transitions

    tr = demo_transitions(rb, n_obs_steps, horizon, n_action_steps, normalize)
    obs_i, next_i = [], []
    start = 0
    for end in rb.episode_ends.tolist():
        for t in range(start, end, n_action_steps):
            obs_i.append(np.clip(np.arange(t - n_obs_steps + 1, t + 1), start, end - 1))
            t2 = t + n_action_steps
            next_i.append(np.clip(np.arange(t2 - n_obs_steps + 1, t2 + 1), start, end - 1))
        start = end
    frames = {}
    for c in cameras:
        f = np.asarray(rb.data[f"{IMG}{c}"])
        if f.shape[1:] != (3, image_size, image_size):
            raise ConfigError(f"demonstration frames '{IMG}{c}' are {tuple(f.shape[1:])}, the policy takes "
                              f"(3, {image_size}, {image_size})")
        frames[f"{IMG}{c}"] = torch.as_tensor(f)
    n = len(tr["reward"])
    oi, ni = torch.as_tensor(np.stack(obs_i)), torch.as_tensor(np.stack(next_i))
    if encode is not None:
        for key, idx, pre in (("cond", oi, "obs"), ("next_cond", ni, "next_obs")):
            tr[key] = torch.cat([encode({"state": tr[pre][j:j + 256], **{k: f[idx[j:j + 256]] for k, f in frames.items()}})
                                 for j in range(0, n, 256)])
    specs = {k: tuple(v.shape[1:]) for k, v in tr.items()}
    rep = FrameReplay(specs, cameras, image_size, n_obs_steps, n, n_frames=int(rb.episode_ends[-1]))
    rep.add_windows(tr, frames, oi, ni)
    return rep


class CriticFeatures(nn.Module):
    """What the critics read. frozen: the policy's own (frozen) conditioning, shared with the actor side. finetuned:
    a trainable copy of the BC observation encoder, with random crops (DrQ's random shifts) when gradients flow."""

    def __init__(self, policy: Any, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.encoder = copy.deepcopy(policy.obs_encoder).requires_grad_(True).train() if mode == "finetuned" else None

    def forward(self, obs: dict[str, torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """obs window and the policy's conditioning of it (B, Dc) -> critic input (B, Dc)."""
        if self.encoder is None:
            return cond
        # random crops where it learns (gradients on), the centre crop for values it only reads (targets, rollouts)
        self.encoder.train(torch.is_grad_enabled())
        return self.encoder(obs)

    def trainable(self) -> list[nn.Parameter]:
        return [] if self.encoder is None else list(self.encoder.parameters())
